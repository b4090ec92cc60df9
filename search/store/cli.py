"""``shelfsight migrate``, ``snapshot`` and ``restore``: thin layers over ``transfer`` and ``snapshot``.

Example::

    shelfsight migrate --from db --to http://127.0.0.1:6333          # embedded store -> server
    shelfsight migrate --from http://127.0.0.1:6333 --to db2         # and back
    shelfsight snapshot --db db --out products.tar.gz                 # QDRANT_URL set: the server's API
    shelfsight restore products.tar.gz --db db2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shelfsight.search.cli_args import EXIT_OK, add_store_args, settings_from_args
from shelfsight.search.settings import DEFAULT_COLLECTION, Settings
from shelfsight.search.store.base import CollectionMeta, ignored_by_edge
from shelfsight.search.store.transfer import DEFAULT_SAMPLE, MigrateRequest, is_server, migrate, open_location


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The store commands: ``migrate``, ``snapshot`` and ``restore``."""
    m = sub.add_parser("migrate", help="copy a collection between stores (embedded <-> server), no re-embedding")
    m.add_argument("--from", dest="source", required=True, help="embedded store directory or server URL")
    m.add_argument("--to", dest="target", required=True, help="embedded store directory or server URL")
    m.add_argument(
        "--collection", default=DEFAULT_COLLECTION, help=f"collection to copy (default {DEFAULT_COLLECTION})"
    )
    m.add_argument("--to-collection", default=None, help="name in the target (default: the same)")
    m.add_argument("--batch-size", type=int, default=256, help="points per batch (default 256)")
    m.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="points whose top-10 are compared at the end")
    m.add_argument("--json", action="store_true", help="print the report as JSON on the last line")
    m.set_defaults(func=_migrate)

    s = sub.add_parser("snapshot", help="a consistent copy of a collection (QDRANT_URL set: the server's snapshot)")
    add_store_args(s)
    s.add_argument("--out", type=Path, required=True, help="file to write (.tar.gz for an embedded store)")
    s.set_defaults(func=_snapshot)

    r = sub.add_parser("restore", help="bring back a collection from `shelfsight snapshot`")
    r.add_argument("archive", type=Path, help="file written by `shelfsight snapshot`")
    add_store_args(r)
    r.add_argument("--force", action="store_true", help="replace a collection of the same name")
    r.set_defaults(func=_restore)


def _migrate(args: argparse.Namespace) -> int:
    api_key = Settings.from_env().qdrant_api_key
    request = MigrateRequest(args.collection, args.to_collection, args.batch_size, args.sample)
    source = open_location(args.source, api_key)
    try:
        target = open_location(args.target, api_key)
        try:
            report = migrate(source, target, request, on_batch=_progress)
            _note_ignored(source.get_meta(request.collection), args.target)
        finally:
            target.close()
    finally:
        source.close()
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"migrated {report.collection!r} -> {report.target_collection!r}: {report.total} points "
            f"({report.copied} copied, {report.already_there} already there), "
            f"{report.verified_queries} top-10 queries identical, {report.seconds:.1f}s"
        )
    return EXIT_OK


def _note_ignored(meta: CollectionMeta, target: str) -> None:
    """An embedded target drops a server collection's cluster-only options; say which."""
    ignored = [] if is_server(target) else ignored_by_edge(meta.options)
    if ignored:
        names = ", ".join(name.replace("_", " ") for name in ignored)
        print(f"note: the embedded store is one local shard; the source's {names} do not apply", file=sys.stderr)


def _progress(done: int, copied: int) -> None:
    print(f"{done} points done, {copied} copied", file=sys.stderr, flush=True)


def _snapshot(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.qdrant_url:
        from shelfsight.search.store.server import ServerStore
        from shelfsight.search.store.snapshot import snapshot_server

        store = ServerStore.connect(settings.qdrant_url, settings.qdrant_api_key)
        try:
            out = snapshot_server(store, settings.collection, args.out)
        finally:
            store.close()
    else:
        from shelfsight.search.store.snapshot import snapshot_edge

        if not settings.db:
            raise _no_store()
        out = snapshot_edge(settings.db, settings.collection, args.out)
    print(f"snapshot of {settings.collection!r} written to {out} ({out.stat().st_size} bytes)")
    return EXIT_OK


def _restore(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.qdrant_url:
        from shelfsight.search.store.server import ServerStore
        from shelfsight.search.store.snapshot import restore_server

        store = ServerStore.connect(settings.qdrant_url, settings.qdrant_api_key)
        try:
            restore_server(store, args.archive, settings.collection, force=args.force)
        finally:
            store.close()
        name = settings.collection
    else:
        from shelfsight.search.store.snapshot import restore_edge

        if not settings.db:
            raise _no_store()
        name = restore_edge(args.archive, settings.db, args.collection, force=args.force)
    print(f"restored {name!r} from {args.archive}")
    return EXIT_OK


def _no_store() -> Exception:
    from shelfsight.search.errors import BadInputError

    return BadInputError("no store given: pass --db DIR (embedded store) or set QDRANT_URL")
