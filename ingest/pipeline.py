"""Catalog -> points, in stages joined by typed records, clip-retrieval style:

    rows (CatalogRow) --read_item--> ReadItem --sort_batch--> SortedBatch --embed_batch--> points --write--> store

``read_item`` reads an image's bytes, hashes what would be embedded and decodes the image only
when the hash changed; it runs in worker threads, a batch ahead of embedding. ``sort_batch``
splits a batch into new or changed products, payload-only updates and unchanged ones.
``embed_batch`` runs both towers; the write stage upserts. ``ingest_catalog`` is the runner: it
times each stage (``IngestReport.stage_seconds``).

Each product's point id is derived from its catalog id and its payload carries a content hash of
what was embedded (model, text, image bytes), so a re-run embeds only new or changed products and
a run killed half-way finishes the job when started again.

Example::

    report = ingest_catalog("data/sample/catalog.csv", EdgeStore("db"), Embedder("models/demo"))
    print(report.summary())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from shelfsight.ingest.catalog import Catalog, CatalogRow, Columns, RowError, read_catalog
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import IncompatibleCollectionError
from shelfsight.search.images import ImageError, ImagePolicy, decode_image, read_image_bytes
from shelfsight.search.indexing import EmbeddedBatch, content_hash, embed_points, keep_derived, product_payload
from shelfsight.search.lexical import BM25, product_words
from shelfsight.search.records import point_id
from shelfsight.search.relevance import calibrate
from shelfsight.search.settings import DEFAULT_COLLECTION
from shelfsight.search.store.base import CollectionMeta, PointRecord, VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    collection: str = DEFAULT_COLLECTION
    batch_size: int = 32
    workers: int = 2
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
    # Seconds per stage: "read" (image reading, hashing and decoding, summed over worker threads,
    # which overlap embedding), "embed", "write" (upserts and payload updates), "finish" (prune, index),
    # "calibrate" (the vocabulary and relevance floor, search/relevance.py).
    stage_seconds: dict[str, float] = field(default_factory=dict)

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
        }

    def time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


@dataclass(frozen=True)
class ReadItem:
    """One row after the read stage: its content hash and payload, its decoded image when it must
    be embedded, or the error that skips it. ``stored`` is the payload in the store (None: new)."""

    row: CatalogRow
    stored: dict[str, Any] | None
    content_hash: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    image: Image.Image | None = None
    error: RowError | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class SortedBatch:
    """A batch split by what each product needs."""

    to_embed: list[ReadItem]
    payload_only: list[ReadItem]  # same vectors, new catalog fields
    unchanged: int
    errors: list[RowError]


@dataclass(frozen=True)
class _ReadContext:
    base_dir: Path
    policy: ImagePolicy
    meta: CollectionMeta


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


def read_item(row: CatalogRow, stored: dict[str, Any] | None, ctx: _ReadContext) -> ReadItem:
    """Read stage: image bytes, content hash, payload; decode only when the hash changed."""
    started = time.perf_counter()
    image_bytes = None
    try:
        if row.product.image:
            image_bytes = read_image_bytes(row.product.image, ctx.base_dir, ctx.policy)
        digest = content_hash(ctx.meta.model, row.product.text, image_bytes, ctx.meta.fused_weight)
        image = None
        if image_bytes is not None and (stored is None or stored.get("content_hash") != digest):
            image = decode_image(image_bytes, ctx.policy, name=row.product.image or "image")
    except ImageError as exc:
        error = RowError(row.row, row.product.id, exc.reason, exc.hint)
        return ReadItem(row, stored, error=error, seconds=time.perf_counter() - started)
    payload = product_payload(row.product, digest, ctx.base_dir)
    return ReadItem(row, stored, digest, payload, image, seconds=time.perf_counter() - started)


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


def embed_batch(items: Sequence[ReadItem], embedder: Embedder, meta: CollectionMeta) -> EmbeddedBatch:
    """Embed stage: both towers over the batch, the early-fused vector when the collection has one."""
    products = [item.row.product for item in items]
    return embed_points(products, [item.image for item in items], [item.payload for item in items], embedder, meta)


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
    report = IngestReport(errors=list(catalog.errors))
    meta = ensure_collection(store, embedder, options.collection, catalog.fields, options.fused_weight, options.reindex)
    ctx = _ReadContext(catalog.base_dir, options.images, meta)
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        for items in _read_ahead(pool, store, options.collection, catalog.rows, options.batch_size, ctx):
            report.time("read", sum(item.seconds for item in items))
            _embed_and_write(store, embedder, options.collection, meta, items, report)
            if on_progress:
                on_progress(len(items))
    with _timed(report, "finish"):
        _finish(store, options, catalog, report)
    if report.ingested or report.updated or report.pruned or not meta.vocabulary:
        with _timed(report, "calibrate"):
            calibrate(store, embedder, options.collection)
    report.skipped = len(report.errors)
    report.errors.sort(key=lambda e: e.row)
    report.seconds = time.perf_counter() - started
    return report


def _read_ahead(
    pool: ThreadPoolExecutor,
    store: VectorStore,
    name: str,
    rows: Sequence[CatalogRow],
    size: int,
    ctx: _ReadContext,
) -> Iterator[list[ReadItem]]:
    """Batches of read items; the next batch is read and decoded while this one is embedded."""

    def submit(batch: Sequence[CatalogRow]) -> list[Future[ReadItem]]:
        ids = [point_id(r.product.id) for r in batch]
        stored = {p.payload.get("product_id"): p.payload for p in store.retrieve(name, ids)}
        return [pool.submit(read_item, r, stored.get(r.product.id), ctx) for r in batch]

    batches = [rows[start : start + size] for start in range(0, len(rows), size)]
    pending = submit(batches[0]) if batches else []
    for index in range(len(batches)):
        current = pending
        pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
        yield [f.result() for f in current]


def _embed_and_write(
    store: VectorStore,
    embedder: Embedder,
    name: str,
    meta: CollectionMeta,
    items: Sequence[ReadItem],
    report: IngestReport,
) -> None:
    batch = sort_batch(items, meta)
    report.errors.extend(batch.errors)
    report.unchanged += batch.unchanged
    if batch.payload_only:
        with _timed(report, "write"):
            _write_payloads(store, name, meta, batch.payload_only)
        report.updated += len(batch.payload_only)
    if not batch.to_embed:
        return
    with _timed(report, "embed"):
        embedded = embed_batch(batch.to_embed, embedder, meta)
    with _timed(report, "write"):
        store.upsert(name, embedded.points)
    report.ingested += len(embedded.points)
    report.truncated += embedded.truncated
    report.text_only += embedded.text_only
    log.debug("upserted %d products (%d so far)", len(embedded.points), report.ingested)


def _write_payloads(store: VectorStore, name: str, meta: CollectionMeta, items: Sequence[ReadItem]) -> None:
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


def _finish(store: VectorStore, options: IngestOptions, catalog: Catalog, report: IngestReport) -> None:
    """Prune products gone from the catalog, then build the index once for the whole run."""
    name = options.collection
    if options.prune:
        keep = {point_id(r.product.id) for r in catalog.rows}
        gone = [p.id for p in store.scroll(name) if p.id not in keep]
        store.delete(name, gone)
        report.pruned = len(gone)
    if options.optimize and (report.ingested or report.updated or report.pruned):
        store.optimize(name)


@contextmanager
def _timed(report: IngestReport, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.time(stage, time.perf_counter() - started)
