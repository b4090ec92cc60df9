"""Catalog -> points: read, load images, embed, upsert in batches. Incremental and resumable.

Each product's point id is derived from its catalog id and its payload carries a content hash of
what was embedded (model, text, image bytes), so a re-run embeds only new or changed products and
a run killed half-way finishes the job when started again.

Example::

    report = ingest_catalog("data/sample/catalog.csv", EdgeStore("db"), Embedder("models/demo"))
    print(report.summary())
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from shelfsight.ingest.catalog import Catalog, CatalogRow, Columns, RowError, read_catalog
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import IncompatibleCollectionError
from shelfsight.search.fusion import early_fuse
from shelfsight.search.images import ImageError, ImagePolicy, decode_image, is_url, read_image_bytes
from shelfsight.search.records import point_id
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
        }


@dataclass
class _Prepared:
    """One row after its image was read and (when it must be embedded) decoded."""

    row: CatalogRow
    content_hash: str
    payload: dict[str, Any]
    image: Any = None  # PIL image when it must be embedded
    error: RowError | None = None


def content_hash(model_id: str, text: str, image_bytes: bytes | None, fused_weight: float | None) -> str:
    digest = hashlib.sha256()
    for part in (model_id, f"fused={fused_weight}", text):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(image_bytes or b"")
    return digest.hexdigest()


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


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _payload(row: CatalogRow, digest: str, base_dir: Path) -> dict[str, Any]:
    p = row.product
    image = p.image
    if image and not is_url(image):
        # Stored absolute so the API and the storefront can show it from any working directory.
        image = str((base_dir / Path(image).expanduser()).resolve())
    return {
        **p.fields,
        "product_id": p.id,
        "title": p.title,
        "description": p.description,
        "image": image,
        "has_image": "true" if p.image else "false",
        "content_hash": digest,
    }


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
    name = options.collection

    def prepare(row: CatalogRow, stored_hash: str | None) -> _Prepared:
        image_bytes = None
        if row.product.image:
            try:
                image_bytes = read_image_bytes(row.product.image, catalog.base_dir, options.images)
            except ImageError as exc:
                return _Prepared(row, "", {}, error=RowError(row.row, row.product.id, exc.reason, exc.hint))
        digest = content_hash(meta.model, row.product.text, image_bytes, meta.fused_weight)
        prepared = _Prepared(row, digest, _payload(row, digest, catalog.base_dir))
        if digest != stored_hash and image_bytes is not None:
            try:
                prepared.image = decode_image(image_bytes, options.images, name=row.product.image)
            except ImageError as exc:
                prepared.error = RowError(row.row, row.product.id, exc.reason, exc.hint)
        return prepared

    def submit(pool: ThreadPoolExecutor, batch: Sequence[CatalogRow]) -> list[Future]:
        stored = {
            p.payload.get("product_id"): p.payload
            for p in store.retrieve(name, [point_id(r.product.id) for r in batch])
        }
        futures = []
        for r in batch:
            old = stored.get(r.product.id)
            f = pool.submit(prepare, r, old.get("content_hash") if old else None)
            f.stored_payload = old  # type: ignore[attr-defined]
            futures.append(f)
        return futures

    batches = list(_batches(catalog.rows, options.batch_size))
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        pending = submit(pool, batches[0]) if batches else []
        for index in range(len(batches)):
            current = pending
            # Start reading and decoding the next batch while this one is embedded.
            pending = submit(pool, batches[index + 1]) if index + 1 < len(batches) else []
            _embed_and_upsert(store, embedder, name, meta, current, report)
            if on_progress:
                on_progress(len(current))

    if options.prune:
        keep = {point_id(r.product.id) for r in catalog.rows}
        gone = [p.id for p in store.scroll(name) if p.id not in keep]
        store.delete(name, gone)
        report.pruned = len(gone)
    if options.optimize and (report.ingested or report.updated or report.pruned):
        store.optimize(name)
    report.skipped = len(report.errors)
    report.errors.sort(key=lambda e: e.row)
    report.seconds = time.perf_counter() - started
    return report


def _embed_and_upsert(
    store: VectorStore, embedder: Embedder, name: str, meta: CollectionMeta, futures: list[Future], report: IngestReport
) -> None:
    to_embed: list[_Prepared] = []
    payload_only: list[_Prepared] = []
    for f in futures:
        prepared: _Prepared = f.result()
        stored = f.stored_payload  # type: ignore[attr-defined]
        if prepared.error:
            report.errors.append(prepared.error)
        elif stored and stored.get("content_hash") == prepared.content_hash:
            # Same vectors: fields computed from them (tags) stay; the catalog's own fields are replaced.
            kept = {k: stored[k] for k in meta.derived if k in stored and k not in prepared.payload}
            prepared = replace(prepared, payload={**prepared.payload, **kept})
            if stored == prepared.payload:
                report.unchanged += 1
            else:
                payload_only.append(prepared)
        else:
            to_embed.append(prepared)

    if payload_only:
        store.set_payload(name, {point_id(p.row.product.id): p.payload for p in payload_only}, overwrite=True)
        report.updated += len(payload_only)
    if not to_embed:
        return

    texts = [p.row.product.text for p in to_embed]
    with_text = [i for i, t in enumerate(texts) if t]
    text_vectors = embedder.encode_texts([texts[i] for i in with_text]) if with_text else np.zeros((0, meta.dimension))
    if with_text:
        report.truncated += sum(n > embedder.max_tokens for n in embedder.count_tokens([texts[i] for i in with_text]))
    with_image = [i for i, p in enumerate(to_embed) if p.image is not None]
    image_vectors = (
        embedder.encode_images([to_embed[i].image for i in with_image]) if with_image else np.zeros((0, meta.dimension))
    )

    vectors: list[dict[str, np.ndarray]] = [{} for _ in to_embed]
    for row, i in enumerate(with_text):
        vectors[i]["text"] = text_vectors[row]
    for row, i in enumerate(with_image):
        vectors[i]["image"] = image_vectors[row]
    points = []
    for p, vec in zip(to_embed, vectors, strict=False):
        if meta.fused_weight is not None:
            vec["fused"] = early_fuse(vec.get("image"), vec.get("text"), meta.fused_weight)
        if "image" not in vec:
            report.text_only += 1
        points.append(PointRecord(point_id(p.row.product.id), vec, p.payload))
        p.image = None  # free the pixels
    store.upsert(name, points)
    report.ingested += len(points)
    log.debug("upserted %d products (%d so far)", len(points), report.ingested)
