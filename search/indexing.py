"""Products into points, built one way for every writer: ``shelfsight ingest`` (ingest/pipeline.py)
and the HTTP API's ``PUT /products/{id}`` (search/http_writes.py).

A point is the product's UUIDv5 id, its named vectors (``text``; ``image`` when it has one;
``fused`` when the collection keeps an early-fused vector) and a payload: the product's fields
plus what the library owns (``product_id``, ``title``, ``description``, ``image``, ``has_image``
and the ``content_hash`` of what was embedded: model, fused weight, text, image bytes). The hash
lets a product whose text and image did not change keep its vectors.

Example::

    digest = content_hash(meta.model, product.text, image_bytes, meta.fused_weight)
    payload = product_payload(product, digest, catalog_dir)
    batch = embed_points([product], [image_vector(image_bytes, embedder)], [payload], embedder, meta)
    store.upsert("products", batch.points)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shelfsight.search.embedder import Embedder
from shelfsight.search.errors import BadInputError
from shelfsight.search.fusion import early_fuse
from shelfsight.search.images import ImagePolicy, decode_image, is_url
from shelfsight.search.pixels import prepare_pixels
from shelfsight.search.records import RESERVED_FIELDS, Product, point_id
from shelfsight.search.store.base import CollectionMeta, PointRecord

# Payload keys a product's fields may not use: the library's own and the product's roles.
OWN_FIELDS = (*RESERVED_FIELDS, "title", "description")


@dataclass(frozen=True)
class EmbeddedBatch:
    points: list[PointRecord]
    truncated: int  # texts longer than the text tower reads
    text_only: int  # products without an image vector


def image_vector(
    data: bytes, embedder: Embedder, policy: ImagePolicy = ImagePolicy(), name: str = "image"
) -> np.ndarray:
    """One image's vector made as ingest makes it: the fast pixel path (``search/pixels.py``) where
    the model's processor allows, else the processor itself. So a product written one at a time
    (``PUT /products/{id}``) gets the vectors an ingest of the same row gives it."""
    spec = embedder.pixel_spec
    if spec is None:
        vectors = embedder.encode_images([decode_image(data, policy, name)])
    else:
        vectors = embedder.encode_pixels(prepare_pixels(data, spec, policy, name)[None])
    vector: np.ndarray = vectors[0]
    return vector


def content_hash(model_id: str, text: str, image_bytes: bytes | None, fused_weight: float | None) -> str:
    digest = hashlib.sha256()
    for part in (model_id, f"fused={fused_weight}", text):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(image_bytes or b"")
    return digest.hexdigest()


def product_payload(product: Product, digest: str, base_dir: Path) -> dict[str, Any]:
    """The point's payload; a local image path is stored absolute (relative ones start at ``base_dir``)."""
    image = product.image
    if image and not is_url(image):
        # Stored absolute so the API and the storefront can show it from any working directory.
        image = str((base_dir / Path(image).expanduser()).resolve())
    return {
        **product.fields,
        "product_id": product.id,
        "title": product.title,
        "description": product.description,
        "image": image,
        "has_image": "true" if product.image else "false",
        "content_hash": digest,
    }


def keep_derived(stored: dict[str, Any], payload: dict[str, Any], meta: CollectionMeta) -> dict[str, Any]:
    """``payload`` plus the stored fields computed from the vectors (zero-shot tags), for a product
    whose vectors stay: the catalog's own fields are replaced, the derived ones kept."""
    kept = {k: stored[k] for k in meta.derived if k in stored and k not in payload}
    return {**payload, **kept}


@dataclass(frozen=True)
class TextVectors:
    """Text vectors a caller already has (ingest tokenizes in worker processes): one per product,
    None where it has no text, and how many texts were cut at the token limit."""

    vectors: Sequence[np.ndarray | None]
    truncated: int


def text_vectors(products: Sequence[Product], embedder: Embedder) -> TextVectors:
    """The text tower over the products that have text."""
    texts = [p.text for p in products]
    with_text = [i for i, t in enumerate(texts) if t]
    vectors: list[np.ndarray | None] = [None] * len(products)
    if not with_text:
        return TextVectors(vectors, 0)
    batch = [texts[i] for i in with_text]
    for i, vector in zip(with_text, embedder.encode_texts(batch)):
        vectors[i] = vector
    return TextVectors(vectors, sum(n > embedder.max_tokens for n in embedder.count_tokens(batch)))


def embed_points(
    products: Sequence[Product],
    image_vectors: Sequence[np.ndarray | None],
    payloads: Sequence[dict[str, Any]],
    embedder: Embedder,
    meta: CollectionMeta,
    texts: TextVectors | None = None,
) -> EmbeddedBatch:
    """Points from the image vectors the caller made (None: no image; ingest prepares pixels in
    worker processes, the HTTP API decodes one upload) and the text vectors (``texts``, or the text
    tower here), with the early-fused vector when the collection has one."""
    texts = texts or text_vectors(products, embedder)
    vectors: list[dict[str, np.ndarray]] = [{} for _ in products]
    truncated = texts.truncated
    for i, text_vector in enumerate(texts.vectors):
        if text_vector is not None:
            vectors[i]["text"] = text_vector
    for i, image_vector in enumerate(image_vectors):
        if image_vector is not None:
            vectors[i]["image"] = image_vector
    if meta.fused_weight is not None:
        for vec in vectors:
            vec["fused"] = early_fuse(vec.get("image"), vec.get("text"), meta.fused_weight)
    points = [PointRecord(point_id(p.id), vec, payload) for p, vec, payload in zip(products, vectors, payloads)]
    return EmbeddedBatch(points, truncated, sum("image" not in vec for vec in vectors))


def check_fields(fields: dict[str, Any], meta: CollectionMeta) -> dict[str, Any]:
    """A product's fields checked against the collection's (``meta.fields``), typed as ingest types
    them: numbers as finite floats, keywords as text or lists of text; empty values left out.
    Raises BadInputError naming the field and the fix."""
    out: dict[str, Any] = {}
    settable = {f: kind for f, kind in meta.fields.items() if f not in meta.derived}
    for name, value in fields.items():
        if name in OWN_FIELDS or name in meta.derived:
            raise BadInputError(f"field {name!r} is not a catalog field; Shelfsight sets it itself")
        if name not in settable:
            known = ", ".join(sorted(settable)) or "none"
            raise BadInputError(
                f"unknown field {name!r}; this collection's fields: {known} (a new field comes with an ingest)"
            )
        typed = None if value is None else _typed(name, value, settable[name])
        if typed not in (None, "", []):
            out[name] = typed
    return out


def _typed(name: str, value: Any, kind: str) -> Any:
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInputError(f"field {name!r} is a number; got {value!r}, send a finite number like 19.99")
        return float(value)
    if isinstance(value, bool):
        return "true" if value else "false"  # as ingest stores flags: the engine cannot filter booleans
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadInputError(f"field {name!r} is text; got {value!r}, send a string or a list of strings")
