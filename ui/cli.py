"""``shelfsight ui``: start the Streamlit storefront on loopback."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from shelfsight.search.cli_args import add_store_args, settings_from_args
from shelfsight.search.parent_death import die_with_parent
from shelfsight.search.settings import MAX_UPLOAD_BYTES

APP = Path(__file__).with_name("app.py")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ui", help="the Streamlit shopping storefront")
    add_store_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.db:
        settings = replace(settings, db=str(Path(settings.db).resolve()))
    # Locations travel by environment: the app reads them (Settings.from_env) once per process.
    env = {**os.environ, **settings.environment()}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.maxUploadSize",
        str(max(1, MAX_UPLOAD_BYTES // 2**20)),  # megabytes
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        # Shoppers get no developer toolbar (Deploy, Rerun, Clear cache); with no menu items, no menu.
        "--client.toolbarMode",
        "minimal",
    ]
    return run_child(command, env)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, even by SIGKILL; elsewhere than
    Linux, the signal forwarding below still covers SIGTERM and SIGINT."""
    die_with_parent(signal.SIGTERM)


def run_child(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` until it exits; SIGTERM, SIGINT and SIGHUP sent to this process are passed to it,
    and it is stopped (then killed) whenever this process leaves, so no Streamlit outlives its CLI."""
    child = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in forwarded}

    def forward(sig: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(sig)

    try:
        for sig in forwarded:
            signal.signal(sig, forward)
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
