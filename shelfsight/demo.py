"""``shelfsight demo``: the pretrained model when the hub is reachable, else the offline demo model
(trained once on a synthetic catalog and cached), a demo catalog ingested, and the storefront."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from shelfsight.data.generate import write_catalog
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.embedder import Embedder, hub_reachable
from shelfsight.search.engine import SearchEngine
from shelfsight.search.settings import DEFAULT_COLLECTION, DEFAULT_MODEL
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.tagging import tag_collection

DEMO_PRODUCTS, DEMO_SEED = 800, 7
TRAIN_PRODUCTS, TRAIN_SEED = 2400, 1001  # a different seed: the demo catalog is unseen data
KINDS = "shoe,bag,hat,mug,lamp,shirt,bottle,umbrella"
EXAMPLES = ("red bag", "blue shoe", "yellow umbrella -striped", "green mug")


def demo_model(workdir: Path, minutes: float, offline: bool = False) -> str:
    """The pretrained default when online (unless ``offline``); else the demo model, trained on first use."""
    if not offline and hub_reachable():
        print(f"model: {DEFAULT_MODEL} (pretrained, from the Hugging Face hub)")
        return DEFAULT_MODEL
    reason = "offline by request" if offline else "offline, the hub is unreachable"
    model_dir = workdir / "models" / "demo"
    if (model_dir / "training.json").is_file():
        print(f"model: {reason} -> cached demo model {model_dir}")
        return str(model_dir)
    print(f"model: {reason} -> training the demo model ({minutes:g} min, once)")
    from shelfsight.train.contrastive import TrainConfig, train

    train_csv = write_catalog(workdir / "train-catalog", n=TRAIN_PRODUCTS, seed=TRAIN_SEED)
    tmp = model_dir.with_name("demo.partial")
    metrics = train(TrainConfig(catalog=str(train_csv), out=str(tmp), minutes=minutes))
    shutil.rmtree(model_dir, ignore_errors=True)  # a half-written cache from an interrupted run
    tmp.replace(model_dir)  # only a finished model is ever cached
    print(f"trained in {metrics['seconds']}s; validation text->image recall@1 {metrics['val_text_to_image_recall@1']}")
    return str(model_dir)


def print_quality(engine: SearchEngine, db: Path, queries: Path, out: Path) -> None:
    """Score the model on the demo catalog's queries (data it never trained on); full report to ``out``."""
    from shelfsight.evaluation.harness import evaluate
    from shelfsight.evaluation.queries import read_queries
    from shelfsight.evaluation.zero_shot import tagging_accuracy

    fusion = engine.settings.fusion
    report = evaluate(engine, read_queries(queries), ["text-vector", "image-vector", fusion])
    report.tagging = tagging_accuracy(engine.store, engine.embedder, engine.collection, "category")
    out.write_text(json.dumps(report.to_dict(), indent=2))

    def r10(suite: str, parts: str) -> str:
        return f"{report.row(suite, parts, fusion).metrics['recall@10']:.2f}"

    print(
        f"quality on the unseen demo catalog (recall@10, {fusion.upper()} fusion): kind+colour text queries {r10('kind+colour', 'text')}; "
        f"'like this but <colour>' {r10('composed', 'text+image')} (text alone {r10('composed', 'text')}, "
        f"image alone {r10('composed', 'image')}); zero-shot kind tags {report.tagging['ensemble']:.2f} accurate. "
        f"Full table: shelfsight eval --db {db} --queries {queries} --tags category"
    )


def run_demo(
    workdir: str | Path, port: int = 8501, ui: bool = True, minutes: float = 4.0, offline: bool = False
) -> int:
    workdir = Path(workdir)
    model = demo_model(workdir, minutes, offline)
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
    return subprocess.call([sys.executable, "-m", "shelfsight", "ui", "--db", str(db), "--port", str(port)])
