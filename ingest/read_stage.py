"""The read stage in worker processes: image bytes, content hash, decoding and resizing, off the
process that runs the model.

Each batch of rows becomes one job for a pool of processes (``ReadPool``), a few batches ahead of
embedding (or, for a model on the CPU, only between its passes), results in catalog order. A
worker reads an image (path or guarded URL), hashes what would be embedded, and only when the hash differs from the stored one prepares the model's input:
uint8 pixels (``search/pixels.py``), or the JPEG's bytes when the GPU decodes JPEGs (``gpu_jpeg``),
or, for a model whose processor ``PixelSpec`` cannot express, a decoded PIL image.

A worker that dies (a decoder crash, the kernel's OOM killer) fails its row, not the run: the jobs
that were in flight are read again one row at a time in a single fresh worker, so the row that
kills it again is known; it is reported as a bad row and the rest go on.

Small catalogs are read in threads instead (``read_in_threads``): starting processes costs more
than it saves below a few batches.
"""

from __future__ import annotations

import io
import mmap
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from shelfsight.ingest.catalog import CatalogRow, RowError
from shelfsight.search.errors import ShelfsightError
from shelfsight.search.images import ImageError, ImagePolicy, decode_image, read_image_bytes
from shelfsight.search.indexing import content_hash, product_payload
from shelfsight.search.lexical import bm25_document, document_text, forget_bm25_models
from shelfsight.search.parent_death import die_with_parent
from shelfsight.search.pixels import PixelSpec, prepare_pixels
from shelfsight.search.store.base import Sparse

# Parts of jobs queued per worker beyond the one it works on: enough to never starve the model,
# few enough that memory stays bounded (a 256-row job of 224-px pixels is 38 MB).
JOBS_AHEAD_PER_WORKER = 2
# Rows a worker reads at a time: a job (one batch of the model's) is split into parts this size.
PART_ROWS = 32
PING_TIMEOUT_S = 60.0
# Room in a job's shared slot for each row's JPEG, when the GPU decodes them: a 1000-px product
# photo is 100 to 250 KB. A job whose JPEGs need more sends the rest pickled.
JPEG_BYTES_PER_ROW = 256 * 1024
CRASH_REASON = "reading or decoding this image crashed the worker process"
CRASH_HINT = "re-export the image as a plain JPEG or PNG, or remove it from the catalog"


def _free(slots: PixelSlots | None, done: Iterable[tuple[ReadJob, int | None, Any]]) -> None:
    """Give the slots of ``done`` jobs back."""
    for _, slot, _ in done:
        if slots is not None and slot is not None:
            slots.free.append(slot)


class IngestError(ShelfsightError):
    """The ingest cannot go on at all (not one bad row): its message says why and what to do."""


@dataclass(frozen=True)
class ReadContext:
    """What a worker needs to read a row: where relative paths start, the image limits, what the
    content hash covers, and what to make of an image that must be embedded."""

    base_dir: Path
    policy: ImagePolicy
    model_id: str
    fused_weight: float | None
    spec: PixelSpec | None = None  # None: decode to a PIL image for the model's own processor
    gpu_jpeg: bool = False  # hand plain JPEGs over as bytes, for decoding on the GPU
    tokenizer_json: str | None = None  # tokenize texts here too (None: the model's process does)
    max_tokens: int = 77
    # The collection's BM25 settings and keyword fields: each product's BM25 words are made here
    # (None: the collection has no BM25 vector, or the store makes them from the payload).
    bm25: dict[str, Any] | None = None
    word_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadItem:
    """One row after the read stage: its content hash and payload; when it must be embedded, its
    image as prepared pixels, JPEG bytes or a PIL image; or the error that skips it.
    ``stored`` is the payload in the store (None: new)."""

    row: CatalogRow
    stored: dict[str, Any] | None
    content_hash: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    pixels: np.ndarray | None = None  # (h, w, 3) uint8, the model's input
    jpeg: bytes | memoryview | None = None  # for the GPU decoder
    image: Image.Image | None = None  # for the model's own processor
    text_ids: np.ndarray | None = None  # the text's token ids, when the reader tokenizes
    text_truncated: bool = False  # the text was longer than the text tower reads
    words: Sparse | None = None  # its BM25 words, for a product to embed (``ReadContext.bm25``)
    pixel_row: int = -1  # in transit between processes: the pixels' row in the job's block
    jpeg_span: tuple[int, int] | None = None  # in transit: (start, length) of the JPEG in the job's slot
    error: RowError | None = None
    seconds: float = 0.0

    @property
    def has_picture(self) -> bool:
        return self.pixels is not None or self.jpeg is not None or self.image is not None


@dataclass(frozen=True)
class ReadJob:
    """A batch of rows and the content hash each has in the store (None: not stored)."""

    rows: Sequence[CatalogRow]
    stored_hashes: Sequence[str | None]


def read_row(row: CatalogRow, stored_hash: str | None, ctx: ReadContext) -> ReadItem:
    """Image bytes, content hash and payload; the image is prepared only when the hash changed."""
    started = time.perf_counter()
    try:
        image_bytes = read_image_bytes(row.product.image, ctx.base_dir, ctx.policy) if row.product.image else None
        digest = content_hash(ctx.model_id, row.product.text, image_bytes, ctx.fused_weight)
        prepared: dict[str, Any] = {}  # what the embed stage needs, for new or changed products
        if image_bytes is not None and stored_hash != digest:
            prepared = _prepare(image_bytes, row.product.image or "image", ctx)
    except ImageError as exc:
        error = RowError(row.row, row.product.id, exc.reason, exc.hint)
        return ReadItem(row, None, error=error, seconds=time.perf_counter() - started)
    payload = product_payload(row.product, digest, ctx.base_dir)
    if stored_hash != digest:  # to embed: its token ids, and its BM25 words off the GIL-bound write path
        if row.product.text and ctx.tokenizer_json:
            prepared.update(_tokenize(row.product.text, ctx))
        if ctx.bm25 is not None:
            prepared["words"] = bm25_document(document_text(payload, ctx.word_fields), ctx.bm25)
    return ReadItem(row, None, digest, payload, **prepared, seconds=time.perf_counter() - started)


def _tokenize(text: str, ctx: ReadContext) -> dict[str, Any]:
    encoding = text_tokenizer(ctx.tokenizer_json, ctx.max_tokens).encode(text)  # type: ignore[arg-type]
    return {"text_ids": np.asarray(encoding.ids, dtype=np.int32), "text_truncated": bool(encoding.overflowing)}


@lru_cache(maxsize=2)
def text_tokenizer(spec: str, max_tokens: int) -> Any:
    """The model's tokenizer rebuilt from its JSON, cutting at ``max_tokens`` (markers included),
    unpadded: the text tower takes each text as it is (``towers.TokenRows``). The one the workers
    use (and the benchmark)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(spec)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def _prepare(data: bytes, name: str, ctx: ReadContext) -> dict[str, Any]:
    if ctx.spec is None:
        return {"image": decode_image(data, ctx.policy, name)}
    if ctx.gpu_jpeg and gpu_decodable(data, ctx.policy):
        return {"jpeg": data}
    return {"pixels": prepare_pixels(data, ctx.spec, ctx.policy, name)}


def gpu_decodable(data: bytes, policy: ImagePolicy) -> bool:
    """A JPEG the GPU decoder takes as it is: baseline colour or grey, upright (no EXIF rotation),
    within the pixel cap. Anything else is decoded by Pillow, which handles every case."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            return (
                opened.format == "JPEG"
                and opened.mode in ("RGB", "L")
                and width * height <= policy.max_pixels
                and opened.getexif().get(0x0112, 1) == 1
            )
    except Exception:  # whatever Pillow cannot parse, it reports properly on the CPU path
        return False


def read_job(job: ReadJob, ctx: ReadContext) -> list[ReadItem]:
    return [read_row(row, stored, ctx) for row, stored in zip(job.rows, job.stored_hashes)]


# --- worker processes -------------------------------------------------------------------------

_WORKER_CONTEXT: ReadContext | None = None
_WORKER_SLOTS: PixelSlots | None = None


def _init_worker(ctx: ReadContext, slots: PixelSlots | None, parent: int) -> None:
    global _WORKER_CONTEXT, _WORKER_SLOTS
    _WORKER_CONTEXT, _WORKER_SLOTS = ctx, slots
    die_with_parent(parent=parent)  # it holds a copy of the store's lock file
    text_tokenizer.cache_clear()  # native objects are made again here, not shared through the fork
    forget_bm25_models()
    torch = sys.modules.get("torch")  # the model's process imported it; the resize uses it here
    if torch is not None:
        torch.set_num_threads(1)


class PixelSlots:
    """Memory shared with the workers, one slot per job in flight: a worker writes its job's pixels
    (and JPEG bytes, for the GPU decoder) into the job's slot, and the model's process reads them
    where they lie. Pickled through a pipe instead, they moved at about 220 MB/s here (1,500 images
    of 224 px a second), below what the workers decode. Anonymous shared memory made before the
    workers fork: it goes with the processes and leaves nothing to clean up; pages are only taken
    as slots are first written. What does not fit a slot is pickled as before."""

    def __init__(self, count: int, rows: int, shape: tuple[int, ...], jpeg_bytes_per_row: int = 0):
        self.rows, self.shape = rows, shape
        self.pixel_bytes = rows * int(np.prod(shape))
        self.jpeg_bytes = rows * jpeg_bytes_per_row
        self.slot_bytes = self.pixel_bytes + self.jpeg_bytes
        self.memory = mmap.mmap(-1, count * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.free = deque(range(count))

    def view(self, slot: int, k: int) -> np.ndarray:
        return np.ndarray((k, *self.shape), np.uint8, buffer=self.memory, offset=slot * self.slot_bytes)

    def jpeg(self, slot: int, start: int, length: int) -> memoryview:
        at = slot * self.slot_bytes + self.pixel_bytes + start
        return memoryview(self.memory)[at : at + length]


# A part of a job as it crosses from a worker: its items and their pixels moved into one block
# (``_pack``), or the end row of the pixels it wrote into the job's slot of ``PixelSlots``.
Packed = tuple[list[ReadItem], "np.ndarray | int | None"]


def _read_in_worker(job: ReadJob, slot: int | None = None, first: int = 0) -> Packed:
    """Read a part of a job: its rows start at row ``first`` of the job (and of its slot)."""
    assert _WORKER_CONTEXT is not None
    items = read_job(job, _WORKER_CONTEXT)
    if slot is not None and _WORKER_SLOTS is not None:
        return _pack_into(items, _WORKER_SLOTS, slot, first)
    return _pack(items)


def _pixel_rows(items: list[ReadItem], first: int = 0) -> tuple[list[int], list[ReadItem]]:
    """Which items carry pixels, and the items with each one's row in the block (from ``first``) instead."""
    rows = [i for i, item in enumerate(items) if item.pixels is not None]
    packed = list(items)
    for k, i in enumerate(rows):
        packed[i] = replace(items[i], pixels=None, pixel_row=first + k)
    return rows, packed


def _pack(items: list[ReadItem]) -> Packed:
    """The pixels in one (k, h, w, 3) block to cross the process boundary: one buffer to send and
    receive instead of one per image."""
    rows, packed = _pixel_rows(items)
    if not rows:
        return items, None
    return packed, np.stack([items[i].pixels for i in rows])  # type: ignore[misc]


def _pack_into(items: list[ReadItem], slots: PixelSlots, slot: int, first: int) -> Packed:
    """Pixels into the slot from row ``first`` on, JPEG bytes into this part's share of its JPEG room."""
    rows, packed = _pixel_rows(items, first)
    if first + len(items) > slots.rows or any(items[i].pixels.shape != slots.shape for i in rows):  # type: ignore[union-attr]
        return _pack(items)
    if rows:
        np.stack([items[i].pixels for i in rows], out=slots.view(slot, first + len(rows))[first:])  # type: ignore[misc]
    return _jpegs_into(packed, slots, slot, first), first + len(rows)


def _jpegs_into(items: list[ReadItem], slots: PixelSlots, slot: int, first: int) -> list[ReadItem]:
    """JPEG bytes laid one after another in this part's share of the slot, as long as they fit."""
    share = slots.jpeg_bytes // slots.rows
    used, room = first * share, (first + len(items)) * share
    out = list(items)
    for i, item in enumerate(items):
        if item.jpeg is not None and used + len(item.jpeg) <= room:
            slots.jpeg(slot, used, len(item.jpeg))[:] = item.jpeg
            out[i] = replace(item, jpeg=None, jpeg_span=(used, len(item.jpeg)))
            used += len(item.jpeg)
    return out


def _unpack(parts: Sequence[Packed], slots: PixelSlots | None = None, slot: int | None = None) -> list[ReadItem]:
    """A job's items again, its parts in order: pixels as views into one block for the job (which
    ``pixel_block`` finds again when every row has its picture), JPEG bytes as views into the slot."""
    end = max((block for _, block in parts if isinstance(block, int)), default=0)
    whole = slots.view(slot, end) if slots is not None and slot is not None else None
    out: list[ReadItem] = []
    for items, block in parts:
        if isinstance(block, int):
            assert slots is not None and slot is not None and whole is not None
            out += [_from_slot(item, whole, slots, slot) for item in items]
        elif block is not None:
            out += [replace(item, pixels=block[item.pixel_row]) if item.pixel_row >= 0 else item for item in items]
        else:
            out += items
    return out


def _from_slot(item: ReadItem, whole: np.ndarray, slots: PixelSlots, slot: int) -> ReadItem:
    if item.pixel_row >= 0:
        item = replace(item, pixels=whole[item.pixel_row])
    if item.jpeg_span:
        item = replace(item, jpeg=slots.jpeg(slot, *item.jpeg_span), jpeg_span=None)
    return item


def pixel_block(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """The block ``arrays`` are, in order, the whole of; None when they are anything else."""
    base = arrays[0].base if arrays else None
    if not isinstance(base, np.ndarray) or len(base) != len(arrays) or not base.flags.c_contiguous:
        return None
    start, step = base.ctypes.data, base[0].nbytes
    if all(a.base is base and a.ctypes.data == start + k * step for k, a in enumerate(arrays)):
        return base
    return None


def _ping() -> bool:
    return True


def _process_pool(ctx: ReadContext, workers: int, slots: PixelSlots | None = None) -> ProcessPoolExecutor:
    """Worker processes, forked: they start in milliseconds and need no importable ``__main__``.
    They touch none of what they inherit but this module's functions (no model, no store, no CUDA),
    so the parent's threads and locks do not matter to them; what they use of native libraries
    (the tokenizer, qdrant-edge's BM25) they make anew after the fork; torch, which resizes their
    pixels and which the model's process has imported, is held to one thread there, so no op of it
    starts a thread pool in a fork (``_init_worker``). A pool
    that cannot even answer a ping is an environment problem, raised, not a bad row."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(ctx, slots, os.getpid()),
    )
    try:
        pool.submit(_ping).result(timeout=PING_TIMEOUT_S)
    except Exception as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise IngestError(
            f"cannot start image-reading worker processes ({type(exc).__name__}: {exc}); "
            "pass --workers 0 to read images in threads instead"
        ) from exc
    return pool


# A job in flight: its rows, its slot in ``PixelSlots`` (None: its pixels are pickled), and its
# parts' futures, each with the row the part starts at.
InFlight = deque[tuple[ReadJob, "int | None", "list[tuple[int, Future[Packed]]]"]]


class ReadPool:
    """Reads jobs in ``workers`` processes, yielding each job's items in order. A job is read in
    parts of ``part_rows`` rows, so all workers share the next batch and the first one is ready
    soon. Jobs of up to ``rows`` rows hand their pixels over in shared memory; the pixels of the
    items a step yields stay valid until the next step. ``ahead`` jobs are in flight, the one the
    caller works on included: with ``ahead=1`` the next job is read only once the caller asks for
    it, so reading never runs beside the caller's work."""

    def __init__(
        self, ctx: ReadContext, workers: int, ahead: int | None = None, rows: int = 0, part_rows: int = PART_ROWS
    ):
        self.ctx = ctx
        self.workers = max(1, workers)
        self.part_rows = part_rows
        # jobs in flight: enough parts queued for every worker to have 1 + JOBS_AHEAD_PER_WORKER
        parts = self.workers * (1 + JOBS_AHEAD_PER_WORKER)
        self.ahead = max(2, -(-parts * part_rows // max(rows, part_rows))) if ahead is None else max(1, ahead)
        self.rows = rows

    def read(self, jobs: Iterator[ReadJob]) -> Iterator[list[ReadItem]]:
        slots = None
        if self.rows and self.ctx.spec is not None:  # a slot for each job in flight, and a spare
            jpeg_bytes = JPEG_BYTES_PER_ROW if self.ctx.gpu_jpeg else 0
            slots = PixelSlots(self.ahead + 1, self.rows, (*self.ctx.spec.crop, 3), jpeg_bytes)
        pool = _process_pool(self.ctx, self.workers, slots)
        in_flight: InFlight = deque()
        try:
            while True:
                try:
                    self._fill(pool, in_flight, jobs, slots)
                    if not in_flight:
                        return
                    _, slot, parts = in_flight[0]
                    items = _unpack([future.result() for _, future in parts], slots, slot)
                except BrokenProcessPool:  # a worker died: every job in flight is read again, row by row
                    pool.shutdown(wait=True, cancel_futures=True)
                    suspects = [job for job, _, _ in in_flight]
                    _free(slots, in_flight)
                    in_flight.clear()
                    yield from (self._isolate(job) for job in suspects)
                    pool = _process_pool(self.ctx, self.workers, slots)
                    continue
                yield items
                _free(slots, [in_flight.popleft()])  # the caller is done with these pixels
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fill(
        self, pool: ProcessPoolExecutor, in_flight: InFlight, jobs: Iterator[ReadJob], slots: PixelSlots | None
    ) -> None:
        while len(in_flight) < self.ahead and (job := next(jobs, None)) is not None:
            slot = slots.free.popleft() if slots is not None and len(job.rows) <= slots.rows else None
            parts: list[tuple[int, Future[Packed]]] = []
            in_flight.append((job, slot, parts))  # in flight before submit, so a broken pool cannot lose it
            for first in range(0, len(job.rows), self.part_rows):
                last = first + self.part_rows
                part = ReadJob(job.rows[first:last], job.stored_hashes[first:last])
                parts.append((first, pool.submit(_read_in_worker, part, slot, first)))

    def _isolate(self, job: ReadJob) -> list[ReadItem]:
        """A job whose worker died, read again row by row in one fresh worker; a row that kills it
        again becomes a bad row."""
        items: list[ReadItem] = []
        pool = _process_pool(self.ctx, 1)
        try:
            for row, stored in zip(job.rows, job.stored_hashes):
                try:
                    items += _unpack([pool.submit(_read_in_worker, ReadJob([row], [stored])).result()])
                except BrokenProcessPool:
                    pool.shutdown(wait=True)
                    items.append(ReadItem(row, None, error=RowError(row.row, row.product.id, CRASH_REASON, CRASH_HINT)))
                    pool = _process_pool(self.ctx, 1)
        finally:
            pool.shutdown(wait=True)
        return items


def read_in_threads(jobs: Iterator[ReadJob], ctx: ReadContext, workers: int) -> Iterator[list[ReadItem]]:
    """The same stage in threads, one job ahead: for catalogs too small to pay for processes."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(job: ReadJob | None) -> list[Future[ReadItem]]:
            return (
                [] if job is None else [pool.submit(read_row, r, s, ctx) for r, s in zip(job.rows, job.stored_hashes)]
            )

        pending = submit(next(jobs, None))
        while pending:
            current, pending = pending, submit(next(jobs, None))
            yield [f.result() for f in current]
