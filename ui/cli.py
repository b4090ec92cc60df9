"""``shelfsight ui``: start the Streamlit storefront on loopback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from shelfsight.search.settings import DEFAULT_COLLECTION

APP = Path(__file__).with_name("app.py")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ui", help="the Streamlit shopping storefront")
    p.add_argument("--db", help="embedded store directory (or set QDRANT_URL for a server)")
    p.add_argument("--collection", default=DEFAULT_COLLECTION)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    # Locations travel by environment: the app reads them once per process.
    if args.db:
        env["SHELFSIGHT_DB"] = str(Path(args.db).resolve())
    env["SHELFSIGHT_COLLECTION"] = args.collection
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
        "10",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
    ]
    return subprocess.call(command, env=env)
