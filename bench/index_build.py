"""The index build that ends an ingest into the embedded store, with and without the HNSW links
per payload value (``--hnsw-payload-m``), side by side in one run.

Each variant gets a fresh store holding the collection an ingest of the benchmark catalog makes:
image, text and early-fused 512-d vectors, BM25 words, keyword indexes on category, type, color,
pattern and brand, a float index on price, full-text indexes on title and description. Products
come from the demo's generator (``data/generate.py``), without images. Their vectors are
clustered as CLIP's are: each (kind, colour) group has a centre per vector, and a product's
vectors are its centres plus noise, so filters cut across the clusters as they do in a shop.

Per variant it prints the upsert and the build (``optimize``), then recall@10 against exact
search and the median milliseconds of the same queries (the text vectors of ``--queries`` more
products drawn alike and held out of the store) through the store's own search path (its
search width, ACORN below 40% of the products, exact scans of small filtered sets): unfiltered,
and under filters that pass about 10%, 25%, 50% and 75% of the products (by price; a filter
passing more than 20,000 products and more than a tenth of them searches the graph, the others are
scanned exactly).

Run: python bench/index_build.py [--n 32768] [--payload-m 16,0] [--quantization int8] [--queries 50]
     [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from shelfsight.data.generate import description_of, draw_specs, title_of
from shelfsight.ingest.catalog import read_catalog
from shelfsight.search.indexing import content_hash, product_payload
from shelfsight.search.lexical import bm25_document, product_words
from shelfsight.search.records import point_id
from shelfsight.search.store.base import CollectionMeta, CollectionOptions, NearestQuery, PointRecord, Range
from shelfsight.search.store.edge import EdgeStore

DIM, NOISE, BATCH = 512, 0.6, 256
VECTORS = ("image", "text", "fused")
PRICE_SHARES = (0.10, 0.25, 0.50, 0.75)


def write_products(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` generated products as a catalog without images (the ingest benchmark's fields)."""
    import random

    rng = random.Random(seed)
    fields = ["id", "title", "description", "category", "type", "color", "pattern", "price", "brand"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for s in draw_specs(n, seed):
            row = [s.id, title_of(s), description_of(s, rng), s.kind, s.noun, s.color, s.pattern, f"{s.price:.2f}"]
            writer.writerow(row + [s.brand])
    return path


def clustered_points(parsed: Any, meta: CollectionMeta, seed: int = 0) -> list[PointRecord]:
    """The catalog's products as points: per vector, their (kind, colour) group's centre plus noise."""
    rng = np.random.default_rng(seed)
    centres: dict[tuple[str, str, str], np.ndarray] = {}
    points = []
    for row in parsed.rows:
        group = (row.product.fields.get("category", ""), row.product.fields.get("color", ""))
        vectors = {}
        for name in VECTORS:
            centre = centres.setdefault((*group, name), rng.standard_normal(DIM).astype(np.float32))
            v = centre + NOISE * np.linalg.norm(centre) / np.sqrt(DIM) * rng.standard_normal(DIM).astype(np.float32)
            vectors[name] = v / np.linalg.norm(v)
        payload = product_payload(row.product, content_hash("m", row.product.text, None, 0.5), parsed.base_dir)
        words = bm25_document(product_words(payload, meta), meta.bm25)
        points.append(PointRecord(point_id(row.product.id), vectors, payload, words))
    return points


def price_filters(rows: Any) -> dict[str, Range]:
    """Price ranges passing about each share of ``PRICE_SHARES`` of the catalog ``rows``."""
    prices = np.array([float(r.product.fields["price"]) for r in rows])
    return {f"price, {share:.0%} pass": Range("price", lte=float(np.quantile(prices, share))) for share in PRICE_SHARES}


def build(
    work: Path, meta: CollectionMeta, points: list[PointRecord], options: CollectionOptions
) -> tuple[EdgeStore, dict]:
    """A fresh store with the points upserted and optimized; its timings."""
    store = EdgeStore(work / f"db-payload-m-{options.hnsw_payload_m}")
    store.create_collection("products", replace(meta, options=options))
    started = time.perf_counter()
    for i in range(0, len(points), BATCH):
        store.upsert("products", points[i : i + BATCH])
    upserted = time.perf_counter()
    store.optimize("products")
    return store, {"upsert_s": upserted - started, "build_s": time.perf_counter() - upserted}


def query_figures(store: EdgeStore, queries: np.ndarray, filters: dict[str, Range]) -> dict[str, dict]:
    """Recall@10 against exact search and median ms, unfiltered and under each filter, text vector."""
    out: dict[str, dict] = {}
    for label, condition in {"no filter": None, **filters}.items():
        flt = (condition,) if condition is not None else ()
        recalls, seconds = [], []
        for vector in queries:
            lists = [NearestQuery(vector, "text", 10)]
            exact = {p.id for p in store.query("products", lists, flt, exact=True, with_payload=False)[0][0]}
            started = time.perf_counter()
            found = store.query("products", lists, flt, with_payload=False)[0][0]
            seconds.append(time.perf_counter() - started)
            recalls.append(len(exact & {p.id for p in found}) / max(1, len(exact)))
        out[label] = {"recall_at_10": float(np.mean(recalls)), "p50_ms": 1000 * statistics.median(seconds)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--payload-m", default="16,0", help="the variants, comma-separated (16 is the engine's own)")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--quantization", choices=("int8",), default=None, help="for every variant")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="index-build-", dir=args.workdir))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    parsed = read_catalog(write_products(work / "catalog.csv", args.n + args.queries))
    meta = template_meta(parsed)
    drawn = clustered_points(parsed, meta)
    points = drawn[: args.n]  # the rest are held out: their text vectors are the queries
    queries = np.stack([p.vectors["text"] for p in drawn[args.n :]])
    results: dict[str, Any] = {"machine": machine(), "n": args.n, "quantization": args.quantization, "variants": {}}
    layout = f", {args.quantization} quantization" if args.quantization else ""
    print(f"{results['machine']}; {args.n} products, three {DIM}-d vectors each{layout}, {len(queries)} queries")
    for payload_m in (int(v) for v in args.payload_m.split(",")):
        options = CollectionOptions(hnsw_payload_m=payload_m, quantization=args.quantization)
        store, timings = build(work, meta, points, options)
        try:
            figures = {**timings, "queries": query_figures(store, queries, price_filters(parsed.rows[: args.n]))}
        finally:
            store.close()
        results["variants"][str(payload_m)] = figures
        report(payload_m, figures)
    return results


def template_meta(parsed: Any) -> CollectionMeta:
    """The metadata an ingest gives this catalog (its fields; BM25 and full-text by default)."""
    return CollectionMeta(model="bench", dimension=DIM, vectors=VECTORS, fields=dict(parsed.fields), fused_weight=0.5)


def report(payload_m: int, figures: dict[str, Any]) -> None:
    print(f"\npayload_m {payload_m}: upsert {figures['upsert_s']:.1f} s, index build {figures['build_s']:.1f} s")
    for label, q in figures["queries"].items():
        print(f"  {label:<22} recall@10 {q['recall_at_10']:.3f}   p50 {q['p50_ms']:.2f} ms")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    load = os.getloadavg()[0]
    return f"{platform.node() or 'host'}: {cpu or platform.processor()}, {os.cpu_count()} CPUs, load {load:.1f}"


if __name__ == "__main__":
    main()
