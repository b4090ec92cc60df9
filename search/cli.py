"""Commands over a built collection: ``stats``, ``search``, ``tag`` and ``serve``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from shelfsight.search.cli_args import EXIT_OK, add_store_args, settings_from_args
from shelfsight.search.discovery import ServerRecord, find_server, remove_record, write_record
from shelfsight.search.engine import FUSION_METHODS, SearchEngine, SearchRequest
from shelfsight.search.errors import StoreUnavailableError
from shelfsight.search.records import Answer, Hit
from shelfsight.search.settings import DEFAULT_FUSION, Settings
from shelfsight.search.store import open_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands over a built collection: ``stats``, ``search``, ``tag`` and ``serve``."""
    _register_stats(sub)
    _register_search(sub)
    _register_tag(sub)
    _register_serve(sub)


def _register_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="what a collection holds and which model built it")
    add_store_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_stats)


def _stats(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    record = _owner(settings)
    if record is not None:
        from shelfsight.search.remote import remote_health

        info = {k: v for k, v in remote_health(record).items() if k != "status"}
    else:
        store = open_store(settings)
        try:
            meta = store.get_meta(settings.collection)
            info = {"collection": settings.collection, "count": store.count(settings.collection), **meta.to_dict()}
            info["vocabulary"] = len(meta.vocabulary)  # its size: the words themselves fill screens
        finally:
            store.close()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


def _owner(settings: Settings) -> ServerRecord | None:
    """The running ``serve`` that owns the embedded store, when there is one (then say so, once)."""
    record = None if settings.qdrant_url else find_server(settings.db)
    if record is None:
        return None
    if record.collection != settings.collection:
        raise StoreUnavailableError(
            f"{settings.db} is open in `shelfsight serve` (pid {record.pid}, {record.url}) for collection "
            f"{record.collection!r}, not {settings.collection!r}; stop it, or search {record.collection!r}"
        )
    print(f"answered by the server that owns {settings.db}: pid {record.pid} at {record.url}", file=sys.stderr)
    return record


def _register_search(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", help="search the catalog by text, image or both")
    p.add_argument("query", nargs="?", default=None, help='query text: "red dress + ./photo.jpg", "2:red", "-floral"')
    add_store_args(p, model_help="default: the model that built the collection")
    p.add_argument("--image", help="query image path or URL")
    p.add_argument(
        "--vectors", default=None, help="product vectors to search: image, text, bm25 (default: all the collection has)"
    )
    p.add_argument("--text-weight", type=float, default=None)
    p.add_argument("--image-weight", type=float, default=None)
    p.add_argument("--fusion", choices=FUSION_METHODS, default=None, help=f"default: {DEFAULT_FUSION}")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="EXPR",
        help="category=shoe, color!=red, price<=40 (repeatable)",
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="cosine floor for each ranked list; replaces the collection's 'no close matches' floor (-1: none)",
    )
    p.add_argument(
        "--boost",
        action="append",
        default=[],
        metavar="SPEC",
        help="shop signal added to relevance: stock=in:0.5, price~40:0.3, popularity^100:0.2, added@30:0.3",
    )
    p.add_argument("--diversity", type=float, default=None, help="0-1: spread the page over unlike products (MMR)")
    p.add_argument("--no-correct", dest="correct", action="store_false", help="search misspelled words as typed")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--similar", metavar="PRODUCT_ID", help="products like this one instead of a query")
    p.add_argument("--json", action="store_true", help="print one JSON array of hits")
    p.set_defaults(func=_search)


def _register_tag(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("tag", help="zero-shot label every product (prompt ensembles); tags become filterable")
    add_store_args(t)
    t.add_argument("--labels", required=True, help='comma-separated labels, e.g. "shoe,bag,hat"')
    t.add_argument("--field", default="tag", help="payload field to write (default tag)")
    t.add_argument("--threshold", type=float, default=0.3, help="below this probability the tag is 'unknown'")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_tag)


def _register_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "serve",
        help="HTTP API over the search engine (FastAPI, OpenAPI at /docs)",
        description="HTTP API over the search engine (FastAPI, OpenAPI at /docs). PUT and DELETE "
        "/products/{id} change products while serving; they need SHELFSIGHT_ADMIN_KEY set here and sent "
        "as X-API-Key (without it the server takes no writes). SHELFSIGHT_API_KEY guards reads.",
    )
    add_store_args(s, model_help="default: the model that built the collection")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="let query parts and product images name files on this machine (off: clients send uploads or public URLs)",
    )
    s.add_argument(
        "--fp32-queries",
        dest="int8_queries",
        action="store_false",
        help="embed query texts with the fp32 text tower (default: an int8 copy where it keeps cosine >= 0.995)",
    )
    s.add_argument(
        "--no-text-process",
        dest="text_process",
        action="store_false",
        help="embed query texts in the serving process (default: a child process beside it, on CPU with 2+ cores)",
    )
    s.set_defaults(func=_serve)


def _search(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    vectors = tuple(v.strip() for v in (args.vectors or "").split(",") if v.strip())
    request = SearchRequest(
        filters=args.filter,
        fusion=args.fusion,
        vectors=vectors or None,
        text_weight=args.text_weight,
        image_weight=args.image_weight,
        min_score=args.min_score,
        limit=args.limit,
        offset=args.offset,
        correct=args.correct,
        diversity=args.diversity,
        boosts=tuple(args.boost),
    )
    record = _owner(settings)
    if record is not None:
        hits = _remote_hits(record, args, request)
    else:
        with SearchEngine.open(settings) as engine:
            if args.similar:
                hits = engine.similar(
                    args.similar,
                    filters=args.filter,
                    fusion_method=args.fusion,
                    vectors=vectors,
                    limit=args.limit,
                    offset=args.offset,
                )
            else:
                answer = engine.answer(args.query, args.image, request)
                _print_notes(answer, args.query)
                hits = answer.hits
    _print_hits(hits, args)
    return EXIT_OK


def _print_notes(answer: Answer, query: str | None) -> None:
    """What a shop says above its results, on stderr so ``--json`` stays one array."""
    if answer.showing_results_for:
        print(f"showing results for: {answer.showing_results_for}", file=sys.stderr)
    if answer.no_close_matches:
        print(f"no close matches for {query!r} (--min-score -1 shows the nearest anyway)", file=sys.stderr)
    if answer.exact_match:
        print(f"exact match: product {answer.hits[0].id}", file=sys.stderr)


def _remote_hits(record: ServerRecord, args: argparse.Namespace, request: SearchRequest) -> list[Hit]:
    from shelfsight.search.remote import remote_answer, remote_similar

    if args.similar:
        return remote_similar(record, args.similar, request)
    answer = remote_answer(record, args.query, args.image, request)
    _print_notes(answer, args.query)
    return answer.hits


def _print_hits(hits: list[Hit], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps([h.to_dict() for h in hits]))
        return
    if not hits:
        print("no results")
    for rank, h in enumerate(hits, start=args.offset + 1):
        price = h.payload.get("price")
        extra = f"  {price:.2f}" if isinstance(price, float) else ""
        explain = ", ".join(
            f"{k} {v.score:.3f}" + (f" #{v.rank}" if v.rank else "") for k, v in h.vector_scores.items()
        )
        print(f"{rank:>3}. {h.score:.4f}  {h.id}  {h.title}{extra}   [{explain}]")


def _tag(args: argparse.Namespace) -> int:
    from shelfsight.search.tagging import tag_collection

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    with SearchEngine.open(settings_from_args(args)) as engine:
        counts = tag_collection(
            engine.store, engine.embedder, engine.collection, labels, field=args.field, threshold=args.threshold
        )
    if args.json:
        print(json.dumps(counts))
    else:
        print(", ".join(f"{label}: {n}" for label, n in counts.items()))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from shelfsight.search.http import serve
    from shelfsight.search.http_guard import ServeOptions

    settings = settings_from_args(args)
    # While it serves an embedded store, other commands find it there and ask it (discovery.py).
    db = None if settings.qdrant_url else settings.db
    if db:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        write_record(db, ServerRecord(os.getpid(), f"http://{host}:{args.port}", settings.collection))
    # uvicorn shuts down gracefully on SIGTERM, then raises it again for the previous handler: this
    # one turns it into an exit that runs the clean-up below (the default would end the process).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve(
            settings,
            args.host,
            args.port,
            ServeOptions.from_env(args.allow_local_paths, args.int8_queries, args.text_process),
        )
    finally:
        if db:
            remove_record(db, os.getpid())
    return EXIT_OK


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
