"""Commands over a built collection: ``stats``, ``search``, ``tag`` and ``serve``."""

from __future__ import annotations

import argparse
import json

from shelfsight.search.cli_args import EXIT_OK, add_store_args, settings_from_args
from shelfsight.search.engine import FUSION_METHODS, SearchEngine, SearchRequest
from shelfsight.search.settings import DEFAULT_FUSION
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
    store = open_store(settings)
    try:
        meta = store.get_meta(settings.collection)
        info = {"collection": settings.collection, "count": store.count(settings.collection), **meta.to_dict()}
    finally:
        store.close()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


def _register_search(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", help="search the catalog by text, image or both")
    p.add_argument("query", nargs="?", default=None, help='query text: "red dress + ./photo.jpg", "2:red", "-floral"')
    add_store_args(p, model_help="default: the model that built the collection")
    p.add_argument("--image", help="query image path or URL")
    p.add_argument("--vectors", default="image,text", help="product vectors to search (default image,text)")
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
    p.add_argument("--min-score", type=float, default=None, help="cosine floor for each ranked list")
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
    s = sub.add_parser("serve", help="HTTP API over the search engine (FastAPI, OpenAPI at /docs)")
    add_store_args(s, model_help="default: the model that built the collection")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="let query parts name image files on this machine (off: clients send uploads or public URLs)",
    )
    s.set_defaults(func=_serve)


def _search(args: argparse.Namespace) -> int:
    with SearchEngine.open(settings_from_args(args)) as engine:
        vectors = [v.strip() for v in args.vectors.split(",") if v.strip()]
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
            request = SearchRequest(
                filters=args.filter,
                fusion=args.fusion,
                vectors=tuple(vectors) or None,
                text_weight=args.text_weight,
                image_weight=args.image_weight,
                min_score=args.min_score,
                limit=args.limit,
                offset=args.offset,
            )
            hits = engine.run(args.query, args.image, request)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits]))
        return EXIT_OK
    if not hits:
        print("no results")
    for rank, h in enumerate(hits, start=args.offset + 1):
        price = h.payload.get("price")
        extra = f"  {price:.2f}" if isinstance(price, float) else ""
        explain = ", ".join(
            f"{k} {v.score:.3f}" + (f" #{v.rank}" if v.rank else "") for k, v in h.vector_scores.items()
        )
        print(f"{rank:>3}. {h.score:.4f}  {h.id}  {h.title}{extra}   [{explain}]")
    return EXIT_OK


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

    serve(settings_from_args(args), args.host, args.port, ServeOptions.from_env(args.allow_local_paths))
    return EXIT_OK
