"""The fast image path of ingest: pixels prepared in worker processes match the model's own
processor, a worker that dies fails only its row, and the precision is chosen and checked per machine."""

from __future__ import annotations

import io
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shelfsight.data.generate import SIZE, as_photo, draw_specs, render
from shelfsight.ingest import pipeline, read_stage
from shelfsight.ingest.catalog import Catalog
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.ingest.read_stage import CRASH_REASON, ReadContext
from shelfsight.search import pixels as pixels_module
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import BadInputError
from shelfsight.search.images import ImagePolicy, decode_image
from shelfsight.search.pixels import PixelSpec, prepare_pixels
from shelfsight.search.precision import inference, resolve_precision
from shelfsight.search.records import point_id
from shelfsight.train.model_init import init_model

FAST_PATH_MIN_COSINE = 0.995


def _photos(n: int) -> list[tuple[str, bytes]]:
    """Shop-like photos: 1000x1000 JPEGs, a 1200x800 one, an EXIF-rotated one, a PNG and a grey JPEG."""
    out = []
    for i, spec in enumerate(draw_specs(n, seed=11)):
        rng = random.Random(i)
        photo = as_photo(render(spec, rng), 1000, rng)
        buf = io.BytesIO()
        if i % 5 == 1:
            photo.resize((1200, 800)).save(buf, "JPEG", quality=90)
        elif i % 5 == 2:
            exif = Image.Exif()
            exif[0x0112] = 6  # rotated 90 degrees
            photo.resize((900, 600)).save(buf, "JPEG", quality=90, exif=exif)
        elif i % 5 == 3:
            photo.resize((640, 640)).save(buf, "PNG")
        elif i % 5 == 4:
            photo.convert("L").save(buf, "JPEG", quality=85)
        else:
            photo.save(buf, "JPEG", quality=88)
        out.append((f"photo{i}", buf.getvalue()))
    return out


def _min_fast_path_cosine(embedder: Embedder, photos: list[tuple[str, bytes]]) -> float:
    spec = embedder.pixel_spec
    assert spec is not None
    fast = embedder.encode_pixels(np.stack([prepare_pixels(data, spec, name=name) for name, data in photos]))
    reference = embedder.encode_images([decode_image(data, name=name) for name, data in photos])
    return float((fast * reference).sum(axis=1).min())


@pytest.fixture(scope="module")
def demo_shaped(tmp_path_factory) -> Embedder:
    """The demo model's shape and processor (96 px input), untrained; the trained one is checked when
    SHELFSIGHT_DEMO_MODEL names it (``shelfsight demo`` writes it under WORKDIR/models/demo)."""
    path = os.environ.get("SHELFSIGHT_DEMO_MODEL") or init_model("small", tmp_path_factory.mktemp("small") / "m")
    return Embedder(str(path), device="cpu", precision="fp32")


def test_fast_path_matches_the_models_own_processor_per_image(demo_shaped, embedder):
    photos = _photos(10)
    assert _min_fast_path_cosine(demo_shaped, photos) >= FAST_PATH_MIN_COSINE
    assert _min_fast_path_cosine(embedder, photos) >= FAST_PATH_MIN_COSINE


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (50, 40), (900, 650)])
@pytest.mark.parametrize("resizer", ["torch", "pillow"])
def test_without_draft_decoding_the_pixels_are_the_processors(size, resizer, monkeypatch):
    """A PNG is decoded whole, so the uint8 resize and crop give the processor's pixels: Pillow's
    resize (images over ``TORCH_RESIZE_MAX_PIXELS``, CPUs without torch's vector kernel) exactly,
    torch's uint8 kernel rounding as Pillow's does, nearly every value the same and none more than
    2 of 255 apart."""
    torch_calls = []
    if resizer == "pillow":
        monkeypatch.setattr(pixels_module, "TORCH_RESIZE_MAX_PIXELS", 0)
    elif pixels_module._torch_has_uint8_kernel():
        real = pixels_module._resize_uint8
        monkeypatch.setattr(pixels_module, "_resize_uint8", lambda *a: torch_calls.append(a[1:]) or real(*a))
    else:
        pytest.skip("torch has no vector uint8 resize on this CPU: Pillow resizes")
    processor = _tiny_processor()
    spec = PixelSpec.from_processor(processor)
    assert spec is not None
    image = as_photo(render(draw_specs(1, seed=3)[0], random.Random(0)), 900, random.Random(1)).resize(size)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    mine = prepare_pixels(buf.getvalue(), spec).astype(np.float32)
    theirs = processor(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    theirs = (theirs * np.array(spec.std) + np.array(spec.mean)) / spec.scale  # back to 0..255
    assert mine.shape == theirs.shape
    off = np.abs(mine - theirs)
    assert off.max() < (0.01 if resizer == "pillow" else 2.01) and (off < 0.01).mean() > 0.98
    assert len(torch_calls) == (resizer == "torch")  # each photo needs a resize to 64 px


def _tiny_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})


def test_a_worker_killed_on_one_row_fails_that_row_only(store, collection_name, embedder, catalog_dir, monkeypatch):
    """Workers are forked, so they run this test's patched reader: it kills its own process on one row."""
    victim = sorted(p.name for p in (catalog_dir / "images").iterdir())[5]
    real = read_stage.read_row

    def dies_on_victim(row, stored_hash, ctx):
        if row.product.image and row.product.image.endswith(victim):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(row, stored_hash, ctx)

    monkeypatch.setattr(read_stage, "read_row", dies_on_victim)
    options = IngestOptions(collection=collection_name, batch_size=4, workers=2, processes=True)
    report = ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options)
    assert [e.reason for e in report.errors] == [CRASH_REASON]
    assert report.errors[0].hint
    assert report.ingested == 47 and store.count(collection_name) == 47
    bad_id = report.errors[0].product_id
    assert victim.startswith(bad_id or "?")
    assert not store.retrieve(collection_name, [point_id(bad_id)])


def test_processes_and_threads_store_the_same_vectors(embedder, catalog_dir, tmp_path):
    from shelfsight.search.store.edge import EdgeStore

    vectors = []
    for processes in (True, False):
        store = EdgeStore(tmp_path / f"db-{processes}")
        try:
            options = IngestOptions(batch_size=8, workers=2, processes=processes, optimize=False)
            assert ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options).ingested == 48
            points = store.retrieve(
                "products", [point_id(f.stem) for f in (catalog_dir / "images").iterdir()], with_vectors=True
            )
            vectors.append({p.id: p.vectors["image"] for p in points})
        finally:
            store.close()
    assert vectors[0].keys() == vectors[1].keys() and len(vectors[0]) == 48
    assert all(np.allclose(vectors[0][k], vectors[1][k], atol=1e-6) for k in vectors[0])


def test_precision_is_chosen_per_device_and_refused_where_it_cannot_run():
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(BadInputError, match="fp16 runs only on a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(BadInputError, match="unknown precision"):
        Embedder("unused", precision="fp8")


def test_bf16_on_a_cpu_stays_close_to_fp32(tiny_model_dir):
    """bf16 runs on any CPU (slowly without native support); ``auto`` picks it only where it is native."""
    fp32 = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    bf16 = Embedder(str(tiny_model_dir), device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    texts = ["red leather bag", "blue striped shirt"]
    assert float((fp32.encode_texts(texts) * bf16.encode_texts(texts)).sum(axis=1).min()) > 0.98
    image = as_photo(render(draw_specs(1, seed=2)[0], random.Random(0)), SIZE, random.Random(0))
    assert float((fp32.encode_images([image]) * bf16.encode_images([image])).sum()) > 0.98


def test_towers_on_cuda_skip_cudnn_attention_and_leave_the_choice_as_it_was():
    """cuDNN's attention plans one shape at a time (17 ms each on an H200), and texts come in a
    new shape nearly every batch: the towers run without it on CUDA. The switch is
    process-wide in torch, so it comes back only when the last of overlapping towers is done,
    and the other kernels' switches are left alone."""
    import threading

    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    flash = torch.backends.cuda.flash_sdp_enabled()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        if first_in.wait(timeout=10):
            with inference("fp32", "cuda"):
                second_in.set()
                if first_out.wait(timeout=10):
                    seen.append(torch.backends.cuda.cudnn_sdp_enabled())  # the first has left; this one has not

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    try:
        with inference("fp32", "cuda"):
            assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.is_inference_mode_enabled()
            first_in.set()
            assert second_in.wait(timeout=10)
    finally:
        first_in.set()
        first_out.set()
        thread.join(timeout=10)
    assert seen == [False]
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    assert torch.backends.cuda.flash_sdp_enabled() == flash
    with inference("fp32", "cpu"):  # nothing to switch on a CPU
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_half_precision_stores_the_weights_in_half_and_a_failed_probe_reloads_fp32(tiny_model_dir, monkeypatch):
    """A half model keeps its weights in half (no cast per pass); where ``auto``'s half precision
    misses fp32 on the probes, the model is loaded again, so its vectors are fp32's exactly, not
    those of weights rounded to half and back."""
    import torch
    from shelfsight.search import embedder as embedder_module
    from shelfsight.search import precision

    bf16 = Embedder(str(tiny_model_dir), device="cpu", precision="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    monkeypatch.setattr(precision, "cpu_runs_bf16", lambda: True)
    monkeypatch.setattr(embedder_module, "MIN_COSINE", 1.01)
    auto = Embedder(str(tiny_model_dir), device="cpu")
    assert auto.precision == "fp32"
    assert {p.dtype for p in auto.model.parameters()} == {torch.float32}
    texts = ["red leather bag", "blue striped shirt"]
    fp32 = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    np.testing.assert_array_equal(auto.encode_texts(texts), fp32.encode_texts(texts))


def test_decode_gpu_without_a_gpu_is_refused_with_the_fix(embedder, catalog_dir, tmp_path):
    from shelfsight.search.store.edge import EdgeStore

    store = EdgeStore(tmp_path / "db")
    try:
        with pytest.raises(BadInputError, match="--decode gpu needs a CUDA GPU"):
            ingest_catalog(catalog_dir / "catalog.csv", store, embedder, IngestOptions(decode="gpu"))
    finally:
        store.close()


def test_texts_tokenized_by_the_readers_embed_as_the_model_does(embedder):
    """Workers tokenize with the model's tokenizer rebuilt from its JSON; the model's process only
    pads and runs the tower. Same vectors and the same truncation count as from strings."""
    texts = ["red leather bag", "striped " * 120, "Café crème — 20% off! 🛍️ size XL", "x"]
    ctx = ReadContext(
        Path("."), ImagePolicy(), "m", None, tokenizer_json=embedder.tokenizer_json, max_tokens=embedder.max_tokens
    )
    tokenized = [read_stage._tokenize(text, ctx) for text in texts]
    fast = embedder.encode_token_ids([t["text_ids"] for t in tokenized])
    reference = embedder._encode(texts)  # through sentence-transformers, not the towers
    assert float((fast * reference).sum(axis=1).min()) > 0.9999
    assert [t["text_truncated"] for t in tokenized] == [n > embedder.max_tokens for n in embedder.count_tokens(texts)]
    assert [t["text_truncated"] for t in tokenized] == [False, True, False, False]


def _ingested_text_vectors(tiny_model_dir, catalog_dir, tmp_path, precision="auto"):
    """The ingest's report, its stored text vectors, and fp32's vectors of the same texts."""
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.search.store.edge import EdgeStore

    store = EdgeStore(tmp_path / f"db-{precision}")
    try:
        embedder = Embedder(str(tiny_model_dir), device="cpu", precision=precision)
        options = IngestOptions(batch_size=8, workers=0, optimize=False)
        report = ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options)
        points = list(store.scroll("products", with_vectors=True))
    finally:
        store.close()
    assert report.ingested == 48 and len(points) == 48
    texts = {r.product.id: r.product.text for r in read_catalog(catalog_dir / "catalog.csv").rows}
    fp32 = Embedder(str(tiny_model_dir), device="cpu", precision="fp32")
    exact = fp32._encode([texts[p.payload["product_id"]] for p in points])  # sentence-transformers' path
    return report, np.stack([p.vectors["text"] for p in points]), exact


@pytest.fixture
def without_native_bf16(monkeypatch):
    """A CPU like the AVX2 kind: ``auto`` runs the model in fp32; any text tower and catalog may
    take int8 (the tiny tower is narrower, the test catalog smaller, than ingest's thresholds)."""
    from shelfsight.search import precision, text_int8
    from shelfsight.search.text_int8 import int8_supported

    if int8_supported() is not None:
        pytest.skip(int8_supported())
    monkeypatch.setattr(precision, "cpu_runs_bf16", lambda: False)
    monkeypatch.setattr(text_int8, "MIN_PRODUCT_WIDTH", 0)
    monkeypatch.setattr("shelfsight.ingest.pipeline.INT8_MIN_ROWS", {"fp32": 0, "bf16": 0})


@pytest.mark.parametrize("native_bf16", [False, True], ids=["fp32 model", "bf16 model"])
def test_product_texts_run_int8_on_a_cpu_under_auto(
    tiny_model_dir, catalog_dir, tmp_path, without_native_bf16, monkeypatch, native_bf16
):
    """Under ``auto`` on a CPU, with or without native bf16 (the model in bf16 or fp32), product
    texts go through the int8 text tower once probes (the catalog's first texts among them) keep
    fp32's vectors; the report says so. The probes hold 0.995; the other catalog texts are checked
    with some room below that."""
    from shelfsight.search import precision
    from shelfsight.search.text_int8 import Int8TextEncoder

    monkeypatch.setattr(precision, "cpu_runs_bf16", lambda: native_bf16)
    assert Embedder(str(tiny_model_dir), device="cpu").precision == ("bf16" if native_bf16 else "fp32")
    calibrated_with = []
    calibrate = pipeline.calibrate
    monkeypatch.setattr(
        pipeline, "calibrate", lambda s, texts, *rest: calibrated_with.append(texts) or calibrate(s, texts, *rest)
    )
    report, stored, exact = _ingested_text_vectors(tiny_model_dir, catalog_dir, tmp_path)
    assert report.text_tower.startswith("int8 (least cosine to fp32 ")
    assert [type(t) for t in calibrated_with] == [Int8TextEncoder]  # query texts as serve embeds them here
    assert report.summary()["text_tower"] == report.text_tower
    cosines = (stored * exact).sum(axis=1)
    assert cosines.min() >= 0.99 and cosines.mean() >= 0.995
    assert not np.allclose(stored, exact, atol=1e-5)  # the int8 tower made them, not fp32


def test_product_texts_keep_fp32_when_asked_small_or_missed(
    tiny_model_dir, catalog_dir, tmp_path, without_native_bf16, monkeypatch
):
    """fp32 exactly, and the report says why: ``--precision fp32``, a catalog below
    ``INT8_MIN_ROWS``, probes that miss the bar, an int8 tower that cannot be made."""
    report, stored, exact = _ingested_text_vectors(tiny_model_dir, catalog_dir, tmp_path, "fp32")
    assert report.text_tower == "fp32"
    np.testing.assert_allclose(stored, exact, atol=1e-5)
    monkeypatch.setattr("shelfsight.ingest.pipeline.INT8_MIN_ROWS", {"fp32": 49, "bf16": 0})
    report, stored, exact = _ingested_text_vectors(tiny_model_dir, catalog_dir, tmp_path / "small")
    assert report.text_tower == "fp32"
    np.testing.assert_allclose(stored, exact, atol=1e-5)
    monkeypatch.setattr("shelfsight.ingest.pipeline.INT8_MIN_ROWS", {"fp32": 0, "bf16": 0})
    monkeypatch.setattr("shelfsight.search.text_int8.MIN_COSINE", 1.01)
    report, stored, exact = _ingested_text_vectors(tiny_model_dir, catalog_dir, tmp_path / "missed")
    assert report.text_tower.startswith("fp32 (int8 kept only cosine ")
    np.testing.assert_allclose(stored, exact, atol=1e-5)


def test_an_int8_tower_that_cannot_be_made_leaves_the_texts_in_fp32(tiny_model_dir, without_native_bf16, monkeypatch):
    from shelfsight.search import text_int8

    def broken(module):
        raise RuntimeError("no quantized engine for this layer")

    monkeypatch.setattr(text_int8, "_quantized", broken)
    embedder = Embedder(str(tiny_model_dir), device="cpu")
    fast, described = text_int8.product_text_encoder(embedder, ["red leather bag"])
    assert fast is None and described.startswith("fp32 (int8 unavailable: RuntimeError(")


@pytest.mark.parametrize("native_bf16", [False, True], ids=["fp32 model", "bf16 model"])
def test_making_the_int8_tower_leaves_the_model_as_it_was(
    tiny_model_dir, without_native_bf16, monkeypatch, native_bf16
):
    """The int8 tower is built over the model's own modules where it runs fp32 and quantizes its
    copies in place: the model keeps every weight, module and attribute, and packs no tower of its
    own for the check (an ingest's or a query process's texts never run through it)."""
    import torch
    from shelfsight.search import precision, text_int8
    from shelfsight.search.towers import clip_model

    monkeypatch.setattr(precision, "cpu_runs_bf16", lambda: native_bf16)
    embedder = Embedder(str(tiny_model_dir), device="cpu")
    assert embedder.precision == ("bf16" if native_bf16 else "fp32")
    model = embedder.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [(n, type(m)) for n, m in model.named_modules()]
    fast, described = text_int8.product_text_encoder(embedder, ["red leather bag"])
    assert fast is not None and described.startswith("int8 (least cosine to fp32 ")
    shares = fast.tower.tokens is clip_model(model).text_model.embeddings.token_embedding
    assert shares == (not native_bf16)  # the model's own modules where it runs fp32; fp32 copies of a bf16 one
    assert [(n, type(m)) for n, m in model.named_modules()] == kinds
    assert not [n for n, m in model.named_modules() if hasattr(m, "qconfig")]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert embedder.tower_kernels == {}


def test_ingest_streams_the_catalog_never_holding_it_whole(store, collection_name, embedder, catalog_dir, monkeypatch):
    def whole(self):
        raise AssertionError("the ingest read the whole catalog into memory")

    monkeypatch.setattr(Catalog, "_whole", property(whole))
    options = IngestOptions(collection=collection_name, batch_size=8, prune=True)
    report = ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options)
    assert report.ingested == 48 and not report.errors


@pytest.mark.parametrize("pool_rows, sizes", [(8, [8, 8, 8, 16]), (40, [40, 8])])
def test_worker_pixels_arrive_in_shared_memory_equal_to_the_workers_own(embedder, catalog_dir, pool_rows, sizes):
    """Jobs up to the pool's row count hand their pixels over in shared slots, in parts of 32 rows
    read by different workers (a 40-row job is two); bigger jobs are pickled. Either way a job's
    pixels are one block."""
    import mmap

    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.ingest.read_stage import ReadJob, ReadPool, pixel_block, read_job

    parsed = read_catalog(catalog_dir / "catalog.csv")
    ctx = ReadContext(parsed.base_dir, ImagePolicy(), embedder.model_id, None, embedder.pixel_spec)
    starts = np.cumsum([0, *sizes])
    jobs = [parsed.rows[a:b] for a, b in zip(starts, starts[1:])]
    read = ReadPool(ctx, 2, rows=pool_rows).read(ReadJob(rows, [None] * len(rows)) for rows in jobs)
    for rows, items in zip(jobs, read):
        assert [i.row for i in items] == list(rows)
        expected = [e.pixels for e in read_job(ReadJob(rows, [None] * len(rows)), ctx)]
        pixels = [i.pixels for i in items]
        assert len(pixels) == len(rows) and all(np.array_equal(p, e) for p, e in zip(pixels, expected))
        block = pixel_block(pixels)
        assert block is not None  # one block either way: one copy to the model's device
        assert isinstance(block.base, mmap.mmap) == (len(rows) <= pool_rows)


def test_read_workers_make_the_bm25_words_the_store_would_make(embedder, catalog_dir):
    """Off the write path: a product to embed gets the words the store would make from its payload
    (keyword fields included); an unchanged one gets none."""
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.ingest.read_stage import read_row
    from shelfsight.search.lexical import bm25_document, product_words, word_fields
    from shelfsight.search.store.base import CollectionMeta

    parsed = read_catalog(catalog_dir / "catalog.csv")
    meta = CollectionMeta(model=embedder.model_id, dimension=embedder.dimension, fields=parsed.fields)
    assert word_fields(meta)  # the catalog has keyword fields (brand, colour, ...)
    ctx = ReadContext(
        parsed.base_dir, ImagePolicy(), embedder.model_id, None, embedder.pixel_spec,
        bm25=meta.bm25, word_fields=tuple(word_fields(meta)),
    )  # fmt: skip
    for row in parsed.rows[:6]:
        item = read_row(row, None, ctx)
        assert item.words is not None and item.words == bm25_document(product_words(item.payload, meta), meta.bm25)
        assert read_row(row, item.content_hash, ctx).words is None


def test_reading_between_passes_reads_nothing_beside_the_caller_and_shares_each_batch(
    embedder, catalog_dir, monkeypatch
):
    """``ahead=1``: the next job is taken (and read) only once the caller asks for it; it goes to
    the workers in parts of ``part_rows``; items and pixels still come back in order."""
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.ingest.read_stage import ReadJob, ReadPool, read_job

    parts: list[int] = []
    real_pool = read_stage._process_pool

    def counting_pool(*args, **kwargs):
        pool = real_pool(*args, **kwargs)
        submit = pool.submit

        def counted(fn, *a, **k):
            if fn is read_stage._read_in_worker:
                parts.append(len(a[0].rows))
            return submit(fn, *a, **k)

        pool.submit = counted
        return pool

    monkeypatch.setattr(read_stage, "_process_pool", counting_pool)
    parsed = read_catalog(catalog_dir / "catalog.csv")
    ctx = ReadContext(parsed.base_dir, ImagePolicy(), embedder.model_id, None, embedder.pixel_spec)
    jobs = [parsed.rows[i : i + 8] for i in range(0, 24, 8)]
    taken: list[int] = []

    def job_stream():
        for k, rows in enumerate(jobs):
            taken.append(k)
            yield ReadJob(rows, [None] * len(rows))

    pool = ReadPool(ctx, 2, ahead=1, rows=8, part_rows=4)
    for k, (rows, items) in enumerate(zip(jobs, pool.read(job_stream()))):
        assert taken == list(range(k + 1))  # nothing beyond the batch the caller holds
        assert parts == [4, 4] * (k + 1)  # each batch in two parts, one a worker
        assert [i.row for i in items] == list(rows)
        expected = [e.pixels for e in read_job(ReadJob(rows, [None] * len(rows)), ctx)]
        assert all(np.array_equal(i.pixels, e) for i, e in zip(items, expected))


def test_an_ingest_leaves_the_callers_embedder_as_it_found_it(
    store, collection_name, embedder, catalog_dir, monkeypatch
):
    """The run's forward batch (16 on a CPU) is the run's: a caller who searches with the same
    embedder afterwards gets its own batch size back."""
    monkeypatch.setattr(embedder, "batch_size", 5)
    seen: list[int] = []
    real = embedder.queue_pixels

    def spy(pixels):
        seen.append(embedder.batch_size)
        return real(pixels)

    monkeypatch.setattr(embedder, "queue_pixels", spy)
    options = IngestOptions(collection=collection_name, batch_size=8, workers=0)
    assert ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options).ingested == 48
    assert seen and set(seen) == {8} and embedder.batch_size == 5


def test_a_cpu_ingest_reads_between_the_towers_passes(embedder, catalog_dir, monkeypatch):
    """The CPU plan asks its pool for one batch at a time, shared by every worker; a plan that
    reads in threads has no pool to ask."""
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.search.store.base import CollectionMeta

    monkeypatch.setattr(embedder, "batch_size", embedder.batch_size)  # plan_reading sets it
    asked: list[dict] = []

    class Recorder:
        def __init__(self, ctx, workers, **kwargs):
            asked.append({"workers": workers, **kwargs})

        def read(self, jobs):
            return iter(())

    monkeypatch.setattr(pipeline, "ReadPool", Recorder)
    parsed = read_catalog(catalog_dir / "catalog.csv")
    meta = CollectionMeta(model=embedder.model_id, dimension=embedder.dimension)
    plan = pipeline.plan_reading(parsed, embedder, meta, IngestOptions(batch_size=8, workers=2, processes=True))
    assert plan.between_passes  # this embedder runs on the CPU
    list(plan.read(iter(())))
    assert asked == [{"workers": 2, "ahead": 1, "rows": 8, "part_rows": 4}]
    threads = pipeline.plan_reading(parsed, embedder, meta, IngestOptions(batch_size=8, workers=2, processes=False))
    assert not threads.between_passes


@pytest.mark.parametrize("room", [read_stage.JPEG_BYTES_PER_ROW, 3_000])
def test_jpegs_for_the_gpu_cross_in_shared_memory_as_long_as_they_fit(embedder, catalog_dir, monkeypatch, room):
    """For GPU decoding a worker hands over the file's own bytes; those that do not fit the job's
    slot (a tiny slot here) come pickled, and every item still gets exactly its file's bytes."""
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.ingest.read_stage import ReadJob, ReadPool

    monkeypatch.setattr(read_stage, "JPEG_BYTES_PER_ROW", room)
    parsed = read_catalog(catalog_dir / "catalog.csv")
    ctx = ReadContext(parsed.base_dir, ImagePolicy(), embedder.model_id, None, embedder.pixel_spec, gpu_jpeg=True)
    jobs = [parsed.rows[i : i + 8] for i in range(0, 24, 8)]
    kinds = set()
    for rows, items in zip(jobs, ReadPool(ctx, 2, rows=8).read(ReadJob(r, [None] * len(r)) for r in jobs)):
        for row, item in zip(rows, items):
            assert item.pixels is None and item.jpeg is not None
            assert bytes(item.jpeg) == (parsed.base_dir / row.product.image).read_bytes()
            kinds.add(type(item.jpeg))
    assert kinds == ({memoryview} if room > 100_000 else {memoryview, bytes})


def test_a_picture_the_models_process_cannot_decode_drops_its_row_and_no_other_text(
    embedder, catalog_dir, tmp_path, monkeypatch
):
    """Both towers are queued before either is awaited; a JPEG that neither the GPU decoder nor
    Pillow takes leaves the batch as a bad row, and every other product keeps its own text vector."""
    from dataclasses import replace

    from shelfsight.ingest import gpu_decode
    from shelfsight.ingest.catalog import read_catalog
    from shelfsight.ingest.embed_stage import embed_items
    from shelfsight.ingest.pipeline import ensure_collection
    from shelfsight.search.store.edge import EdgeStore

    catalog = read_catalog(catalog_dir / "catalog.csv")
    ctx = ReadContext(
        catalog.base_dir, ImagePolicy(), "m", None, embedder.pixel_spec, False, embedder.tokenizer_json, 77
    )
    items = [read_stage.read_row(row, None, ctx) for row in catalog.rows[:3]]
    items[1] = replace(items[1], pixels=None, jpeg=b"\xff\xd8 not a JPEG after all")
    monkeypatch.setattr(gpu_decode, "decode_jpegs", lambda jpegs, spec, device: (None, list(range(len(jpegs)))))
    store = EdgeStore(tmp_path / "db")
    try:
        meta = ensure_collection(store, embedder, "products", catalog.fields, 0.5, False)
        result = embed_items(items, embedder, meta)
    finally:
        store.close()
    assert [(e.row, e.product_id) for e in result.errors] == [(items[1].row.row, items[1].row.product.id)]
    kept = [items[0], items[2]]
    assert [p.payload["product_id"] for p in result.batch.points] == [i.row.product.id for i in kept]
    expected = embedder.encode_texts([i.row.product.text for i in kept])
    stored = np.stack([p.vectors["text"] for p in result.batch.points])
    assert float((stored * expected).sum(axis=1).min()) > 0.9999


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_on_a_gpu_a_batch_is_finished_after_the_next_is_read_and_before_it_is_launched(device, monkeypatch):
    """The loop's order, with the towers and the store stood in for: on a GPU each batch's
    vectors are awaited only once the next batch is sorted (its reading overlaps the towers),
    and always before the next batch's towers are queued; on a CPU each batch is finished at once."""
    from types import SimpleNamespace

    events: list[str] = []

    def sort_batch(items, meta):
        events.append(f"sort {items[0]}")
        return pipeline.SortedBatch(list(items), [], 0, [])

    def queue_items(items, embedder, meta, state):
        events.append(f"launch {items[0]}")
        return lambda: (
            events.append(f"finish {items[0]}") or SimpleNamespace(errors=[], batch=pipeline.EmbeddedBatch([], 0, 0))
        )

    monkeypatch.setattr(pipeline, "sort_batch", sort_batch)
    monkeypatch.setattr(pipeline, "queue_items", queue_items)
    writer = SimpleNamespace(submit=lambda *a: None, progress=lambda rows: None)
    plan = SimpleNamespace(embed=None)
    run = pipeline._Run(writer, SimpleNamespace(torch_device=device), "p", None, pipeline.IngestReport(), plan)
    for batch in (1, 2, 3):
        run.add([batch])
    run.drain()
    if device == "cpu":
        assert events == [f"{step} {b}" for b in (1, 2, 3) for step in ("sort", "launch", "finish")]
    else:
        assert events == [
            "sort 1", "launch 1", "sort 2", "finish 1", "launch 2", "sort 3", "finish 2", "launch 3", "finish 3"
        ]  # fmt: skip


@pytest.mark.parametrize("text_only", [False, True])
def test_the_index_build_and_calibration_run_in_the_write_process(
    embedder, catalog_dir, tmp_path, monkeypatch, text_only
):
    """An embedded collection stays in the write process to the end of the ingest (a catalog read
    in processes, or a text-only one of more than a few batches): pruning, the index build and
    calibration run there, so the engine's memory, which grows with the collection and doubles
    while the index builds, is never this process's."""
    import csv
    import shutil

    from shelfsight.search.store.edge import EdgeStore

    shutil.copytree(catalog_dir, tmp_path / "shop")
    with (catalog_dir / "catalog.csv").open() as src:
        rows = [{k: v for k, v in row.items() if not (text_only and k == "image")} for row in csv.DictReader(src)]

    def write(n: int) -> Path:
        with (tmp_path / "shop" / f"catalog-{n}.csv").open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[:n])
        return tmp_path / "shop" / f"catalog-{n}.csv"

    def not_here(*args, **kwargs):
        raise AssertionError("the ingest's own process used the collection after handing it over")

    store = EdgeStore(tmp_path / "db")
    try:
        monkeypatch.setattr(EdgeStore, "optimize", not_here)
        monkeypatch.setattr(EdgeStore, "scroll_page", not_here)
        options = IngestOptions(batch_size=8, workers=2, processes=not text_only, prune=True)
        first = ingest_catalog(write(48), store, embedder, options)
        second = ingest_catalog(write(40), store, embedder, options)  # 8 products gone from the catalog
        monkeypatch.undo()
        assert (first.ingested, second.unchanged, second.pruned) == (48, 40, 8)
        meta = store.get_meta("products")
        assert meta.vocabulary and meta.relevance_floor is not None and store.count("products") == 40
    finally:
        store.close()


def test_a_rerun_with_nothing_new_still_builds_the_index_and_calibrates(embedder, catalog_dir, tmp_path, monkeypatch):
    """A run killed while the index was building (or calibration ran) wrote every product; the
    next run finds them all unchanged and must still build the index (the engine returns at once
    when it is built) and calibrate, so the vocabulary and floor cover what was written."""
    from shelfsight.search.store.edge import EdgeStore

    store = EdgeStore(tmp_path / "db")
    try:
        options = IngestOptions(batch_size=64, workers=0)
        ingest_catalog(catalog_dir / "catalog.csv", store, embedder, replace(options, optimize=False))
        built: list[str] = []
        monkeypatch.setattr(EdgeStore, "optimize", lambda self, name: built.append(name))
        monkeypatch.setattr(pipeline, "calibrate", lambda s, texts, name, *vocab: built.append(f"calibrated {name}"))
        report = ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options)
        assert report.unchanged == 48 and built == ["products", "calibrated products"]
    finally:
        store.close()
