"""``shelfsight data generate``: write a synthetic catalog."""

from __future__ import annotations

import argparse

from shelfsight.data.generate import spec_count_summary, write_catalog
from shelfsight.search.errors import BadInputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = sub.add_parser("data", help="synthetic catalogs").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="draw a synthetic product catalog with images and eval queries")
    gen.add_argument("--out", required=True, help="output folder (catalog.csv, images/, queries.jsonl)")
    gen.add_argument("--n", type=int, default=400, help="number of products (default 400)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; the same seed draws the same catalog")
    gen.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise BadInputError("--n must be at least 1")
    path = write_catalog(args.out, n=args.n, seed=args.seed)
    print(f"wrote {path} ({spec_count_summary(args.n)})")
    return 0
