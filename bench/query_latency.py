"""Query latency and recall at scale: every fusion mode through the real SearchEngine, and HTTP.

Products are written straight into an embedded store (no images to embed): ``--n`` products with
image, text and early-fused ``--dim``-d vectors, a title and description (so the store builds BM25
words, as ingest does), a 1%-selective ``category`` and a 5%-selective ``department``.

How vectors are drawn (``--data``):
- ``clustered`` (default), like real CLIP embeddings: 200 centres are the query model's own
  embeddings of 200 product texts ("red leather tote"); a product's text vector is its centre
  plus noise (cosine about 0.9 to the centre), its image vector the same centre moved by one
  fixed "modality gap" plus noise. Products carry their centre's text as title.
- ``random``, the worst case for HNSW: every vector uniform on the sphere.

Queries are distinct texts ("red tote", "leather tote for travel"), embedded by the query model,
so no query is a cache hit unless the table says so. For each mode it prints p50/p95 ms for new
texts (embedding included) and for the same texts again (the engine's vector cache hit, so only
the engine and store), and recall@10 of the engine's page against the same query run by exact
(brute-force) search. Then ``shelfsight serve`` runs on the store and 1 and 16 HTTP clients send
new texts for ``--http-seconds`` each.

Run: python bench/query_latency.py [--n 100000] [--dim 512] [--model vit-b-32] [--data clustered]
     [--workdir DIR (reuses the model and a store built with the same settings)]
     [--quantization int8] [--on-disk-vectors] [--hnsw-m 16] [--hnsw-ef-construct 100] [--hnsw-ef 128]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shelfsight.search.batching import batch_query_texts, limit_torch_threads  # noqa: E402
from shelfsight.search.embedder import Embedder, normalize_rows  # noqa: E402
from shelfsight.search.engine import SearchEngine, SearchRequest  # noqa: E402
from shelfsight.search.records import point_id  # noqa: E402
from shelfsight.search.store.base import CollectionMeta, CollectionOptions, PointRecord  # noqa: E402
from shelfsight.search.store.edge import EdgeStore  # noqa: E402
from shelfsight.search.store.options import default_hnsw_ef  # noqa: E402
from shelfsight.train.model_init import init_model  # noqa: E402

COLOURS = "red blue green black white yellow purple pink grey brown navy beige".split()
MATERIALS = "leather canvas cotton wool denim suede linen steel ceramic bamboo".split()
KINDS = (
    "tote bag backpack wallet shoe sneaker boot sandal shirt t-shirt jacket coat hat cap scarf mug cup "
    "bottle umbrella lamp chair table vase clock watch belt glove sock dress skirt hoodie sweater jeans "
    "shorts towel pillow blanket candle notebook pen"
).split()
STYLES = "classic slim oversized vintage minimal sporty waterproof handmade organic travel".split()
CENTRES = 200
N_CATEGORIES, N_DEPARTMENTS = 100, 20  # 1% and 5% of the products each
COLLECTION = "products"


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return f"{os.cpu_count()} cores, {model}, {'/'.join(isa)}, load {os.getloadavg()[0]:.1f}"


def product_texts(rng: random.Random, n: int) -> list[str]:
    combos = list(itertools.product(COLOURS, MATERIALS, KINDS))
    return [" ".join(c) for c in rng.sample(combos, n)]


def query_texts(seed: int) -> Iterator[str]:
    """Distinct query texts, drawn without end: the words products use, in other combinations."""
    rng, seen = random.Random(seed), set()
    shapes = [
        lambda: f"{rng.choice(COLOURS)} {rng.choice(KINDS)}",
        lambda: f"{rng.choice(MATERIALS)} {rng.choice(KINDS)} for {rng.choice(STYLES)} days",
        lambda: f"{rng.choice(STYLES)} {rng.choice(COLOURS)} {rng.choice(MATERIALS)} {rng.choice(KINDS)}",
        lambda: f"{rng.choice(COLOURS)} {rng.choice(KINDS)} {rng.randint(1, 99999)}",
    ]
    while True:
        text = rng.choice(shapes)()
        if text not in seen:
            seen.add(text)
            yield text


@dataclass(frozen=True)
class Catalog:
    """The centres products are drawn around, and their texts."""

    texts: list[str]
    text_centres: np.ndarray
    image_centres: np.ndarray


def make_catalog(embedder: Embedder, dim: int, data: str) -> Catalog:
    rng = np.random.default_rng(1)
    texts = product_texts(random.Random(1), CENTRES)
    if data == "random":
        return Catalog(texts, np.zeros((CENTRES, dim)), np.zeros((CENTRES, dim)))
    text_centres = normalize_rows(embedder.encode_texts(texts).astype(np.float64))
    gap = rng.normal(size=dim)
    gap *= 0.8 / np.linalg.norm(gap)
    return Catalog(texts, text_centres, normalize_rows(text_centres + gap))


def draw_vectors(cat: Catalog, centre: np.ndarray, rng: np.random.Generator, data: str) -> dict[str, np.ndarray]:
    dim = cat.text_centres.shape[1]
    if data == "random":
        text, image = (normalize_rows(rng.normal(size=(len(centre), dim))) for _ in range(2))
    else:
        spread = 0.5 / np.sqrt(dim)  # noise of norm about 0.5: cosine about 0.9 to the centre
        text = normalize_rows(cat.text_centres[centre] + rng.normal(scale=spread, size=(len(centre), dim)))
        image = normalize_rows(cat.image_centres[centre] + rng.normal(scale=spread, size=(len(centre), dim)))
    return {"text": text, "image": image, "fused": normalize_rows(text + image)}


def build(store: EdgeStore, meta: CollectionMeta, cat: Catalog, n: int, data: str) -> dict[str, float]:
    store.create_collection(COLLECTION, meta)
    rng = np.random.default_rng(2)
    started = time.perf_counter()
    for start in range(0, n, 1000):
        ids = np.arange(start, min(n, start + 1000))
        centre = rng.integers(0, CENTRES, size=len(ids))
        vectors = draw_vectors(cat, centre, rng, data)
        store.upsert(
            COLLECTION,
            [
                _point(int(i), cat.texts[c], {k: v[j] for k, v in vectors.items() if k in meta.vectors})
                for j, (i, c) in enumerate(zip(ids, centre))
            ],
        )
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    store.optimize(COLLECTION)
    return {"upsert_s": upsert_s, "optimize_s": time.perf_counter() - started}


def _point(i: int, title: str, vectors: dict[str, np.ndarray]) -> PointRecord:
    payload = {
        "product_id": f"p{i}",
        "title": title,
        "description": f"A {title} from our range, item {i}.",
        "category": f"c{(i * 7919) % N_CATEGORIES}",
        "department": f"d{(i * 104729) % N_DEPARTMENTS}",
        "price": float(i % 200),
    }
    return PointRecord(point_id(f"p{i}"), vectors, payload)


class ExactStore:
    """The store, with every query answered by exact (brute-force) search: the recall reference."""

    def __init__(self, store: EdgeStore):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self._store.query(*args, **{**kwargs, "exact": True})


def modes(i: int) -> dict[str, SearchRequest]:
    """Each mode's request for the i-th query; filters change value from query to query."""
    return {
        "text vector only": SearchRequest(vectors=("text",)),
        "dbsf, the default": SearchRequest(),
        "rrf": SearchRequest(fusion="rrf"),
        "weighted": SearchRequest(fusion="weighted"),
        "early fusion": SearchRequest(fusion="early"),
        "dbsf + 5% filter": SearchRequest(filters=(f"department=d{i % N_DEPARTMENTS}",)),
        "dbsf + 1% filter": SearchRequest(filters=(f"category=c{i % N_CATEGORIES}",)),
        "text vector + 1% filter": SearchRequest(vectors=("text",), filters=(f"category=c{i % N_CATEGORIES}",)),
    }


def _ms(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


def time_modes(engine: SearchEngine, exact: SearchEngine, texts: Iterator[str], count: int) -> list[dict[str, Any]]:
    """Each mode's p50/p95 over ``count`` new texts, then over the same texts again (the engine's
    vector cache), then its recall against exact search. The passes run apart, as a server's
    queries come, so the exact scans of the recall reference never sit between timed queries
    (between them they flushed the CPU's caches: cached DBSF 5.5 against 3.6 ms at 100k)."""
    rows = []
    for name in modes(0):
        if name == "early fusion" and "fused" not in engine.meta.vectors:
            continue
        requests = [(next(texts), replace(modes(i)[name], limit=10)) for i in range(count)]
        new = [_timed(lambda t=text, r=request: engine.answer(t, None, r)) for text, request in requests]
        cached = [_timed(lambda t=text, r=request: engine.answer(t, None, r)) for text, request in requests]
        recall = [_recall(engine, exact, text, request) for text, request in requests]
        rows.append({"mode": name, "new": _ms(new), "cached": _ms(cached), "recall@10": float(np.mean(recall))})
        print(
            f"  {name:<26}{rows[-1]['new'][0]:>9.1f}{rows[-1]['new'][1]:>9.1f}"
            f"{rows[-1]['cached'][0]:>9.1f}{rows[-1]['cached'][1]:>9.1f}{rows[-1]['recall@10']:>10.3f}",
            flush=True,
        )
    return rows


def _recall(engine: SearchEngine, exact: SearchEngine, text: str, request: SearchRequest) -> float:
    truth = {h.id for h in exact.answer(text, None, request).hits}
    return len(truth & {h.id for h in engine.answer(text, None, request).hits}) / max(1, len(truth))


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def ef_sweep(store: EdgeStore, embedder: Embedder, texts: Iterator[str], count: int) -> dict[int, float]:
    """Recall@10 of the text vector alone at several search ``ef``: what the worst case needs."""
    from shelfsight.search.store.base import NearestQuery

    vectors = embedder.encode_texts([next(texts) for _ in range(count)])
    truth = [{p.id for p in store.query(COLLECTION, [NearestQuery(v, "text", 10)], exact=True)[0][0]} for v in vectors]
    out = {}
    meta = store.get_meta(COLLECTION)
    for ef in (64, 128, 256, 512, 1024):
        store._metas[COLLECTION] = replace(meta, options=replace(meta.options, hnsw_ef=ef))
        found = [{p.id for p in store.query(COLLECTION, [NearestQuery(v, "text", 10)])[0][0]} for v in vectors]
        out[ef] = float(np.mean([len(t & f) / 10 for t, f in zip(truth, found)]))
    store._metas[COLLECTION] = meta
    return out


def http_run(base: str, clients: int, seconds: float, texts: Iterator[str]) -> dict[str, float]:
    """``clients`` threads send new query texts one after another for ``seconds``."""
    import httpx

    lock, latencies, errors = threading.Lock(), [], [0]
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.monotonic() < deadline:
                with lock:
                    text = next(texts)
                started = time.perf_counter()
                ok = http.get("/search", params={"q": text, "limit": 10}).status_code == 200
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "clients": clients,
        "requests_per_s": len(latencies) / (time.monotonic() - started),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "errors": errors[0],
    }


def serve_and_measure(db: Path, seconds: float, texts: Iterator[str], serve_args: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.e2e.helpers import free_port, stop_process, wait_for_http

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shelfsight", "serve", "--db", str(db), "--port", str(port), *serve_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", proc, timeout=600)
        http_run(base, 4, 5, texts)  # warm-up: threads, first requests
        runs = [http_run(base, c, seconds, texts) for c in (1, 16)]
        mb = _memory_mb(proc.pid)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        return {
            "runs": runs,
            "serve_peak_rss_mb": mb["VmHWM"],
            "serve_anon_mb": mb["RssAnon"],
            "serve_file_mb": mb["RssFile"],
            "child_peak_rss_mb": sum(_memory_mb(int(c))["VmHWM"] for c in children),  # the query text process
        }
    finally:
        stop_process(proc)


def _memory_mb(pid: int) -> dict[str, float]:
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}


def store_meta(embedder: Embedder, dim: int, args: argparse.Namespace) -> CollectionMeta:
    options = CollectionOptions(
        on_disk_vectors=args.on_disk_vectors,
        quantization=args.quantization,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construct=args.hnsw_ef_construct,
        hnsw_ef=args.hnsw_ef,
        oversampling=args.oversampling,
    )
    return CollectionMeta(
        model=embedder.model_id,
        dimension=dim,
        model_source=embedder.model_source,
        vectors=("image", "text") if args.no_fused else ("image", "text", "fused"),
        fields={"category": "keyword", "department": "keyword", "price": "float"},
        fused_weight=None if args.no_fused else 0.5,
        options=options,
    )


def open_or_build(args: argparse.Namespace, embedder: Embedder, work: Path) -> tuple[EdgeStore, Path, dict]:
    meta = store_meta(embedder, embedder.dimension, args)
    search_time = ("hnsw_ef", "oversampling")  # not part of the build: applied when searching
    key = f"db-{args.n}-{args.data}{'-nofused' if args.no_fused else ''}-" + "-".join(
        f"{k}{v}" for k, v in sorted(meta.options.to_dict().items()) if v and k not in search_time
    )
    db = work / key
    store = EdgeStore(db)
    if (db / "built.json").is_file():
        built = store.get_meta(COLLECTION)
        # the search-time options of this run, over what the build recorded (the bench only)
        store._metas[COLLECTION] = replace(
            built, options=replace(built.options, hnsw_ef=args.hnsw_ef, oversampling=args.oversampling)
        )
        return store, db, json.loads((db / "built.json").read_text())
    store.drop_collection(COLLECTION) if store.collection_exists(COLLECTION) else None
    built = build(store, meta, make_catalog(embedder, embedder.dimension, args.data), args.n, args.data)
    built["build_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # mapped files included
    from shelfsight.search.relevance import calibrate

    calibrate(store, embedder, COLLECTION)
    (db / "built.json").write_text(json.dumps(built))
    return store, db, built


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, help="512 with vit-b-32; the tiny model has its own")
    parser.add_argument("--model", default="vit-b-32", help="a preset of shelfsight.train.model_init")
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--queries", type=int, default=100, help="new query texts per mode")
    parser.add_argument("--http-seconds", type=float, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quantization", choices=("int8",), default=None)
    parser.add_argument("--fp32-queries", action="store_true", help="query texts through fp32 (serve's flag)")
    parser.add_argument("--no-fused", action="store_true", help="no early-fused vector (as ingest's default)")
    parser.add_argument("--on-disk-vectors", action="store_true")
    parser.add_argument("--oversampling", type=float, default=None)
    parser.add_argument("--hnsw-m", type=int, default=None)
    parser.add_argument("--hnsw-ef-construct", type=int, default=None)
    parser.add_argument("--hnsw-ef", type=int, default=None)
    parser.add_argument(
        "--acorn-max-selectivity", type=float, default=None, help="override the store's (0: ACORN off, to compare)"
    )
    parser.add_argument("--ef-sweep", action="store_true", help="recall of the text vector at several search ef")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.acorn_max_selectivity is not None:
        import shelfsight.search.store.edge as edge

        edge.ACORN_MAX_SELECTIVITY = args.acorn_max_selectivity
    work = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsight-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"model-{args.model}"
    if not (model_dir / "config.json").is_file():
        init_model(args.model, model_dir)
    embedder = Embedder(str(model_dir))
    print(f"machine: {machine()}; torch threads {limit_torch_threads()} (as serve sets them)", flush=True)
    store, db, built = open_or_build(args, embedder, work)
    options = store.get_meta(COLLECTION).options
    print(
        f"{args.n} products x {embedder.dimension}-d ({args.data}), options {options}, "
        f"search ef {options.hnsw_ef or default_hnsw_ef(args.n)}: "
        f"upsert {built['upsert_s']:.1f} s, optimize {built['optimize_s']:.1f} s, "
        f"build peak RSS {built['build_peak_rss_mb']:.0f} MB",
        flush=True,
    )
    texts = query_texts(seed=args.n)
    embed = [_timed(lambda: embedder.encode_texts([next(texts)])) for _ in range(args.queries)]
    print(f"embed one new query text, fp32: p50 {_ms(embed)[0]:.1f} ms, p95 {_ms(embed)[1]:.1f} ms")
    print(f"  {'mode (ms)':<26}{'new p50':>9}{'p95':>9}{'cached':>9}{'p95':>9}{'recall@10':>10}")
    engine = SearchEngine(store, embedder, COLLECTION)
    print(f"query texts as serve embeds them: {batch_query_texts(engine, not args.fp32_queries)}")
    exact = SearchEngine(ExactStore(store), embedder, COLLECTION)  # type: ignore[arg-type]
    exact.encode_query_texts = engine.encode_query_texts  # the same query vectors
    rows = time_modes(engine, exact, texts, args.queries)
    sweep = ef_sweep(store, embedder, texts, args.queries) if args.ef_sweep else {}
    if sweep:
        print("text vector recall@10 by search ef: " + ", ".join(f"{k}: {v:.3f}" for k, v in sweep.items()))
    store.close()
    if args.http_seconds <= 0:
        return
    http = {}
    for label, serve_args in (("query texts in a child process", []), ("in the server", ["--no-text-process"])):
        http[label] = serve_and_measure(db, args.http_seconds, texts, serve_args)
        for r in http[label]["runs"]:
            print(
                f"HTTP, {label}, {r['clients']:>2} clients: {r['requests_per_s']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}"
            )
        print(
            f"serve peak RSS {http[label]['serve_peak_rss_mb']:.0f} MB (at the end: {http[label]['serve_anon_mb']:.0f} MB "
            f"anonymous, {http[label]['serve_file_mb']:.0f} MB file-backed); its child's peak "
            f"{http[label]['child_peak_rss_mb']:.0f} MB"
        )
    print(f"machine at the end: {machine()}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "built": built, "modes": rows, "ef": sweep, "http": http})
        )


if __name__ == "__main__":
    main()
