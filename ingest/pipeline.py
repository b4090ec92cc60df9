"""Catalog -> points, in stages joined by typed records, clip-retrieval style, each stage overlapping the others:

    rows (CatalogRow) --read_row--> ReadItem --sort_batch--> SortedBatch --queue_items--> points --write--> store

``read_row`` (ingest/read_stage.py) reads an image's bytes, hashes what would be embedded and,
only when the hash changed, prepares the model's input; it runs in worker processes, several
batches ahead of a model on a GPU, and between the passes of a model on the CPU, whose threads
fill every core (``ReadPlan.between_passes``). ``sort_batch`` splits a batch into new or changed
products, payload-only updates and unchanged ones. ``queue_items`` (ingest/embed_stage.py) queues both
towers on the model's device; the loop waits for their vectors only after reading and sorting the
next batch (``_Run``). The write stage upserts on its own thread while the next batch is embedded;
for an embedded store and a catalog read in processes, that thread hands each batch to a write
process that owns the collection meanwhile (ingest/write_process.py).
``ingest_catalog`` is the runner: it times each stage (``IngestReport.stage_seconds``).

Each product's point id is derived from its catalog id and its payload carries a content hash of
what was embedded (model, text, image bytes), so a re-run embeds only new or changed products and
a run killed half-way finishes the job when started again.

Example::

    report = ingest_catalog("data/sample/catalog.csv", EdgeStore("db"), Embedder("models/demo"))
    print(report.summary())
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shelfsight.ingest.catalog import Catalog, Columns, RowError, read_catalog
from shelfsight.ingest.embed_stage import EmbedState, ProductTexts, queue_items
from shelfsight.ingest.gpu_decode import gpu_decoding_available, require_gpu_decoding
from shelfsight.ingest.read_stage import ReadContext, ReadItem, ReadJob, ReadPool, read_in_threads
from shelfsight.ingest.write_process import PointStore, WriteProcess
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import IncompatibleCollectionError
from shelfsight.search.images import ImagePolicy
from shelfsight.search.indexing import EmbeddedBatch, keep_derived
from shelfsight.search.lexical import BM25, product_words, word_fields
from shelfsight.search.records import point_id
from shelfsight.search.relevance import TextEncoder, calibrate
from shelfsight.search.settings import DEFAULT_COLLECTION
from shelfsight.search.store.base import CollectionMeta, PointRecord, VectorStore
from shelfsight.search.store.edge import EdgeStore

log = logging.getLogger(__name__)


# Rows per batch when ``IngestOptions.batch_size`` is None: a batch that keeps a GPU busy, and
# on a CPU one that gains nothing from being larger (32 images are 1.1x faster than 1 at a time).
GPU_BATCH = 256
CPU_BATCH = 32
# Rows per forward pass on a CPU, the batch's towers running this many at a time: the activations
# of 16 stay in cache. ViT-B/32 shape, 2 AVX-512 BF16 cores, two runs each: vision tower 82-87
# images/s in bf16 at 16 against 66-82 at 32 (fp32 23 against 20-21); text tower 134 texts/s in
# bf16 against 98, int8 214 against 139, fp32 46 against 37, for product texts in catalog order.
# Inside an ingest, where the read stage's workers share the cores, less is left of it: 480 texts
# took 3.2 s against 3.6-3.9 s, the images about the same.
CPU_FORWARD_BATCH = 16
# Catalogs of fewer rows, by the model's precision, keep product texts in it: making and checking
# the int8 text tower (about 0.7 s for the ViT-B/32 shape on 2 cores) would cost more than it
# saves. Against the packed towers (search/packed_towers.py) it saves about 3.6 ms a text where the
# model runs fp32 (123 against 220-260 texts/s) and about 0.95 ms where it runs bf16 (200-205
# against 241-261, alternating rounds of one script): even at about 190 and 730 rows.
INT8_MIN_ROWS = {"fp32": 256, "bf16": 1024}
# Threads reading images when the read stage runs in this process (small catalogs, --workers 0).
READ_THREADS = 2
# Worker processes start (about a second) only for catalogs with images for more batches than this.
PROCESS_MIN_BATCHES = 4
# An embedded collection moves to the write process (which starts in about 0.15 s, in the
# background) for a catalog read in processes or one of more rows than this many batches.
WRITE_PROCESS_MIN_BATCHES = 4


@dataclass(frozen=True)
class IngestOptions:
    """``batch_size`` and ``workers`` None: chosen for the machine (``plan_reading``); ``workers`` 0:
    no worker processes, images are read in threads of this process. ``decode``:
    'cpu' (Pillow in worker processes), 'gpu' (nvJPEG; fails without it) or 'auto' (the GPU where
    it can). ``processes``: read in worker processes (True), threads (False) or by catalog size (None)."""

    collection: str = DEFAULT_COLLECTION
    batch_size: int | None = None
    workers: int | None = None
    decode: str = "auto"
    processes: bool | None = None
    reindex: bool = False
    prune: bool = False  # delete products that are no longer in the catalog
    fused_weight: float | None = None  # image share of the early-fused vector; None: no fused vector
    columns: Columns = Columns()
    images: ImagePolicy = ImagePolicy()
    optimize: bool = True


@dataclass
class IngestReport:
    ingested: int = 0
    unchanged: int = 0
    updated: int = 0  # payload changed, vectors reused
    skipped: int = 0
    text_only: int = 0
    truncated: int = 0
    pruned: int = 0
    seconds: float = 0.0
    errors: list[RowError] = field(default_factory=list)
    # Seconds per stage: "start" (until the first batch is read: the catalog, the collection, the
    # workers' start), "read" (image reading, hashing and decoding, summed over the workers, which
    # overlap embedding on a GPU), "embed", "write" (upserts and payload updates), "finish" (prune,
    # index), "calibrate" (the vocabulary and relevance floor, search/relevance.py).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # What product texts ran in, and why (``embed_stage.ProductTexts``); empty when none were
    # embedded from the read stage's tokens (a model without a fast tokenizer embeds them as strings,
    # in its own precision).
    text_tower: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "ingested": self.ingested,
            "unchanged": self.unchanged,
            "updated": self.updated,
            "skipped": self.skipped,
            "text_only": self.text_only,
            "truncated": self.truncated,
            "pruned": self.pruned,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.ingested / self.seconds, 2) if self.seconds else 0.0,
            "stage_seconds": {stage: round(s, 3) for stage, s in self.stage_seconds.items()},
            "text_tower": self.text_tower,
        }

    def time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class SortedBatch:
    """A batch split by what each product needs."""

    to_embed: list[ReadItem]
    payload_only: list[ReadItem]  # same vectors, new catalog fields
    unchanged: int
    errors: list[RowError]


def ensure_collection(
    store: VectorStore, embedder: Embedder, name: str, fields: dict[str, str], fused_weight: float | None, reindex: bool
) -> CollectionMeta:
    """Open or create the collection, refusing to mix embedding spaces."""
    vectors = ("image", "text") + (("fused",) if fused_weight is not None else ())
    if store.collection_exists(name):
        meta = store.get_meta(name)
        if not reindex:
            if meta.model != embedder.model_id:
                raise IncompatibleCollectionError(
                    f"collection {name!r} was built with model {meta.model!r}, this ingest uses "
                    f"{embedder.model_id!r}. Re-run with --reindex to rebuild it with the new model "
                    f"(every product is embedded again), or pass --model with the original model."
                )
            if set(vectors) - set(meta.vectors):
                raise IncompatibleCollectionError(
                    f"collection {name!r} has no early-fused vector; re-run with --reindex to add one"
                )
            new_fields = {**meta.fields, **{k: v for k, v in fields.items() if k not in meta.fields}}
            if new_fields != meta.fields or meta.fused_weight != fused_weight:
                meta = replace(meta, fields=new_fields, fused_weight=fused_weight if "fused" in meta.vectors else None)
                store.set_meta(name, meta)
            return meta
        store.drop_collection(name)
    meta = CollectionMeta(
        model=embedder.model_id,
        dimension=embedder.dimension,
        model_source=embedder.model_source,
        vectors=vectors,
        fields=dict(fields),
        fused_weight=fused_weight,
    )
    store.create_collection(name, meta)
    return meta


def sort_batch(items: Sequence[ReadItem], meta: CollectionMeta) -> SortedBatch:
    """Which products need embedding, which only a payload update, which nothing."""
    to_embed: list[ReadItem] = []
    payload_only: list[ReadItem] = []
    errors: list[RowError] = []
    unchanged = 0
    for item in items:
        if item.error:
            errors.append(item.error)
        elif item.stored and item.stored.get("content_hash") == item.content_hash:
            item = replace(item, payload=keep_derived(item.stored, item.payload, meta))
            if item.stored == item.payload:
                unchanged += 1
            else:
                payload_only.append(item)
        else:
            to_embed.append(item)
    return SortedBatch(to_embed, payload_only, unchanged, errors)


def ingest_catalog(
    catalog: str | Path | Catalog,
    store: VectorStore,
    embedder: Embedder,
    options: IngestOptions = IngestOptions(),
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest a catalog into ``store``; bad rows are reported in the result, never raised."""
    started = time.perf_counter()
    if not isinstance(catalog, Catalog):
        catalog = read_catalog(catalog, options.columns)
    report = IngestReport()
    meta = ensure_collection(store, embedder, options.collection, catalog.fields, options.fused_weight, options.reindex)
    with _callers_batch_kept(embedder):
        plan = plan_reading(catalog, embedder, meta, options)
        lock = threading.Lock()
        stored: dict[str, dict[str, Any]] = {}
        fresh = store.count(options.collection) == 0  # nothing stored: no hashes to look up
        with _point_store(store, options.collection, plan, catalog) as points:
            with _Writer(points, lock, on_progress) as writer:
                jobs = _jobs(points, options.collection, catalog, plan.batch_size, lock, stored, report, writer, fresh)
                run = _Run(writer, embedder, options.collection, meta, report, plan)
                for items in plan.read(jobs):  # on a GPU, the next batch is read while the device runs the last
                    if "start" not in report.stage_seconds:
                        report.time("start", time.perf_counter() - started)
                    if stored:
                        items = [replace(i, stored=stored.pop(i.row.product.id, None)) for i in items]
                    report.time("read", sum(item.seconds for item in items))
                    run.add(items)
                run.drain()
            report.text_tower = plan.embed.texts.described
            _finish(points, options, catalog, report, calibrate_with=plan.embed.texts.settled)
    report.skipped = len(report.errors)
    report.errors.sort(key=lambda e: e.row)
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class ReadPlan:
    """How this run reads: the context workers get, rows per batch, worker count, and whether in
    processes (``ReadPool``) or threads; and what its embed stage keeps between batches.

    ``between_passes`` (on a CPU): the worker processes read the next batch all together, and only
    once the model is done with the last one. The towers' threads fill every core; a worker that
    preempts one of them stalls the whole pass at its next barrier, so reading beside the towers
    cost them more than the reading itself: ViT-B/32 shape, 2 cores, 1000-px JPEGs, the towers took
    10.7-11.4 s of a 480-product ingest with reads alongside, 9.5 s between passes, and the ingest
    ran at 37.8-39.2 against 40.9-41.4 products/s (the demo model: 260-268 against 271-291)."""

    ctx: ReadContext
    batch_size: int
    workers: int
    processes: bool
    embed: EmbedState
    between_passes: bool = False

    def read(self, jobs: Iterator[ReadJob]) -> Iterator[list[ReadItem]]:
        if not self.processes:
            return read_in_threads(jobs, self.ctx, self.workers)
        if not self.between_passes:
            return ReadPool(self.ctx, self.workers, rows=self.batch_size).read(jobs)
        share = -(-self.batch_size // self.workers)  # every worker on the next batch
        return ReadPool(self.ctx, self.workers, ahead=1, rows=self.batch_size, part_rows=share).read(jobs)


def plan_reading(catalog: Catalog, embedder: Embedder, meta: CollectionMeta, options: IngestOptions) -> ReadPlan:
    """Settle the automatic options for this machine and catalog: the batch (256 on a GPU, 32 on a
    CPU, whose towers run it 16 at a time), the workers (the usable cores), processes once the
    images fill a few batches (on a CPU reading between the towers' passes), and GPU decoding
    where ``options.decode`` asks for it or, for 'auto', where the GPU decoder exists."""
    device = embedder.torch_device
    on_gpu = device.startswith("cuda")
    batch_size = options.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)
    embedder.batch_size = batch_size if on_gpu else min(batch_size, CPU_FORWARD_BATCH)
    workers = usable_cores() if options.workers is None else options.workers
    if options.decode == "gpu":
        require_gpu_decoding(device)
    spec = embedder.pixel_spec
    gpu_jpeg = spec is not None and options.decode != "cpu" and gpu_decoding_available(device)
    ctx = ReadContext(
        catalog.base_dir,
        options.images,
        meta.model,
        meta.fused_weight,
        spec,
        gpu_jpeg,
        embedder.tokenizer_json,
        embedder.max_tokens,
        bm25=meta.bm25 if BM25 in meta.sparse_vectors else None,
        word_fields=tuple(word_fields(meta)),
    )
    processes = options.processes
    if processes is None:
        processes = catalog.with_images > PROCESS_MIN_BATCHES * batch_size
    int8 = catalog.total >= INT8_MIN_ROWS.get(embedder.precision, INT8_MIN_ROWS["fp32"])  # (never on a GPU)
    embed = EmbedState(ProductTexts(embedder, int8=int8), policy=options.images)
    if workers == 0:  # asked for no processes: read in threads of this one
        return ReadPlan(ctx, batch_size, READ_THREADS, False, embed)
    return ReadPlan(ctx, batch_size, workers, processes, embed, between_passes=processes and device == "cpu")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def _callers_batch_kept(embedder: Embedder) -> Iterator[None]:
    """``plan_reading`` sets the embedder's forward batch for the run; the caller's comes back after."""
    batch = embedder.batch_size
    try:
        yield
    finally:
        embedder.batch_size = batch


@contextmanager
def _point_store(store: VectorStore, name: str, plan: ReadPlan, catalog: Catalog) -> Iterator[PointStore]:
    """Where the rest of the ingest reads and writes points. An embedded collection moves to a
    write process of its own (``write_process``) for a catalog read in processes or one of more
    than ``WRITE_PROCESS_MIN_BATCHES`` batches, images or not: so that building and writing
    points does not hold this process's GIL, and the engine's memory, which grows with the
    collection, is not this process's. Any other store is used here."""
    long = catalog.total > WRITE_PROCESS_MIN_BATCHES * plan.batch_size
    if not (isinstance(store, EdgeStore) and (plan.processes or long)):
        yield store
        return
    store.release(name)
    with WriteProcess(store.root, name) as child:
        yield child


def _jobs(
    store: PointStore,
    name: str,
    catalog: Catalog,
    size: int,
    lock: threading.Lock,
    stored: dict[str, dict[str, Any]],
    report: IngestReport,
    writer: _Writer,
    fresh: bool,
) -> Iterator[ReadJob]:
    """The catalog streamed in batches of rows, each with the content hashes in the store (none
    when the collection was ``fresh``, empty at the start: catalog ids are unique); their stored
    payloads go into ``stored`` (by product id) for the sort stage, taken out again as each batch
    comes back. The catalog's bad rows go straight into the report."""
    for rows, errors in catalog.stream(size):
        report.errors.extend(errors)
        writer.progress(len(errors))
        if not rows:
            continue
        if fresh:
            yield ReadJob(rows, [None] * len(rows))
            continue
        with lock:
            found = store.retrieve(name, [point_id(r.product.id) for r in rows])
        for point in found:
            stored[point.payload.get("product_id")] = point.payload
        yield ReadJob(rows, [stored.get(r.product.id, {}).get("content_hash") for r in rows])


class _Writer:
    """Store writes on their own thread, so writing one batch overlaps embedding the next. At most
    one write waits (memory stays bounded); ``lock`` keeps the store to one call at a time. What a
    write counts is added to the report once it has landed: for a ``WriteProcess``, whose upserts
    return before they land, once the next write returns or the last is settled. (A run into a
    collection that holds products looks up stored hashes before each batch, which settles the
    write before it: only a fresh collection's writes are pipelined.)"""

    def __init__(self, store: PointStore, lock: threading.Lock, on_progress: Callable[[int], None] | None):
        self.store = store
        self.lock = lock
        self.on_progress = on_progress
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shelfsight-write")
        self._pending: tuple[Future[float], Callable[[float], None]] | None = None
        self._unlanded: deque[tuple[Callable[[float], None], float]] = deque()

    def submit(self, write: Callable[[PointStore], None], landed: Callable[[float], None]) -> None:
        """Run ``write`` on the writer thread once the previous write has returned; ``landed`` gets
        the seconds the write itself took (not the time it waited in line)."""
        self.wait()

        def locked() -> float:
            with self.lock:
                started = time.perf_counter()
                write(self.store)
                return time.perf_counter() - started

        self._pending = (self._pool.submit(locked), landed)

    def progress(self, rows: int) -> None:
        if self.on_progress:
            self.on_progress(rows)

    def wait(self) -> None:
        if self._pending is not None:
            future, landed = self._pending
            self._pending = None
            self._unlanded.append((landed, future.result()))
            self._count_landed()

    def settle(self) -> None:
        """Wait for every write to land; the wait counts as the last write's time."""
        self.wait()
        if isinstance(self.store, WriteProcess) and self._unlanded:
            started = time.perf_counter()
            with self.lock:
                self.store.settle()
            landed, seconds = self._unlanded.pop()
            self._unlanded.append((landed, seconds + time.perf_counter() - started))
        self._count_landed()

    def _count_landed(self) -> None:
        # Read without the lock: this runs on the loop's thread while the writer thread is idle
        # (its write returned), so only this thread can change the count meanwhile.
        unanswered = self.store.unanswered if isinstance(self.store, WriteProcess) else 0
        while len(self._unlanded) > unanswered:
            landed, seconds = self._unlanded.popleft()
            landed(seconds)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.settle()
        finally:
            self._pool.shutdown(wait=True)


@dataclass
class _Run:
    """What the loop hands each batch to (``add``): it sorts the batch, launches its embedding
    (the towers queued on the model's device) and finishes it (waits for the vectors, queues the
    writes). On a GPU a batch is finished only once the next one is read and sorted, so that
    reading overlaps the towers; the next batch's towers are queued only after the last batch's
    vectors are back, so no two batches share the device's queue. (A run that fails while a
    batch is pending loses that batch's vectors: the re-run embeds it again.) On a CPU the towers
    run as they are queued, so each batch is finished at once: its writes then run beside the
    reading of the next, not beside its towers (``ReadPlan.between_passes``)."""

    writer: _Writer
    embedder: Embedder
    name: str
    meta: CollectionMeta
    report: IngestReport
    plan: ReadPlan
    pending: Callable[[], None] | None = None

    def add(self, items: Sequence[ReadItem]) -> None:
        batch = self.sort(items)
        self.drain()
        self.pending = self.launch(batch, len(items))
        if not self.embedder.torch_device.startswith("cuda"):
            self.drain()

    def drain(self) -> None:
        """Finish the batch launched last, if any."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending()

    def sort(self, items: Sequence[ReadItem]) -> SortedBatch:
        batch = sort_batch(items, self.meta)
        self.report.errors.extend(batch.errors)
        self.report.unchanged += batch.unchanged
        return batch

    def launch(self, batch: SortedBatch, rows: int) -> Callable[[], None]:
        with _timed(self.report, "embed"):
            pending = queue_items(batch.to_embed, self.embedder, self.meta, self.plan.embed) if batch.to_embed else None

        def finish() -> None:
            name, meta, report, writer = self.name, self.meta, self.report, self.writer
            if batch.payload_only:
                writer.submit(
                    lambda store: _write_payloads(store, name, meta, batch.payload_only),
                    lambda seconds: _landed_payloads(report, len(batch.payload_only), seconds),
                )
            if pending is not None:
                with _timed(report, "embed"):
                    result = pending()
                report.errors.extend(result.errors)
                if result.batch.points:  # a batch whose every image failed to decode has nothing to write
                    writer.submit(
                        lambda store: store.upsert(name, result.batch.points),
                        lambda seconds: _landed(report, result.batch, seconds),
                    )
            writer.progress(rows)

        return finish


def _landed(report: IngestReport, embedded: EmbeddedBatch, seconds: float) -> None:
    report.ingested += len(embedded.points)
    report.truncated += embedded.truncated
    report.text_only += embedded.text_only
    report.time("write", seconds)
    log.debug("upserted %d products (%d so far)", len(embedded.points), report.ingested)


def _landed_payloads(report: IngestReport, count: int, seconds: float) -> None:
    report.updated += count
    report.time("write", seconds)


def _write_payloads(store: PointStore, name: str, meta: CollectionMeta, items: Sequence[ReadItem]) -> None:
    """New catalog fields for products whose vectors stay. When a product's words changed (a new
    brand name), its point is written again with its stored vectors, so the store recomputes its
    BM25 words; otherwise only the payload is replaced."""
    rewords = [i for i in items if BM25 in meta.sparse_vectors and _words_changed(i, meta)]
    if len(rewords) < len(items):
        kept = [i for i in items if i not in rewords]
        store.set_payload(name, {point_id(i.row.product.id): i.payload for i in kept}, overwrite=True)
    if rewords:
        payloads = {point_id(i.row.product.id): i.payload for i in rewords}
        stored = store.retrieve(name, list(payloads), with_vectors=True)
        store.upsert(name, [PointRecord(p.id, p.vectors, payloads[p.id]) for p in stored])


def _words_changed(item: ReadItem, meta: CollectionMeta) -> bool:
    return product_words(item.payload, meta) != product_words(item.stored or {}, meta)


def _finish(
    store: PointStore,
    options: IngestOptions,
    catalog: Catalog,
    report: IngestReport,
    calibrate_with: TextEncoder,
) -> None:
    """Prune products gone from the catalog, build the index once for the whole run, then
    calibrate (``search/relevance.py``) with the tower product texts took: int8 on a CPU where the
    ingest made one, as ``serve`` there embeds query texts (its passes of 32 may round differently).
    Both run even when nothing changed: a run killed after its writes left them to this one (an
    index already built returns in about 6 ms; calibration took 0.4-0.6 s at 480 products here)."""
    name = options.collection
    with _timed(report, "finish"):
        if options.prune:
            keep = {point_id(r.product.id) for rows, _ in catalog.stream() for r in rows}
            gone = [i for i in store.ids(name) if i not in keep]
            store.delete(name, gone)
            report.pruned = len(gone)
        if options.optimize:
            store.optimize(name)
    with _timed(report, "calibrate"):
        vocab = store.vocabulary(name) if isinstance(store, WriteProcess) else None  # made where the store is
        calibrate(store, calibrate_with, name, vocab)


@contextmanager
def _timed(report: IngestReport, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.time(stage, time.perf_counter() - started)
