"""Running ``shelfsight`` as a user would: one command to completion, or a server until it answers.

Every process gets the same environment policy (``cli_env``): the store and model locations a
developer may have exported (``QDRANT_URL`` and friends) are dropped, so a test reads and writes
only where its own arguments point. A test that wants a server passes it explicitly::

    run_cli("stats", "--json", env={"QDRANT_URL": url}, check=True)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Where a process would look for a store or a model when its arguments name none (search/settings.py).
LOCATION_VARIABLES = ("QDRANT_URL", "QDRANT_API_KEY", "SHELFSIGHT_DB", "SHELFSIGHT_COLLECTION", "SHELFSIGHT_MODELS")


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the store and model locations, plus ``env``."""
    out = {k: v for k, v in os.environ.items() if k not in LOCATION_VARIABLES}
    out.update(env or {})
    return out


def cli_args(*args: object) -> list[str]:
    return [sys.executable, "-m", "shelfsight", *map(str, args)]


def run_cli(
    *args: object, check: bool = False, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``shelfsight ARGS`` to completion; ``env`` adds variables to the ``cli_env`` policy."""
    proc = subprocess.run(cli_args(*args), capture_output=True, text=True, timeout=timeout, env=cli_env(env))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"shelfsight {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(
    *args: object, health: str, env: Mapping[str, str] | None = None, new_session: bool = False
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``shelfsight ARGS --port P`` on a free loopback port until ``health`` answers; yield its
    base URL and the process. With ``new_session`` it runs in its own session and everything in
    that session is stopped (``stop_session``), else the process alone (``stop_process``). Stopped
    on the way out, also when the test fails or the server never comes up.
    """
    port = free_port()
    proc = subprocess.Popen(
        cli_args(*args, "--port", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
        start_new_session=new_session,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + health, proc)
        yield base, proc
    finally:
        if new_session:
            stop_session(proc)
        stop_process(proc)


@contextmanager
def serving(*args: object, health: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``server_process`` for a test that needs only the base URL."""
    with server_process(*args, health=health, env=env) as (base, _):
        yield base


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM ``proc``, SIGKILL it if it has not exited after ``timeout`` s; close its stderr pipe."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


def stop_session(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up in {timeout}s")
