"""``shelfsight ingest``: a thin layer over ``ingest_catalog``.

Exit status: 0 every row went in, 3 some rows were skipped (see the report), 2 usage error or
unreadable catalog, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shelfsight.search.cli_args import EXIT_OK, EXIT_PARTIAL, add_store_args, settings_from_args
from shelfsight.search.errors import BadInputError, StoreUnavailableError
from shelfsight.search.images import ImagePolicy
from shelfsight.search.precision import PRECISIONS
from shelfsight.search.settings import DEFAULT_MODEL
from shelfsight.search.store.base import CollectionOptions, ignored_by_edge
from shelfsight.search.store.options import add_option_args, options_from_args

if TYPE_CHECKING:  # pandas and the pipeline load when an ingest runs, not for every command's --help
    from shelfsight.ingest.catalog import Catalog, Columns
    from shelfsight.ingest.pipeline import IngestReport
    from shelfsight.search.discovery import ServerRecord
    from shelfsight.search.settings import Settings
    from shelfsight.search.store.base import VectorStore
    from shelfsight.search.store.server import ServerStore

_SHOWN_ERRORS = 20
REINDEX_HELP = (
    "rebuild the collection, embedding everything again: beside the live one while serve owns the "
    "store, and on a Qdrant server, where the collection's name then moves to the rebuild"
)


def _auto_int(value: str) -> int | None:
    """An integer flag that also takes 'auto' (None: chosen for the machine)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {value!r}") from None


PRECISION_HELP = (
    "number format of the model: auto (fp16 on a GPU, bf16 on a CPU with native bf16, else fp32; on a "
    "CPU, product texts in int8 where that keeps fp32's vectors)"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingest", help="embed a catalog's images and texts into the store")
    p.add_argument("catalog", help="CSV, TSV, JSONL, JSON or Parquet file")
    add_store_args(
        p, model_help=f"model name or local CLIP directory (default: the collection's, else {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--batch-size", type=_auto_int, default=None, help="rows per batch (default auto: 256 on a GPU, 32 on a CPU)"
    )
    p.add_argument(
        "--workers",
        type=_auto_int,
        default=None,
        help="processes reading, decoding and resizing images (default auto: the usable cores; 0: threads, no processes)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
    )
    p.add_argument(
        "--decode",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where JPEGs are decoded: gpu (nvJPEG, the gpu extra), cpu (Pillow in the workers), auto (gpu where it can)",
    )
    p.add_argument("--report", type=Path, help="write skipped rows here as JSONL (row, id, reason, hint)")
    p.add_argument("--reindex", action="store_true", help=REINDEX_HELP)
    p.add_argument("--prune", action="store_true", help="delete products that are not in this catalog")
    p.add_argument(
        "--fused-weight",
        type=float,
        default=None,
        metavar="A",
        help="also store fused = normalize(A*image + (1-A)*text)",
    )
    p.add_argument("--id-column", default="id")
    p.add_argument("--title-column", default="title")
    p.add_argument("--description-column", default="description")
    p.add_argument("--image-column", default="image")
    p.add_argument("--max-image-bytes", type=int, default=ImagePolicy.max_bytes)
    p.add_argument("--max-image-pixels", type=int, default=ImagePolicy.max_pixels)
    p.add_argument("--url-timeout", type=float, default=ImagePolicy.timeout)
    p.add_argument(
        "--allow-private-urls", action="store_true", help="let image URLs reach loopback and private networks"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.add_argument(
        "--api",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="send the catalog through a running `shelfsight serve` (its PUT route); without URL, the one serving --db",
    )
    p.add_argument("--api-key", default=None, help="the server's admin key (default: env SHELFSIGHT_ADMIN_KEY)")
    add_option_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.search.store import open_store
    from shelfsight.search.store.server import ServerStore

    if args.batch_size is not None and args.batch_size < 1:
        raise BadInputError("--batch-size must be at least 1 (or auto)")
    if args.workers is not None and args.workers < 0:
        raise BadInputError("--workers must be 0 (read images in threads of this process), a count, or auto")
    if args.fused_weight is not None and not 0.0 <= args.fused_weight <= 1.0:
        raise BadInputError("--fused-weight must lie in [0, 1]")
    columns = catalog_columns(args)
    settings = settings_from_args(args)
    if args.api is not None:
        _check_api_args(args)
        return _finish(_ingest_via_api(args, read_catalog(args.catalog, columns), settings), args)
    record = _serving(settings)
    if record is not None and not args.reindex and not args.prune:
        _refuse_served(record, settings, args)
    catalog = read_catalog(args.catalog, columns)
    if record is not None and args.reindex:
        return _finish(_reindex_beside(args, catalog, settings, record), args)
    store = open_store(settings)
    try:
        if args.reindex and isinstance(store, ServerStore):
            report = _reindex_by_alias(store, args, catalog, settings)
        else:
            report = _ingest_into(store, args, catalog, settings)
    finally:
        store.close()
    return _finish(report, args)


def _ingest_into(
    store: VectorStore, args: argparse.Namespace, catalog: Catalog, settings: Settings, collection: str | None = None
) -> IngestReport:
    """The local ingest into ``store`` (into ``collection``, when given, instead of the settings'
    one), with the model and options the flags name."""
    from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
    from shelfsight.search.embedder import Embedder

    collection = collection or settings.collection
    _apply_options(store, options_from_args(args), collection, args.reindex)
    model = settings.model
    if model is None and store.collection_exists(collection) and not args.reindex:
        model = store.get_meta(collection).model_source or None
    embedder = Embedder(model or DEFAULT_MODEL, device=args.device, precision=args.precision)
    options = IngestOptions(
        collection=collection,
        batch_size=args.batch_size,
        workers=args.workers,
        decode=args.decode,
        reindex=args.reindex,
        prune=args.prune,
        fused_weight=args.fused_weight,
        columns=catalog_columns(args),
        images=_image_policy(args),
    )
    bar = _progress_bar(catalog.total)
    try:
        return ingest_catalog(catalog, store, embedder, options, on_progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


def _reindex_beside(
    args: argparse.Namespace, catalog: Catalog, settings: Settings, record: ServerRecord
) -> IngestReport:
    """``--reindex`` of a store that ``serve`` owns: a new generation beside it, then the switch."""
    from shelfsight.ingest.bluegreen import reindex_beside_server

    assert settings.db is not None
    print(f"building a new store beside the one `shelfsight serve` (pid {record.pid}) serves", file=sys.stderr)
    report, switch = reindex_beside_server(
        settings.db, settings.collection, record.pid, lambda store: _ingest_into(store, args, catalog, settings)
    )
    print(
        f"switched: the server (pid {record.pid}) serves the rebuilt store (generation {switch.new}); "
        f"generation {switch.old} removed",
        file=sys.stderr,
    )
    return report


def _reindex_by_alias(
    store: ServerStore, args: argparse.Namespace, catalog: Catalog, settings: Settings
) -> IngestReport:
    """``--reindex`` on a Qdrant server: a new collection beside the live one, then the alias moves."""
    from shelfsight.ingest.bluegreen import reindex_by_alias

    name = settings.collection
    print(f"building a new collection beside {name!r}; its name moves to it when it is ready", file=sys.stderr)
    report, new, old = reindex_by_alias(store, name, lambda c: _ingest_into(store, args, catalog, settings, c))
    print(f"switched: {name!r} names {new!r}" + (f"; {old!r} deleted" if old else ""), file=sys.stderr)
    return report


def _finish(report: IngestReport, args: argparse.Namespace) -> int:
    """The report: skipped rows on stderr (all of them in --report), the summary, the exit code."""
    if args.report:
        write_report(report, args.report)
    _print_errors(report, args.report)
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"ingested {report.ingested}, unchanged {report.unchanged}, updated {report.updated}, "
            f"skipped {report.skipped}, text only {report.text_only}, truncated texts {report.truncated}"
            f"{f', pruned {report.pruned}' if args.prune else ''} in {report.seconds:.1f}s "
            f"({_rate(report)}; {_stages(report)})"
        )
        if report.text_tower:
            print(f"product texts ran in {report.text_tower}")
    return EXIT_PARTIAL if report.skipped else EXIT_OK


def catalog_columns(args: argparse.Namespace) -> Columns:
    from shelfsight.ingest.catalog import Columns

    return Columns(args.id_column, args.title_column, args.description_column, args.image_column)


def _image_policy(args: argparse.Namespace) -> ImagePolicy:
    return ImagePolicy(args.max_image_bytes, args.max_image_pixels, args.url_timeout, args.allow_private_urls)


_NOT_WITH_API = {
    "reindex": "--reindex rebuilds the store: run `ingest CATALOG --db DIR --reindex` where the store lives",
    "prune": "--prune is not offered through the API; run it on a store no server owns",
    "model": "--model: the server embeds with its collection's model",
    "fused_weight": "--fused-weight is fixed when the collection is built (use --reindex)",
}


def _check_api_args(args: argparse.Namespace) -> None:
    for name, why in _NOT_WITH_API.items():
        if getattr(args, name) not in (None, False):
            raise BadInputError(f"--api cannot be combined with {why}")


def _ingest_via_api(args: argparse.Namespace, catalog: Catalog, settings: Settings) -> IngestReport:
    """The catalog through the server at ``--api`` (or the one serving ``--db``), same report."""
    import os

    from shelfsight.ingest.api import call, ingest_through_api, resolve_target
    from shelfsight.ingest.pipeline import IngestOptions
    from shelfsight.search.discovery import find_server

    record = None if settings.qdrant_url or args.api else find_server(settings.db)
    key = args.api_key or os.environ.get("SHELFSIGHT_ADMIN_KEY")
    target = resolve_target(args.api or None, key, record.url if record else None, settings.db)
    served = str(call(target, "GET", "/health").get("collection"))
    if args.collection and args.collection != served:
        raise BadInputError(f"the server at {target.url} serves collection {served!r}, not {args.collection!r}")
    options = IngestOptions(batch_size=args.batch_size, workers=args.workers, images=_image_policy(args))
    bar = _progress_bar(catalog.total)
    try:
        return ingest_through_api(catalog, target, options, on_progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


def _serving(settings: Settings) -> ServerRecord | None:
    """The running ``serve`` that owns this embedded collection, if one does."""
    from shelfsight.search.discovery import find_server

    record = None if settings.qdrant_url else find_server(settings.db)
    return record if record is not None and record.collection == settings.collection else None


def _refuse_served(record: ServerRecord, settings: Settings, args: argparse.Namespace) -> None:
    """A plain ingest into a store that ``serve`` owns goes through that server (``--api``)."""
    raise StoreUnavailableError(
        f"collection {settings.collection!r} in {settings.db} is open in another process: `shelfsight serve` "
        f"(pid {record.pid}, {record.url}) owns it. Send the catalog through it with "
        f"`shelfsight ingest {args.catalog} --db {settings.db} --api` (needs SHELFSIGHT_ADMIN_KEY), "
        "rebuild it beside the live store with --reindex, or stop the server first"
    )


def _apply_options(store: object, options: CollectionOptions, collection: str, reindex: bool) -> None:
    """Collection options for a collection this ingest creates; says what will not apply."""
    from shelfsight.search.store.core import QdrantStore
    from shelfsight.search.store.edge import EdgeStore

    if options == CollectionOptions() or not isinstance(store, QdrantStore):
        return
    store.default_options = options
    if store.collection_exists(collection) and not reindex:
        print(f"note: {collection!r} exists; collection options apply when it is created (--reindex)", file=sys.stderr)
    ignored = ignored_by_edge(options) if isinstance(store, EdgeStore) else []
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        print(
            f"note: the embedded store is one local shard and ignores {flags} (they apply on a Qdrant server)",
            file=sys.stderr,
        )


def _rate(report: IngestReport) -> str:
    return (
        f"{report.ingested / report.seconds:.1f} items/s" if report.seconds and report.ingested else "nothing embedded"
    )


def _stages(report: IngestReport) -> str:
    return ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in report.stage_seconds.items()) or "no stages ran"


def _progress_bar(total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="ingest", file=sys.stderr)


def write_report(report: IngestReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for error in report.errors:
            fh.write(json.dumps(error.to_dict()) + "\n")


def _print_errors(report: IngestReport, report_path: Path | None) -> None:
    if not report.errors:
        return
    print(f"skipped {len(report.errors)} row(s):", file=sys.stderr)
    print(f"  {'row':>6}  {'id':<16}  reason -> fix", file=sys.stderr)
    for e in report.errors[:_SHOWN_ERRORS]:
        print(f"  {e.row:>6}  {str(e.product_id or '-'):<16.16}  {e.reason} -> {e.hint}", file=sys.stderr)
    if len(report.errors) > _SHOWN_ERRORS:
        where = f"see {report_path}" if report_path else "pass --report FILE for all"
        print(f"  ... and {len(report.errors) - _SHOWN_ERRORS} more ({where})", file=sys.stderr)
