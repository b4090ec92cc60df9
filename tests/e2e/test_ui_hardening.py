"""The storefront shows URL parameters and catalog text as plain text (a real browser checks that no
link or bold text comes out of them), and stopping ``shelfsight ui`` (or ``demo``, which runs it as a
child) stops Streamlit: the whole process tree, also when the parent is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.proctree import (
    alive,
    cli_args,
    cli_env,
    free_port,
    stop_session,
    tree,
    wait_for_http,
    with_marker,
)
from tests.e2e.storefront import storefront

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
PHISH = "**[claim your prize](http://evil.example/win)**"


@pytest.fixture
def storefront_app(built_db, monkeypatch):
    """The app in this process (Streamlit's AppTest); every engine it opened is closed afterwards."""
    with storefront(built_db, monkeypatch) as make:
        yield make


@pytest.mark.parametrize("param", ["similar", "img"])
def test_url_parameters_never_become_markdown(storefront_app, param):
    at = storefront_app(**{param: PHISH, "pmax": "-5"})
    assert not at.exception
    bodies = [e.value for e in (*at.error, *at.warning, *at.caption, *at.markdown, *at.info)]
    assert any("claim your prize" in b for b in bodies + [t.value for t in at.text]), bodies
    for body in bodies:
        assert "[claim your prize](" not in body and "**[" not in body, body


def _launch(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_a_phishing_link_in_the_url_is_plain_text_in_the_browser(built_db):
    from playwright.sync_api import sync_playwright

    with _ui(built_db) as (base, _), sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page()
            page.goto(f"{base}/?similar={quote(PHISH)}", wait_until="domcontentloaded")
            page.get_by_text("claim your prize", exact=False).first.wait_for(timeout=120_000)
            assert page.locator('a[href*="evil.example"]').count() == 0
            assert page.locator("strong", has_text="claim your prize").count() == 0
            page.goto(f"{base}/?img={quote(PHISH)}", wait_until="domcontentloaded")
            page.get_by_text("Cannot use that product", exact=False).first.wait_for(timeout=120_000)
            page.get_by_text("claim your prize", exact=False).first.wait_for(timeout=60_000)
            assert page.locator('a[href*="evil.example"]').count() == 0
        finally:
            browser.close()


class _ui:
    """``shelfsight ui`` (or ``demo``'s nesting of it) in its own session until Streamlit answers."""

    def __init__(self, db: Path, nested: bool = False):
        self.port = free_port()
        command = cli_args("ui", "--db", db, "--port", self.port)
        if nested:  # as `shelfsight demo` runs it: a parent that runs `shelfsight ui` through run_child
            command = [sys.executable, "-c", f"from shelfsight.ui.cli import run_child; run_child({command!r})"]
        self.command = command

    def __enter__(self) -> tuple[str, subprocess.Popen]:
        self.proc = subprocess.Popen(
            self.command, env=cli_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        base = f"http://127.0.0.1:{self.port}"
        try:
            wait_for_http(base + "/_stcore/health", self.proc)
        except BaseException:
            stop_session(self.proc)
            raise
        return base, self.proc

    def __exit__(self, *exc: object) -> None:
        stop_session(self.proc)  # whatever the test left, the whole session goes
        if self.proc.stderr:
            self.proc.stderr.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return f"pid {pid}"


def _wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


STOPS = [
    (False, signal.SIGTERM),
    (False, signal.SIGINT),
    (False, signal.SIGKILL),
    (True, signal.SIGTERM),
    (True, signal.SIGKILL),
]


@pytest.mark.parametrize("nested, how", STOPS, ids=[("as-demo-runs-it-" if n else "ui-") + s.name for n, s in STOPS])
def test_stopping_the_cli_stops_streamlit(built_db, nested, how):
    with _ui(built_db, nested) as (_, proc):
        family = tree(proc.pid)
        assert len(family) >= 2 + nested, family  # the CLI and its Streamlit child (and the demo's parent)
        os.kill(proc.pid, how)  # only the parent, as a service manager or `kill` would
        proc.wait(timeout=60)
        left = _wait_gone(family)
        assert not left, f"still running after {how.name} to the parent: {left}"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_a_test_run_leaves_no_process_behind(tmp_path):
    """The browser test, run as `make test` runs it, leaves no process with its marker alive."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "SHELFSIGHT_TEST_MARK": marker}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e/test_ui.py", "-k", "chromium"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    left = with_marker(marker)
    if left:
        _wait_gone(left, 30)
        left = with_marker(marker)
    names = [_cmdline(pid) for pid in left]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left behind: {names}"
    assert run.returncode in (0, 5), run.stdout[-2000:] + run.stderr[-2000:]
