"""``shelfsight`` entry point: builds the parser from each stage's ``register`` and maps errors to
exit codes (``shelfsight.search.cli_args``: 2 bad input or usage, 1 anything else). Stages keep their command code beside them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from shelfsight.search.cli_args import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from shelfsight.search.errors import (
    BadInputError,
    CollectionNotFoundError,
    IncompatibleCollectionError,
    ShelfsightError,
)


def build_parser() -> argparse.ArgumentParser:
    from shelfsight.data import cli as data_cli
    from shelfsight.evaluation import cli as eval_cli
    from shelfsight.ingest import cli as ingest_cli
    from shelfsight.search import cli as search_cli
    from shelfsight.search.store import cli as store_cli
    from shelfsight.train import cli as train_cli
    from shelfsight.ui import cli as ui_cli

    parser = argparse.ArgumentParser(prog="shelfsight", description="Multimodal product search on Qdrant and CLIP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data_cli, train_cli, ingest_cli, search_cli, store_cli, eval_cli, ui_cli):
        module.register(sub)
    _register_demo(sub)
    return parser


def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("demo", help="offline demo: demo catalog, demo model (trained once), ingest, storefront")
    d.add_argument("--workdir", default=".shelfsight", help="where the demo keeps its catalog, model and store")
    d.add_argument("--port", type=int, default=8501)
    d.add_argument("--no-ui", action="store_true", help="print example searches and exit")
    budget = d.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, default=None, help="training steps for the demo model (default: the recipe's)"
    )
    budget.add_argument(
        "--minutes", type=float, default=None, help="a wall-clock budget instead (a busy machine gets fewer steps)"
    )
    d.add_argument("--offline", action="store_true", help="use the demo model even when the hub is reachable")
    d.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    # The demo ties every layer together; loaded only when asked for.
    from shelfsight.demo import TrainingBudget, run_demo
    from shelfsight.train.schedule import RECIPE_STEPS

    if (args.steps is not None and args.steps < 1) or (args.minutes is not None and args.minutes <= 0):
        raise BadInputError("--steps and --minutes must be above 0")
    budget = TrainingBudget(minutes=args.minutes) if args.minutes else TrainingBudget(steps=args.steps or RECIPE_STEPS)
    return run_demo(args.workdir, port=args.port, ui=not args.no_ui, budget=budget, offline=args.offline)


def main(argv: Sequence[str] | None = None) -> int:
    # Keep third-party chatter (tokenizer parallelism, progress bars of model loading) quiet. Set
    # before any of them is imported: transformers reads HF_HUB_DISABLE_PROGRESS_BARS at import.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transformers", "sentence_transformers", "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or EXIT_OK)
    except (BadInputError, CollectionNotFoundError, IncompatibleCollectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShelfsightError as exc:
        from shelfsight.search.redaction import redact  # URL credentials and keys never reach a log

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
