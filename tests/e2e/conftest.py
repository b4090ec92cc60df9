from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def run_cli(*args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``shelfsight`` entry point as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "shelfsight", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
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
def serving(*args: str, health: str, env: dict[str, str]) -> Iterator[str]:
    """Run ``shelfsight ARGS --port P`` on a free loopback port until ``health`` answers; yield its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shelfsight", *map(str, args), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + health, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
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


@pytest.fixture(scope="session")
def built_db(tmp_path_factory, tiny_model_dir, catalog_dir) -> Path:
    db = tmp_path_factory.mktemp("cli") / "db"
    run_cli(
        "ingest",
        catalog_dir / "catalog.csv",
        "--db",
        db,
        "--model",
        tiny_model_dir,
        "--fused-weight",
        "0.5",
        check=True,
    )
    return db


@pytest.fixture(scope="session")
def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("QDRANT_URL", None)
    return env
