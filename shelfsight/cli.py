"""``shelfsight`` entry point: builds the parser from each stage's ``register`` and maps errors to
exit codes (2: bad input or usage, 1: anything else). Stages keep their command code beside them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from search.errors import (
    BadInputError,
    CollectionNotFoundError,
    IncompatibleCollectionError,
    ShelfsightError,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    from data import cli as data_cli
    from evaluation import cli as eval_cli
    from ingest import cli as ingest_cli
    from search import cli as search_cli
    from train import cli as train_cli
    from ui import cli as ui_cli

    parser = argparse.ArgumentParser(prog="shelfsight", description="Multimodal product search on Qdrant and CLIP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data_cli, train_cli, ingest_cli, search_cli, eval_cli, ui_cli):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Keep third-party chatter (tokenizer parallelism, progress bars of model loading) quiet.
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
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        return int(args.func(args) or EXIT_OK)
    except (BadInputError, CollectionNotFoundError, IncompatibleCollectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShelfsightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
