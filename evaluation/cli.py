"""``shelfsight eval``: retrieval quality of a collection on a JSONL query set, mode by mode."""

from __future__ import annotations

import argparse
import json

from shelfsight.evaluation.harness import MODES, evaluate, format_table
from shelfsight.evaluation.queries import read_queries
from shelfsight.search.cli_args import add_store_args, settings_from_args
from shelfsight.search.engine import SearchEngine


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="recall@1/5/10, hit@10, MRR and nDCG@10 of each retrieval mode on a JSONL query set",
        description='Queries file: one JSON object per line, {"query": "...", "image": "optional path", '
        '"relevant": ["id", ...]} (optional "suite" groups lines in the report).',
    )
    add_store_args(p, model_help="default: the model that built the collection")
    p.add_argument("--queries", required=True, help="JSONL query file (data generate writes queries.jsonl)")
    p.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} (default: all)")
    p.add_argument("--tags", metavar="FIELD", help="also score zero-shot tagging against this field, e.g. category")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw recall@10 by mode (needs matplotlib)")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    queries = read_queries(args.queries)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    with SearchEngine.open(settings_from_args(args)) as engine:
        report = evaluate(engine, queries, modes)
        if args.tags:
            from shelfsight.evaluation.zero_shot import tagging_accuracy

            report.tagging = tagging_accuracy(engine.store, engine.embedder, engine.collection, args.tags)
    if args.plot:
        from shelfsight.evaluation.plot import plot_report

        plot_report(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(format_table(report))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0
