"""Ingest throughput against the model's own speed, from one run on one machine.

Prints, side by side: the vision tower's pure forward on ready tensors (fp32 and half: fp16 on a
GPU, bf16 on a CPU), the text tower, preprocessing alone (the model's own processor on one thread,
and the read stage's worker processes), end-to-end ``ingest_catalog`` (texts, hashing, store writes,
index build and calibration included) for each decode mode, and the ratio of ingest to the pure fp32
forward (the best of the batch sizes tried: 32, and on a CPU also the 16 its ingest runs), and
to the fp32 forward measured just before and after each ingest (the machine's speed may drift
between the two). The
ingests keep an early-fused vector (``--fused-weight 0.5``, as the demo does): three 512-d vectors a
product, like the store-only upsert row. Also the fast image path's least cosine to the model's own
processor, per decode mode.

Random ViT-B/32-shape weights: the compute is real, the vectors meaningless. Every product and
every forward batch is distinct. Examples::

    python bench/ingest_throughput.py --device cuda --image-size 1000          # GPU machine
    python bench/ingest_throughput.py --device cpu --image-size 1000 --n 160   # 2 cores

To estimate a CPU without AVX-512 (nor VNNI, nor native bf16) on one that has them, hold every
kernel library to AVX2 (the machine line then says "AVX2")::

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \
    MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/ingest_throughput.py --device cpu --no-native-bf16
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from shelfsight.data.generate import write_catalog
from shelfsight.ingest import pipeline
from shelfsight.ingest.catalog import read_catalog
from shelfsight.ingest.gpu_decode import decode_jpegs, gpu_decoding_available
from shelfsight.ingest.pipeline import (
    CPU_BATCH,
    CPU_FORWARD_BATCH,
    GPU_BATCH,
    IngestOptions,
    ingest_catalog,
    usable_cores,
)
from shelfsight.ingest.read_stage import ReadContext, ReadJob, ReadPool, text_tokenizer
from shelfsight.search import precision
from shelfsight.search.embedder import Embedder
from shelfsight.search.images import ImagePolicy, decode_image
from shelfsight.search.pixels import prepare_pixels
from shelfsight.search.precision import cpu_runs_bf16, inference
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.text_int8 import Int8TextEncoder, product_text_encoder
from shelfsight.train.model_init import init_model


def machine(device: str) -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    bf16 = "native bf16" if cpu_runs_bf16() else "no native bf16"
    return (
        f"{cpu} ({usable_cores()} usable cores, {bf16}, torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()})"
        f"{gpu}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"
    )


def _part(args: tuple[Path, int, int, int]) -> Path:
    out, n, seed, size = args
    return write_catalog(out, n=n, seed=seed, image_size=size)


def make_catalog(out: Path, n: int, image_size: int, workers: int) -> Path:
    """``n`` distinct products with ``image_size``-px JPEGs, written by ``workers`` processes."""
    csv_path = out / "catalog.csv"
    if csv_path.exists():
        return csv_path
    parts = max(1, min(workers, n // 32))
    jobs = [(out / f"part{k}", n // parts + (k < n % parts), 100 + k, image_size) for k in range(parts)]
    with ProcessPoolExecutor(parts) as pool:
        written = list(pool.map(_part, jobs))
    rows: list[dict[str, str]] = []
    for k, path in enumerate(written):
        with path.open() as fh:
            rows += [dict(r, image=f"part{k}/{r['image']}") for r in csv.DictReader(fh)]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@functools.cache
def model_in(path: str, device: str | None, precision: str) -> Embedder:
    """The model with its weights stored in ``precision``, loaded once for the run's forwards."""
    return Embedder(path, device=device, precision=precision)


def forward_rate(embedder: Embedder, precision: str, batch: int, batches: int, lean: bool = False) -> float:
    """Images/s of the vision tower alone on distinct ready tensors already on the device, with the
    model's weights stored in ``precision`` as ingest runs it (``model_in``: one model a precision):
    transformers' ``get_image_features``, or with ``lean`` the tower ingest runs (search/towers.py,
    packed on a CPU: search/packed_towers.py)."""
    embedder = model_in(embedder.model_path, embedder.device, precision)
    device = embedder.torch_device
    inner: Any = embedder.model[0].model
    vision = embedder.tower("vision") if lean else None
    if vision is not None:
        inner = SimpleNamespace(get_image_features=vision)
    size = embedder.pixel_spec.crop  # type: ignore[union-attr]
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn((batch, 3, *size), generator=gen, device=device) for _ in range(batches + 1)]
    with inference(precision, device):
        inner.get_image_features(pixel_values=inputs[-1])  # warm-up (kernels, autotuning)
        _sync(device)
        started = time.perf_counter()
        for x in inputs[:batches]:
            inner.get_image_features(pixel_values=x)
        _sync(device)
    return batch * batches / (time.perf_counter() - started)


def token_ids(embedder: Embedder, texts: list[str]) -> tuple[list[np.ndarray], float]:
    """The texts tokenized as the read stage's workers do (one thread here), and texts/s."""
    assert embedder.tokenizer_json is not None
    tokenizer = text_tokenizer(embedder.tokenizer_json, embedder.max_tokens)
    started = time.perf_counter()
    ids = [np.asarray(tokenizer.encode(t).ids, dtype=np.int32) for t in texts]
    return ids, len(texts) / (time.perf_counter() - started)


def text_rates(rates: dict[str, float], results: dict[str, Any], embedder: Embedder, texts: list[str]) -> None:
    """The tokenizer and the text tower as ingest runs them (token ids from the workers); for a
    model without a fast tokenizer, whose texts ingest embeds as strings, ``encode_texts``."""
    if embedder.tokenizer_json is None:
        embedder.encode_texts(texts[:8])
        started = time.perf_counter()
        embedder.encode_texts(texts)
        rates[f"texts, {embedder.precision}, encode_texts (no fast tokenizer)"] = len(texts) / (
            time.perf_counter() - started
        )
        results["int8_texts"] = "no (no fast tokenizer)"
        return
    ids, rates["tokenizer alone, 1 thread (the read stage's)"] = token_ids(embedder, texts)
    rates[f"text tower, {embedder.precision}, token ids in"] = text_rate(embedder, ids)
    int8, results["int8_texts"] = product_text_encoder(embedder, texts)
    if int8 is not None:
        rates["text tower, int8 (ingest's choice here)"] = text_rate(int8, ids)


def text_rate(encoder: Embedder | Int8TextEncoder, ids: list[np.ndarray]) -> float:
    """Texts/s of the text tower as ingest runs it: token ids in, unit vectors back on the host."""
    encoder.encode_token_ids(ids[:8])
    started = time.perf_counter()
    encoder.encode_token_ids(ids)
    return len(ids) / (time.perf_counter() - started)


def processor_rate(embedder: Embedder, images: list[Any]) -> float:
    """The model's own image processor on decoded images, one thread."""
    processor = embedder.model[0].processor.image_processor
    started = time.perf_counter()
    for image in images:
        processor(images=[image], return_tensors="pt")
    return len(images) / (time.perf_counter() - started)


def read_stage_rate(catalog: Path, embedder: Embedder, workers: int, batch: int, gpu_jpeg: bool) -> tuple[float, float]:
    """Rows/s of the read stage alone (read, hash, decode, resize in worker processes), no model;
    and a worker's milliseconds per row (rows/s falls short of workers / that when the workers
    wait on the process that takes their rows, or share cores)."""
    parsed = read_catalog(catalog)
    ctx = ReadContext(parsed.base_dir, ImagePolicy(), "bench", None, embedder.pixel_spec, gpu_jpeg)
    rows = parsed.rows
    jobs = (ReadJob(rows[i : i + batch], [None] * len(rows[i : i + batch])) for i in range(0, len(rows), batch))
    started = time.perf_counter()
    count, seconds = 0, 0.0
    for items in ReadPool(ctx, workers, rows=batch).read(jobs):
        count, seconds = count + len(items), seconds + sum(item.seconds for item in items)
    return count / (time.perf_counter() - started), 1000 * seconds / max(1, count)


def fast_path_cosine(embedder: Embedder, catalog: Path, count: int, gpu: bool) -> float:
    """Least cosine, per image, of the fast path (Pillow draft or nvJPEG) to the model's own processor."""
    parsed = read_catalog(catalog)
    data = [(parsed.base_dir / r.product.image).read_bytes() for r in parsed.rows[:count]]  # type: ignore[operator]
    spec = embedder.pixel_spec
    assert spec is not None
    if gpu:
        pixels, failed = decode_jpegs(data, spec, embedder.torch_device)
        assert not failed, f"nvJPEG failed on {failed}"
        fast = embedder.encode_pixels(pixels)
    else:
        fast = embedder.encode_pixels(np.stack([prepare_pixels(d, spec) for d in data]))
    reference = embedder.encode_images([decode_image(d) for d in data])
    return float((fast * reference).sum(axis=1).min())


def upsert_rate(embedder: Embedder, catalog: Path, work: Path, batch: int, through_process: bool) -> float:
    """Points/s of the store's upserts alone: the catalog's payloads with random unit vectors
    (image, text, fused) and their BM25 words made beforehand, as the read stage makes them, in
    the ingest's batches, into a fresh embedded store; in this process, or (``through_process``)
    through the ingest's write process, pipe and pickling included."""
    from shelfsight.ingest.pipeline import ensure_collection
    from shelfsight.ingest.write_process import WriteProcess

    parsed = read_catalog(catalog)
    root = work / f"db-upsert-{time.monotonic_ns()}"
    store = EdgeStore(root)
    try:
        meta = ensure_collection(store, embedder, "products", parsed.fields, 0.5, False)
        points = random_points(parsed, meta)
        with contextlib.ExitStack() as stack:
            target: Any = store
            if through_process:
                store.release("products")
                target = stack.enter_context(WriteProcess(store.root, "products"))
            target.retrieve("products", [])  # the write process starts in the background: wait for it
            started = time.perf_counter()
            for i in range(0, len(points), batch):
                target.upsert("products", points[i : i + batch])
            if through_process:
                target.settle()  # the last batch has landed
            elapsed = time.perf_counter() - started
        return len(points) / elapsed
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


def random_points(parsed: Any, meta: Any) -> list[Any]:
    """The catalog's products as points with random unit vectors and their BM25 words."""
    from shelfsight.search.indexing import content_hash, product_payload
    from shelfsight.search.lexical import bm25_document, product_words
    from shelfsight.search.records import point_id
    from shelfsight.search.store.base import PointRecord

    rng = np.random.default_rng(0)
    points = []
    for row in parsed.rows:
        draws = {n: rng.standard_normal(meta.dimension).astype(np.float32) for n in meta.vectors}
        vectors = {n: v / np.linalg.norm(v) for n, v in draws.items()}
        payload = product_payload(row.product, content_hash("m", row.product.text, None, 0.5), parsed.base_dir)
        words = bm25_document(product_words(payload, meta), meta.bm25)
        points.append(PointRecord(point_id(row.product.id), vectors, payload, words))
    return points


def ingest_rate(catalog: Path, embedder: Embedder, work: Path, decode: str, workers: int | None) -> dict[str, Any]:
    root = work / f"db-{catalog.parent.name}-{decode}-{time.monotonic_ns()}"
    store = EdgeStore(root)
    marks: list[tuple[float, int]] = []  # (time, rows embedded so far) after each batch
    try:
        report = ingest_catalog(
            catalog,
            store,
            embedder,
            IngestOptions(decode=decode, workers=workers, fused_weight=0.5),
            on_progress=lambda rows: marks.append((time.perf_counter(), rows + (marks[-1][1] if marks else 0))),
        )
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)  # the stores are measured, not kept
    once = report.stage_seconds.get("finish", 0.0) + report.stage_seconds.get("calibrate", 0.0)
    return {
        "items": report.ingested,
        "errors": [e.to_dict() for e in report.errors[:3]],
        "items_per_s": report.ingested / report.seconds,
        # without the once-per-run index build and calibration, which do not grow with the GPU's speed
        "pipeline_items_per_s": report.ingested / (report.seconds - once),
        "steady_items_per_s": steady_rate(marks),
        "stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()},
        "seconds": round(report.seconds, 2),
        "text_tower": report.text_tower,
    }


def ingest_forward_batches(on_gpu: bool) -> tuple[int, int]:
    """The batch the ingest's towers run (``GPU_BATCH``, or ``CPU_FORWARD_BATCH`` on a CPU), and
    how many of them a forward measurement times."""
    return (GPU_BATCH, 12) if on_gpu else (CPU_FORWARD_BATCH, 96 // CPU_FORWARD_BATCH)


def ingest_beside_forward(
    catalog: Path, embedder: Embedder, work: Path, decode: str, around: dict[str, float], key: str
) -> dict[str, Any]:
    """``ingest_rate``, with the fp32 forward (at the batch the ingest's towers run) measured just
    before and just after it; ``around[key]`` gets their mean. This machine's speed can drift
    between the start of a run and its ingests (the 2-core machine's bf16 forward measured 69 to 89
    images/s in one session), so this ratio compares like with like."""
    batch, batches = ingest_forward_batches(embedder.torch_device.startswith("cuda"))
    before = forward_rate(embedder, "fp32", batch, batches)
    run = ingest_rate(catalog, embedder, work, decode, None)
    around[key] = (before + forward_rate(embedder, "fp32", batch, batches)) / 2
    return run


def steady_rate(marks: list[tuple[float, int]]) -> float:
    """Rows/s between the batches that pass a quarter and three quarters of the rows: the rate a
    catalog of any length runs at once the pipeline is full, with neither the start (nor the
    batches read ahead during it) nor the drain at the end counted. NaN for too few batches."""
    if not marks:
        return float("nan")
    total = marks[-1][1]
    quarter = next(m for m in marks if m[1] >= total / 4)
    three_quarters = next(m for m in marks if m[1] >= 3 * total / 4)
    if three_quarters[0] <= quarter[0]:
        return float("nan")
    return (three_quarters[1] - quarter[1]) / (three_quarters[0] - quarter[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=1000)
    parser.add_argument(
        "--n", type=int, default=None, help="products per catalog (default 4096 on a GPU, 480 on a CPU)"
    )
    parser.add_argument("--preset", default="vit-b-32")
    parser.add_argument("--workdir", type=Path, default=None, help="keep and reuse the model and catalogs here")
    parser.add_argument("--workers", type=int, default=None, help="read-stage processes (default: usable cores)")
    parser.add_argument("--also-224", action="store_true", help="also ingest a catalog of 224-px JPEGs")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="only the pure forward and the ingests (for a large --n: end to end at a catalog's size)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after the figures, profile one more ingest (the model's process, main thread) into this file",
    )
    parser.add_argument(
        "--no-native-bf16",
        action="store_true",
        help="act as a CPU without native bf16 (auto then keeps images in fp32), to see that case here",
    )
    args = parser.parse_args()
    if args.no_native_bf16:
        precision.cpu_runs_bf16 = lambda: False  # type: ignore[assignment]
    on_gpu = args.device.startswith("cuda")
    n = args.n or (4096 if on_gpu else 480)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsight-ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    workers = args.workers or usable_cores()
    results: dict[str, Any] = {"machine": machine(args.device), "n": n, "image_size": args.image_size}
    if args.no_native_bf16:
        results["machine"] += " (acting as a CPU without native bf16: --no-native-bf16)"
    print(results["machine"], flush=True)

    model = work / f"model-{args.preset}"
    if not (model / "config.json").exists():
        init_model(args.preset, model)
    embedder = Embedder(str(model), device=args.device, batch_size=GPU_BATCH if on_gpu else CPU_FORWARD_BATCH)
    results["precision_auto"] = embedder.precision
    catalogs = {args.image_size: make_catalog(work / f"catalog-{args.image_size}-{n}", n, args.image_size, workers)}
    if args.also_224 and args.image_size != 224:
        catalogs[224] = make_catalog(work / f"catalog-224-{n}", n, 224, workers)
    measure(results, embedder, catalogs, work, workers, args.ingest_only)
    results["tower_kernels"] = embedder.tower_kernels
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.profile:
        decode = "gpu" if gpu_decoding_available(embedder.torch_device) else "cpu"
        profile_ingest(next(iter(catalogs.values())), embedder, work, decode, args.profile)


def profile_ingest(catalog: Path, embedder: Embedder, work: Path, decode: str, out: Path) -> None:
    """One more ingest under cProfile (the thread that runs the model: the loop, decoding on the
    GPU, the towers' launches); the top functions by own time and by cumulative time go to ``out``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run = ingest_rate(catalog, embedder, work, decode, None)
    profiler.disable()
    text = io.StringIO()
    text.write(f"ingest of {catalog}, decode {decode} (timed under the profiler: slower): {run}\n\n")
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(45)
    out.write_text(text.getvalue())
    print(f"profile of one more ingest (decode {decode}) written to {out}", flush=True)


def measure(
    results: dict[str, Any],
    embedder: Embedder,
    catalogs: dict[int, Path],
    work: Path,
    workers: int,
    ingest_only: bool = False,
) -> None:
    on_gpu = embedder.torch_device.startswith("cuda")
    half = "fp16" if on_gpu else "bf16"
    best = forward_rates(results.setdefault("rates", {}), embedder, on_gpu)
    size, catalog = next(iter(catalogs.items()))
    decodes = ["cpu"] + (["gpu"] if gpu_decoding_available(embedder.torch_device) else [])
    if not ingest_only:
        component_rates(results, embedder, catalog, work, workers, decodes)
    ingests = results.setdefault("ingest", {})
    for px, cat in catalogs.items():
        for decode in decodes:
            key = f"ingest {px}-px, decode {decode}"
            try:
                ingests[key] = ingest_beside_forward(cat, embedder, work, decode, results.setdefault("around", {}), key)
            except Exception as exc:  # one failed mode must not lose the others' figures
                print(f"{key} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(key, ingests[key], flush=True)
    if not ingest_only and ingests:
        other_text_tower(ingests, embedder, catalog, work, results["int8_texts"], size)
    if not ingest_only and workers > 2:  # one core left to the model's process (its threads hold the GIL)
        key = f"ingest {size}-px, decode cpu, {workers - 1} workers"
        ingests[key] = ingest_rate(catalog, embedder, work, "cpu", workers - 1)
        print(key, ingests[key], flush=True)
    results["ratio"] = {k: v["items_per_s"] / best["fp32"] for k, v in ingests.items()}
    results["ratio_around"] = {
        k: ingests[k]["items_per_s"] / rate for k, rate in results["around"].items() if k in ingests
    }
    results["ratio_half"] = {k: v["items_per_s"] / best[half] for k, v in ingests.items()}


def other_text_tower(
    ingests: dict[str, Any], embedder: Embedder, catalog: Path, work: Path, int8: str, size: int
) -> None:
    """The first catalog ingested again with product texts in the tower the first ingest did not
    take: the model's own precision after int8, or int8 (where it keeps fp32's vectors) after a
    catalog too small for it (``pipeline.INT8_MIN_ROWS``)."""
    took = next(iter(ingests.values()))["text_tower"]
    if took.startswith("int8"):
        own = Embedder(embedder.model_path, device=embedder.device, precision=embedder.precision)
        key = f"ingest {size}-px, decode cpu, texts {own.precision}"
        ingests[key] = ingest_rate(catalog, own, work, "cpu", None)
    elif int8.startswith("int8"):
        key = f"ingest {size}-px, decode cpu, texts int8"
        least = pipeline.INT8_MIN_ROWS
        pipeline.INT8_MIN_ROWS = dict.fromkeys(least, 0)  # any catalog size
        try:
            ingests[key] = ingest_rate(catalog, embedder, work, "cpu", None)
        finally:
            pipeline.INT8_MIN_ROWS = least
    else:
        return
    print(key, ingests[key], flush=True)


def forward_rates(rates: dict[str, float], embedder: Embedder, on_gpu: bool) -> dict[str, float]:
    """The vision tower alone, fp32 and half, on ready tensors: transformers' forward, whose best
    rate of each the ingests are compared with, and the tower ingest runs. A CPU without native bf16
    emulates it about 7x slower than fp32 (2-core AVX2 EPYC: 1.8 against 12.8 images/s), so there
    one batch shows it, and the minutes more batches took stay out of the run."""
    half = "fp16" if on_gpu else "bf16"
    kinds = ("fp32", half) if on_gpu or precision.cpu_runs_bf16() else ("fp32",)  # --no-native-bf16 too
    best: dict[str, float] = {}
    ingest_batch, ingest_batches = ingest_forward_batches(on_gpu)
    for batch, batches in [(ingest_batch, ingest_batches)] if on_gpu else [(32, 3), (ingest_batch, ingest_batches)]:
        for kind in kinds:
            rate = rates[f"forward {kind}, batches of {batch}"] = forward_rate(embedder, kind, batch, batches)
            best[kind] = max(best.get(kind, 0.0), rate)
    for kind in kinds:  # the ratios stay against transformers' forward
        rates[f"forward {kind}, batches of {ingest_batch}, the tower ingest runs"] = forward_rate(
            embedder, kind, ingest_batch, ingest_batches, lean=True
        )
    if half not in kinds:
        best[half] = rates[f"forward {half}, one batch of {ingest_batch} (not native)"] = forward_rate(
            embedder, half, ingest_batch, 1
        )
    print(f"forward: best {best['fp32']:.1f} fp32, {best[half]:.1f} {half} images/s", flush=True)
    return best


def component_rates(
    results: dict[str, Any], embedder: Embedder, catalog: Path, work: Path, workers: int, decodes: list[str]
) -> None:
    """Each stage alone: the tokenizer and text tower, the model's processor, store upserts, the
    read stage; and the fast paths' least cosine to the model's processor."""
    rates = results["rates"]
    batch = GPU_BATCH if embedder.torch_device.startswith("cuda") else CPU_BATCH  # the ingest's batches
    parsed = read_catalog(catalog)
    text_rates(rates, results, embedder, [r.product.text for r in parsed.rows[:1024]])
    sample = [decode_image((parsed.base_dir / r.product.image).read_bytes()) for r in parsed.rows[:64]]  # type: ignore[operator]
    rates["model's processor, 1 thread"] = processor_rate(embedder, sample)
    for through_process in (False, True):
        where = "write process" if through_process else "this process"
        rates[f"store upserts alone, {where}"] = upsert_rate(embedder, catalog, work, batch, through_process)
    rates[f"read stage, {workers} processes, Pillow"], results["read_worker_ms_per_row"] = read_stage_rate(
        catalog, embedder, workers, batch, False
    )
    results["cosine"] = {}
    for d in decodes:
        try:
            results["cosine"][d] = fast_path_cosine(embedder, catalog, 32, d == "gpu")
        except Exception as exc:
            print(f"fast path cosine ({d}) failed: {type(exc).__name__}: {exc}", flush=True)
    print(f"fast path least cosine to the model's processor: {results['cosine']}", flush=True)


def report(results: dict[str, Any]) -> None:
    print(f"\n{results['machine']}\n{results['n']} products, auto precision {results['precision_auto']}")
    print(f"the towers' products: {results['tower_kernels'] or 'as torch runs them'}")
    print(f"int8 text tower, checked alone: {results.get('int8_texts', 'not measured')}")
    for what, run in results["ingest"].items():
        print(f"{what}: product texts in {run['text_tower']}")
    print()
    print(f"| {'what':<44} | {'items/s':>9} |\n|{'-' * 46}|{'-' * 11}|")
    for what, rate in results["rates"].items():
        print(f"| {what:<44} | {rate:>9.1f} |")
    for what, run in results["ingest"].items():
        print(f"| {what:<44} | {run['items_per_s']:>9.1f} |")
        print(f"| {what + ' (no index build/calibrate)':<44} | {run['pipeline_items_per_s']:>9.1f} |")
        print(f"| {what + ' (steady: rows 25% to 75%)':<44} | {run['steady_items_per_s']:>9.1f} |")
    print()
    for what, ratio in results["ratio"].items():
        half = results["ratio_half"][what]
        print(f"{what}: {ratio:.2f}x the best pure fp32 forward, {half:.2f}x the half one (measured as the table says)")
    for what, ratio in results.get("ratio_around", {}).items():
        rate = results["around"][what]
        print(f"{what}: {ratio:.2f}x the fp32 forward measured just before and after it ({rate:.1f} images/s)")
    for what, run in results["ingest"].items():
        print(f"{what}: stage seconds {run['stage_seconds']} of {run['seconds']} s")
    if "cosine" in results:
        print(f"fast path least cosine: {results['cosine']}")
        print(f"read stage alone: {results['read_worker_ms_per_row']:.2f} ms of a worker per row")


if __name__ == "__main__":
    main()
