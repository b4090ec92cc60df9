"""``shelfsight demo``: the pretrained model when the hub is reachable, else the offline demo model
(trained once on a synthetic catalog and cached), a demo catalog ingested, and the storefront."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from shelfsight.data.generate import write_catalog
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.embedder import Embedder, hub_reachable
from shelfsight.search.engine import SearchEngine
from shelfsight.search.settings import DEFAULT_COLLECTION, DEFAULT_MODEL
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.tagging import tag_collection
from shelfsight.train.gate import saved_verdict, train_checked
from shelfsight.train.schedule import RECIPE_STEPS
from shelfsight.ui.cli import run_child

DEMO_PRODUCTS, DEMO_SEED = 800, 7
TRAIN_PRODUCTS, TRAIN_SEED = 2400, 1001  # a different seed: the demo catalog is unseen data
KINDS = "shoe,bag,hat,mug,lamp,shirt,bottle,umbrella"
EXAMPLES = ("red bag", "blue shoe", "yellow umbrella -striped", "green mug")


@dataclass(frozen=True)
class TrainingBudget:
    """The demo model's budget: ``steps`` (the recipe's by default), or ``minutes`` when given."""

    steps: int = RECIPE_STEPS
    minutes: float | None = None

    def describe(self) -> str:
        return f"{self.minutes:g} min" if self.minutes else f"{self.steps} steps"


def demo_model(workdir: Path, budget: TrainingBudget = TrainingBudget(), offline: bool = False) -> str:
    """The pretrained default when online (unless ``offline``); else the demo model, trained on first use."""
    if not offline and hub_reachable():
        print(f"model: {DEFAULT_MODEL} (pretrained, from the Hugging Face hub)")
        return DEFAULT_MODEL
    reason = "offline by request" if offline else "offline, the hub is unreachable"
    model_dir = workdir / "models" / "demo"
    if (model_dir / "training.json").is_file():
        print(f"model: {reason} -> cached demo model {model_dir}")
        verdict = saved_verdict(model_dir)
        if verdict is not None and not verdict.passed:
            print(f"WARNING: {verdict.explain()}")
        return str(model_dir)
    print(f"model: {reason} -> training the demo model ({budget.describe()}, once; the bar shows the time left)")
    from shelfsight.train.contrastive import TrainConfig

    train_csv = write_catalog(workdir / "train-catalog", n=TRAIN_PRODUCTS, seed=TRAIN_SEED)
    tmp = model_dir.with_name("demo.partial")
    config = TrainConfig(
        catalog=str(train_csv), out=str(tmp), steps=None if budget.minutes else budget.steps, minutes=budget.minutes
    )
    verdict = train_checked(config)
    shutil.rmtree(model_dir, ignore_errors=True)  # a half-written cache from an interrupted run
    tmp.replace(model_dir)  # only a finished model is ever cached
    print(verdict.explain() if verdict.passed else f"WARNING: {verdict.explain()}")
    return str(model_dir)


def print_quality(engine: SearchEngine, db: Path, queries: Path, out: Path) -> None:
    """Score the model on the demo catalog's queries (data it never trained on); full report to ``out``."""
    from shelfsight.evaluation.harness import evaluate
    from shelfsight.evaluation.queries import read_queries
    from shelfsight.evaluation.zero_shot import tagging_accuracy

    fusion = engine.settings.fusion
    mode = f"{fusion}+bm25" if "bm25" in engine.meta.sparse_vectors and fusion != "early" else fusion
    report = evaluate(engine, read_queries(queries), ["text-vector", "image-vector", mode])
    report.tagging = tagging_accuracy(engine.store, engine.embedder, engine.collection, "category")
    out.write_text(json.dumps(report.to_dict(), indent=2))

    def metric(suite: str, parts: str, name: str = "recall@10") -> str:
        try:
            return f"{report.row(suite, parts, mode).metrics[name]:.2f}"
        except KeyError:  # a catalog written before the suite existed
            return "n/a"

    print(
        f"quality on the unseen demo catalog (recall@10, {mode.upper()} fusion): kind+colour text queries "
        f"{metric('kind+colour', 'text')}; 'like this but <colour>' {metric('composed', 'text+image')} (text alone "
        f"{metric('composed', 'text')}, image alone {metric('composed', 'image')}); brand+kind "
        f"{metric('brand+kind', 'text')}; misspelled {metric('misspelled', 'text')}; exact id first "
        f"{metric('exact id', 'text', 'recall@1')}; made-up words answered 'no close matches' "
        f"{metric('nonsense', 'text', 'empty')}; zero-shot kind tags {report.tagging['ensemble']:.2f} accurate. "
        f"Full table: shelfsight eval --db {db} --queries {queries} --tags category"
    )


def run_demo(
    workdir: str | Path,
    port: int = 8501,
    ui: bool = True,
    budget: TrainingBudget = TrainingBudget(),
    offline: bool = False,
) -> int:
    workdir = Path(workdir)
    model = demo_model(workdir, budget, offline)
    catalog = workdir / "demo-catalog" / "catalog.csv"
    if not catalog.is_file():
        write_catalog(catalog.parent, n=DEMO_PRODUCTS, seed=DEMO_SEED)
    db = workdir / "db"
    store = EdgeStore(db)
    try:
        embedder = Embedder(model)
        meta_model = store.get_meta(DEFAULT_COLLECTION).model if store.collection_exists(DEFAULT_COLLECTION) else None
        report = ingest_catalog(
            catalog,
            store,
            embedder,
            IngestOptions(fused_weight=0.5, reindex=meta_model not in (None, embedder.model_id)),
        )
        print(
            f"catalog: {catalog} -> {db} (ingested {report.ingested}, unchanged {report.unchanged}, skipped {report.skipped})"
        )
        engine = SearchEngine(store, embedder, DEFAULT_COLLECTION)
        if report.ingested:
            tag_collection(store, embedder, DEFAULT_COLLECTION, KINDS.split(","), threshold=0.3)
            print_quality(engine, db, catalog.parent / "queries.jsonl", workdir / "eval.json")
        for query in EXAMPLES:
            hits = engine.search(query, limit=3)
            print(f'  "{query}": ' + "; ".join(f"{h.title} ({h.payload.get('price')})" for h in hits))
    finally:
        store.close()
    if not ui:
        return 0
    print(f"storefront: http://127.0.0.1:{port}/?q=red+bag  (Ctrl+C to stop)")
    # The storefront's process tree stops with this one (signals forwarded, killed on the way out).
    return run_child([sys.executable, "-m", "shelfsight", "ui", "--db", str(db), "--port", str(port)])
