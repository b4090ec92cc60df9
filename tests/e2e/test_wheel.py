"""The built wheel, installed where the checkout cannot help it: ``shelfsight --help`` and a small
ingest -> search -> serve round trip, run from a temporary directory.

How the fresh environment is made, and why the checkout cannot leak in:

- the source is copied (git's tracked and untracked-but-not-ignored files) to a temporary
  directory and ``pip wheel --no-deps`` builds the wheel there, so nothing is written into the checkout;
- a new venv (``--without-pip``) gets one ``.pth`` line naming this venv's site-packages, so torch
  and the other dependencies are importable without installing gigabytes again. Python executes
  ``.pth`` files only in site directories, never in a directory a ``.pth`` line adds, so the
  editable-install finder in this venv does not run there;
- the wheel is installed with ``--no-deps`` and ``pip check`` must pass: every requirement the
  wheel declares is met;
- the test asserts that ``shelfsight`` imports from the new venv, and every command runs with its
  current directory in a temporary folder and no ``PYTHONPATH``.

A package missing from the wheel (the Dockerfile once left out ``evaluation/``) fails ``--help``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.helpers import LOCATION_VARIABLES, free_port, stop_process

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LOCATION_VARIABLES and k != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _copy_source(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with the built wheel installed (not editable); this venv's packages as its dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("shelfsight-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout
    Path(site.strip(), "shelfsight-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    return venv


def test_wheel_installs_with_its_requirements_met_and_not_from_the_checkout(wheel_venv, tmp_path):
    python = str(wheel_venv / "bin" / "python")
    _run([python, "-m", "pip", "check"], cwd=tmp_path)
    where = _run([python, "-c", "import shelfsight.evaluation as m; print(m.__file__)"], cwd=tmp_path).stdout
    assert Path(where.strip()).is_relative_to(wheel_venv), where
    assert not Path(where.strip()).is_relative_to(REPO)


def test_help_names_every_command(wheel_venv, tmp_path):
    out = _run([str(wheel_venv / "bin" / "shelfsight"), "--help"], cwd=tmp_path).stdout
    for command in ("ingest", "search", "serve", "eval", "train", "ui", "demo", "migrate", "snapshot", "restore"):
        assert command in out, f"`shelfsight --help` does not list {command!r}:\n{out}"


@contextmanager
def _serving(cmd: list[str], cwd: Path, health_url: str) -> Iterator[None]:
    """Run ``cmd`` until ``health_url`` answers 200; stop it on the way out, pass or fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr.read()}")
            try:
                with urllib.request.urlopen(health_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                try:
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        yield
    finally:
        stop_process(proc)


def test_ingest_search_serve_round_trip_from_outside_the_checkout(wheel_venv, tmp_path, tiny_model_dir, catalog_dir):
    shelfsight = str(wheel_venv / "bin" / "shelfsight")
    db = tmp_path / "db"
    ingest = [shelfsight, "ingest", str(catalog_dir / "catalog.csv"), "--db", str(db), "--model", str(tiny_model_dir)]
    summary = json.loads(_run([*ingest, "--json"], cwd=tmp_path).stdout.splitlines()[-1])
    assert summary["ingested"] > 0 and summary["skipped"] == 0, summary
    hits = json.loads(
        _run([shelfsight, "search", "red bag", "--db", str(db), "--json", "--limit", "3"], cwd=tmp_path).stdout
    )
    assert len(hits) == 3
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # fp32 query texts, as the CLI embeds them: serve's int8 tower may swap near-tied hits.
    serve = [shelfsight, "serve", "--db", str(db), "--port", str(port), "--fp32-queries"]
    with _serving(serve, tmp_path, base + "/health"):
        with urllib.request.urlopen(base + "/search?q=red+bag&limit=3", timeout=60) as response:
            served = json.load(response)
    assert [h["id"] for h in served["hits"]] == [h["id"] for h in hits]
