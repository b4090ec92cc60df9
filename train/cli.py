"""``shelfsight model init``: random-weight CLIP directories for tests and benchmarks."""

from __future__ import annotations

import argparse

from train.model_init import PRESETS, init_model


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="local CLIP model directories").add_subparsers(
        dest="model_command", required=True
    )
    init = model.add_parser("init", help="write a random-weight CLIP directory (loads with SentenceTransformer(DIR))")
    init.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help="tiny: tests; small: demo training; vit-b-32: the real ViT-B/32 shape",
    )
    init.add_argument("--out", required=True, help="output directory")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    path = init_model(args.preset, args.out, seed=args.seed)
    print(f"wrote {args.preset} CLIP model to {path}")
    return 0
