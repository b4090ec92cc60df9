"""Ingest throughput (products/s) with the tiny and the full-size ViT-B/32 model shapes, side by side.

Random weights: the compute is real, the vectors meaningless. Run: python bench/ingest_throughput.py [--n 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shelfsight.data.generate import write_catalog  # noqa: E402
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog  # noqa: E402
from shelfsight.search.embedder import Embedder  # noqa: E402
from shelfsight.search.store.edge import EdgeStore  # noqa: E402
from shelfsight.train.model_init import init_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--presets", default="tiny,vit-b-32")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shelfsight-ingest-"))
    catalog = write_catalog(tmp / "catalog", n=args.n, seed=3)
    print(f"{'preset':<10}{'products':>9}{'seconds':>9}{'items/s':>9}")
    for preset in args.presets.split(","):
        embedder = Embedder(str(init_model(preset, tmp / preset)))
        embedder.encode_texts(["warm up"])  # load the model outside the timing
        store = EdgeStore(tmp / f"db-{preset}")
        report = ingest_catalog(catalog, store, embedder, IngestOptions(batch_size=32))
        store.close()
        print(f"{preset:<10}{report.ingested:>9}{report.seconds:>9.1f}{report.ingested / report.seconds:>9.1f}")


if __name__ == "__main__":
    main()
