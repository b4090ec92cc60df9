"""``shelfsight ui``: start the Streamlit storefront on loopback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from shelfsight.search.cli_args import add_store_args, settings_from_args
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
    ]
    return subprocess.call(command, env=env)
