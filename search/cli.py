"""Commands over a built collection: ``shelfsight stats`` (search and serve join it)."""

from __future__ import annotations

import argparse
import json

from search.settings import DEFAULT_COLLECTION, Settings
from search.store import open_store


def register(sub: argparse._SubParsersAction) -> None:
    stats = sub.add_parser("stats", help="what a collection holds and which model built it")
    _store_args(stats)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_stats)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="embedded store directory (or set QDRANT_URL for a server)")
    p.add_argument("--collection", default=DEFAULT_COLLECTION)


def _stats(args: argparse.Namespace) -> int:
    store = open_store(Settings.from_env(db=args.db, collection=args.collection))
    try:
        meta = store.get_meta(args.collection)
        info = {"collection": args.collection, "count": store.count(args.collection), **meta.to_dict()}
    finally:
        store.close()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {', '.join(value) if isinstance(value, list) else value}")
    return 0
