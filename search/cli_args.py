"""What every command shares: the store arguments, the Settings they make, and the exit codes.

Each layer's CLI module registers its own commands with these, so ``--db``, ``--collection`` and
``--model`` mean the same everywhere and one mapping turns them (plus the environment) into
``Settings``.

Example::

    p = sub.add_parser("stats")
    add_store_args(p)
    ...
    settings = settings_from_args(args)
"""

from __future__ import annotations

import argparse

from shelfsight.search.settings import DEFAULT_COLLECTION, Settings

# Exit codes of every command: 0 done; 1 anything else; 2 bad input or usage (argparse's own code);
# 3 done, but some catalog rows were skipped (see the report).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def add_store_args(parser: argparse.ArgumentParser, model_help: str | None = None) -> None:
    """``--db`` and ``--collection``; ``--model`` too when ``model_help`` says what its default is."""
    parser.add_argument("--db", help="embedded store directory (or set QDRANT_URL for a server)")
    parser.add_argument("--collection", default=None, help=f"collection name (default {DEFAULT_COLLECTION})")
    if model_help is not None:
        parser.add_argument("--model", default=None, help=model_help)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags over the environment (``QDRANT_URL``, ``SHELFSIGHT_DB``, ...) over the defaults."""
    return Settings.from_env(db=args.db, collection=args.collection, model=getattr(args, "model", None))
