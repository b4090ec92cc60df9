"""Query latency at 10k products: engine calls per fusion mode and the HTTP round trip, side by side.

Products are clustered random vectors (HNSW recall needs clustered data) written straight into an
embedded store; queries go through the real SearchEngine and the tiny CLIP model, so the figures
include query embedding. Run: python bench/query_latency.py [--n 10000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shelfsight.search.embedder import Embedder, normalize_rows  # noqa: E402
from shelfsight.search.engine import SearchEngine  # noqa: E402
from shelfsight.search.records import point_id  # noqa: E402
from shelfsight.search.store.base import CollectionMeta, PointRecord  # noqa: E402
from shelfsight.search.store.edge import EdgeStore  # noqa: E402
from shelfsight.train.model_init import init_model  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shelfsight-bench-"))
    embedder = Embedder(str(init_model("tiny", tmp / "tiny")))
    dim = embedder.dimension
    rng = np.random.default_rng(0)
    centers = normalize_rows(rng.normal(size=(50, dim)))
    store = EdgeStore(tmp / "db")
    meta = CollectionMeta(
        model=embedder.model_id,
        dimension=dim,
        model_source=embedder.model_source,
        vectors=("image", "text", "fused"),
        fields={"category": "keyword", "price": "float"},
        fused_weight=0.5,
    )
    store.create_collection("products", meta)
    started = time.perf_counter()
    for start in range(0, args.n, 1000):
        batch = []
        for i in range(start, min(args.n, start + 1000)):
            c = centers[i % 50]
            vec = {k: normalize_rows((c + 0.3 * rng.normal(size=dim))[None])[0] for k in ("image", "text")}
            vec["fused"] = normalize_rows((vec["image"] + vec["text"])[None])[0]
            payload = {
                "product_id": f"p{i}",
                "title": f"product {i}",
                "category": f"c{i % 20}",
                "price": float(i % 200),
            }
            batch.append(PointRecord(point_id(f"p{i}"), vec, payload))
        store.upsert("products", batch)
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    store.optimize("products")
    print(f"{args.n} products: upsert {upsert_s:.1f}s, optimize {time.perf_counter() - started:.1f}s")
    engine = SearchEngine(store, embedder, "products")
    embed_ms = timed(lambda: embedder.encode_texts(["red leather bag"]), args.repeats)
    print(f"{'case':<34}{'p50 ms':>9}{'p95 ms':>9}")
    print(f"{'embed one query text':<34}{embed_ms[0]:>9.2f}{embed_ms[1]:>9.2f}")
    cases = {
        "text -> text vector": dict(vectors=["text"]),
        "text -> image+text, rrf": dict(fusion_method="rrf"),
        "text -> image+text, dbsf": dict(fusion_method="dbsf"),
        "text -> image+text, weighted": dict(fusion_method="weighted"),
        "text -> fused (early)": dict(fusion_method="early"),
        "rrf + filter category (5%)": dict(fusion_method="rrf", filters=["category=c3"]),
    }
    for name, kw in cases.items():
        p50, p95 = timed(lambda kw=kw: engine.search("red leather bag", limit=10, **kw), args.repeats)
        print(f"{name:<34}{p50:>9.2f}{p95:>9.2f}")
    store.close()

    import httpx

    port = 8765
    proc = subprocess.Popen(
        [sys.executable, "-m", "shelfsight", "serve", "--db", str(tmp / "db"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        for _ in range(200):
            try:
                client.get("/health")
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        p50, p95 = timed(
            lambda: client.get("/search", params={"q": "red leather bag"}).raise_for_status(), args.repeats
        )
        print(f"{'HTTP GET /search (rrf), loopback':<34}{p50:>9.2f}{p95:>9.2f}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
