"""The read stage in worker processes: image bytes, content hash, decoding and resizing, off the
process that runs the model.

Each batch of rows becomes one job for a pool of processes (``ReadPool``), a few batches ahead of
embedding, results in catalog order. A worker reads an image (path or guarded URL), hashes what
would be embedded, and only when the hash differs from the stored one prepares the model's input:
uint8 pixels (``search/pixels.py``), or the JPEG's bytes when the GPU decodes JPEGs (``gpu_jpeg``),
or, for a model whose processor ``PixelSpec`` cannot express, a decoded PIL image.

A worker that dies (a decoder crash, the kernel's OOM killer) fails its row, not the run: the jobs
that were in flight are read again one row at a time in a single fresh worker, so the row that
kills it again is known; it is reported as a bad row and the rest go on.

Small catalogs are read in threads instead (``read_in_threads``): starting processes costs more
than it saves below a few batches.
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
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
from shelfsight.search.pixels import PixelSpec, prepare_pixels

# Jobs queued per worker beyond the one it works on: enough to never starve the model, few enough
# that memory stays bounded (a 256-row job of 224-px pixels is 38 MB).
JOBS_AHEAD_PER_WORKER = 2
PING_TIMEOUT_S = 60.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
CRASH_REASON = "reading or decoding this image crashed the worker process"
CRASH_HINT = "re-export the image as a plain JPEG or PNG, or remove it from the catalog"


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
    jpeg: bytes | None = None  # for the GPU decoder
    image: Image.Image | None = None  # for the model's own processor
    text_ids: np.ndarray | None = None  # the text's token ids, when the reader tokenizes
    text_truncated: bool = False  # the text was longer than the text tower reads
    pixel_row: int = -1  # in transit between processes: the pixels' row in the job's block
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
    if stored_hash != digest and row.product.text and ctx.tokenizer_json:
        prepared.update(_tokenize(row.product.text, ctx))
    return ReadItem(row, None, digest, payload, **prepared, seconds=time.perf_counter() - started)


def _tokenize(text: str, ctx: ReadContext) -> dict[str, Any]:
    encoding = _tokenizer(ctx.tokenizer_json, ctx.max_tokens).encode(text)  # type: ignore[arg-type]
    return {"text_ids": np.asarray(encoding.ids, dtype=np.int32), "text_truncated": bool(encoding.overflowing)}


@lru_cache(maxsize=2)
def _tokenizer(spec: str, max_tokens: int) -> Any:
    """The model's tokenizer rebuilt from its JSON, cutting at ``max_tokens`` (markers included),
    unpadded: the model's process pads each batch."""
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


def _init_worker(ctx: ReadContext, parent: int) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ctx
    _die_with(parent)


def _die_with(parent: int) -> None:
    """A forked worker holds copies of the parent's files, the store's lock among them: if the
    parent is killed, the worker must not outlive it and keep the store locked. On Linux the kernel
    kills it (PR_SET_PDEATHSIG); a parent already gone by now means exit at once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


# A job's items as they cross from a worker: pixels moved into one block (``_pack``).
Packed = tuple[list[ReadItem], "np.ndarray | None"]


def _read_in_worker(job: ReadJob) -> Packed:
    assert _WORKER_CONTEXT is not None
    return _pack(read_job(job, _WORKER_CONTEXT))


def _pack(items: list[ReadItem]) -> Packed:
    """The job's pixels in one (k, h, w, 3) block to cross the process boundary: one buffer to
    send and receive, and one copy to the GPU at the other end, instead of one per image."""
    rows = [i for i, item in enumerate(items) if item.pixels is not None]
    if not rows:
        return items, None
    block = np.stack([items[i].pixels for i in rows])  # type: ignore[misc]
    packed = list(items)
    for k, i in enumerate(rows):
        packed[i] = replace(items[i], pixels=None, pixel_row=k)
    return packed, block


def _unpack(result: Packed) -> list[ReadItem]:
    """Each item's pixels again, as a view into the block (``pixel_block`` finds the block again)."""
    items, block = result
    if block is None:
        return items
    return [replace(item, pixels=block[item.pixel_row]) if item.pixel_row >= 0 else item for item in items]


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


def _process_pool(ctx: ReadContext, workers: int) -> ProcessPoolExecutor:
    """Worker processes, forked: they start in milliseconds and need no importable ``__main__``.
    They touch none of what they inherit but this module's functions (no model, no store, no CUDA),
    so the parent's threads and locks do not matter to them. A pool that cannot even answer a ping
    is an environment problem, raised, not a bad row."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(ctx, os.getpid()),
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


class ReadPool:
    """Reads jobs in ``workers`` processes, yielding each job's items in order."""

    def __init__(self, ctx: ReadContext, workers: int, ahead: int | None = None):
        self.ctx = ctx
        self.workers = max(1, workers)
        self.ahead = ahead or self.workers * (1 + JOBS_AHEAD_PER_WORKER)

    def read(self, jobs: Iterator[ReadJob]) -> Iterator[list[ReadItem]]:
        pool = _process_pool(self.ctx, self.workers)
        in_flight: deque[tuple[ReadJob, Future[Packed] | None]] = deque()
        try:
            while True:
                try:
                    self._fill(pool, in_flight, jobs)
                    if not in_flight:
                        return
                    items = _unpack(in_flight[0][1].result())  # type: ignore[union-attr]
                except BrokenProcessPool:  # a worker died: every job in flight is read again, row by row
                    pool.shutdown(wait=True, cancel_futures=True)
                    suspects = [job for job, _ in in_flight]
                    in_flight.clear()
                    yield from (self._isolate(job) for job in suspects)
                    pool = _process_pool(self.ctx, self.workers)
                    continue
                in_flight.popleft()
                yield items
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fill(
        self,
        pool: ProcessPoolExecutor,
        in_flight: deque[tuple[ReadJob, Future[Packed] | None]],
        jobs: Iterator[ReadJob],
    ) -> None:
        while len(in_flight) < self.ahead and (job := next(jobs, None)) is not None:
            in_flight.append((job, None))  # in flight before submit, so a broken pool cannot lose it
            in_flight[-1] = (job, pool.submit(_read_in_worker, job))

    def _isolate(self, job: ReadJob) -> list[ReadItem]:
        """A job whose worker died, read again row by row in one fresh worker; a row that kills it
        again becomes a bad row."""
        items: list[ReadItem] = []
        pool = _process_pool(self.ctx, 1)
        try:
            for row, stored in zip(job.rows, job.stored_hashes):
                try:
                    items += _unpack(pool.submit(_read_in_worker, ReadJob([row], [stored])).result())
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
