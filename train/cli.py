"""``shelfsight model init`` and ``train``: making models and training them."""

from __future__ import annotations

import argparse

from shelfsight.search.errors import BadInputError
from shelfsight.train.model_init import PRESETS, init_model
from shelfsight.train.schedule import RECIPE_STEPS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    register_training(sub)


def _init(args: argparse.Namespace) -> int:
    path = init_model(args.preset, args.out, seed=args.seed)
    print(f"wrote {args.preset} CLIP model to {path}")
    return 0


def register_training(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("train", help="contrastive training (InfoNCE) of a CLIP model on a catalog")
    t.add_argument("--catalog", required=True)
    t.add_argument("--out", required=True)
    start = t.add_mutually_exclusive_group()
    start.add_argument("--init", help="fine-tune this CLIP directory")
    start.add_argument("--preset", choices=sorted(PRESETS), default="small", help="train a fresh model of this shape")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, default=None, help=f"optimizer steps (default {RECIPE_STEPS}, the demo recipe's)"
    )
    budget.add_argument(
        "--minutes", type=float, default=None, help="a wall-clock budget instead: fewer steps on a busy machine"
    )
    budget.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument(
        "--hard-negatives", action="store_true", help="pack half-batches with one kind (after the first stage)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    t.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 where the hardware has it"
    )
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from shelfsight.train.contrastive import TrainConfig, train

    for name in ("steps", "minutes", "epochs"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise BadInputError(f"--{name} must be above 0, got {value}")
    config = TrainConfig(
        catalog=args.catalog,
        out=args.out,
        init=args.init,
        preset=args.preset,
        minutes=args.minutes,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        hard_negatives=args.hard_negatives,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    metrics = train(config)
    print(
        f"saved {args.out}: {metrics['steps']} steps in {metrics['seconds']}s, "
        f"validation text->image recall@1 {metrics['val_text_to_image_recall@1']}"
    )
    return 0
