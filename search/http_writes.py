"""Updates while serving: ``PUT /products/{id}`` and ``DELETE /products/{id}``.

Both need the admin key: a server started without ``SHELFSIGHT_ADMIN_KEY`` refuses every write
with 403, and a request without the key gets 401 (``http_guard.ApiKeyGuard``). A PUT builds the
point as ingest does (``indexing``: payload, content hash, the ``fused`` vector when the collection
has one) with the serving model, and upserts it through the store; a product whose text and image
did not change keeps its vectors and only its fields are written. New points stay out of the
HNSW index until the next ingest builds it; searches find them meanwhile. While ``ingest
--reindex`` rebuilds the store beside the server (``store/generations.py``), writes get a 503:
they would be lost when the server switches to the rebuilt store.

The body is the product as ``GET /products/{id}`` returns it: ``title``, ``description`` and the
collection's fields at the top level, with the image as ``image`` (a public http(s) URL; a
server path only with ``serve --allow-local-paths``) or ``image_base64``, or as a multipart
upload (part ``product``: that JSON; part ``image``: the file). Leaving the image out keeps the
stored one; ``"image": null`` removes it. Uploaded images are kept beside the embedded store
(``DB/COLLECTION/uploads/``), where ``GET /products/{id}/image`` serves them from.

Example::

    curl -X PUT http://127.0.0.1:8000/products/P1 -H "X-API-Key: $SHELFSIGHT_ADMIN_KEY" \\
         -H 'content-type: application/json' -d '{"title": "red tote", "price": 19.5}'
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from shelfsight.search.engine import SearchEngine
from shelfsight.search.errors import BadInputError, StoreUnavailableError
from shelfsight.search.http_guard import ErrorBody
from shelfsight.search.images import (
    QUERY_POLICY,
    ImagePolicy,
    image_from_base64,
    is_url,
    read_image_bytes,
)
from shelfsight.search.indexing import (
    check_fields,
    content_hash,
    embed_points,
    image_vector,
    keep_derived,
    product_payload,
)
from shelfsight.search.records import Product, point_id
from shelfsight.search.settings import MAX_UPLOAD_BYTES
from shelfsight.search.store.base import PointRecord
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.generations import rebuilding
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

# Images a PUT names are read and decoded as ingest reads them (same caps and decode budget), with
# the query routes' deadline for a URL and their two decode slots.
WRITE_POLICY = ImagePolicy(deadline=QUERY_POLICY.deadline, decode_slots=QUERY_POLICY.decode_slots)
MAX_TEXT_CHARS = 10_000
_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}
_SUFFIXES |= {"TIFF": ".tiff"}
_DOCUMENTED = {
    400: "bad input: the detail names the field or the image and the fix",
    401: "the admin key is needed (SHELFSIGHT_ADMIN_KEY), in X-API-Key or Authorization: Bearer",
    403: "this server takes no writes: it was started without SHELFSIGHT_ADMIN_KEY",
    404: "no such product or collection",
    405: "method not allowed",
    409: "the collection was built with another model",
    413: "request body over the size limit",
    415: "the body is neither application/json nor multipart/form-data",
    422: "the body does not match the schema",
    503: "the store or the model cannot be reached, the store is damaged, or a rebuild (ingest --reindex) runs",
}
FieldValue = StrictBool | float | str | list[str] | None


def image_url(product_id: str) -> str:
    """Where the API serves a product's image (never the server's own path)."""
    return f"/products/{urllib.parse.quote(product_id, safe='')}/image"


class ProductBody(BaseModel):
    """A product to store, shaped like ``GET /products/{id}``'s answer: the collection's fields
    (price, category, ...) sit at the top level beside these."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FieldValue] = Field(init=False)

    id: str | None = Field(None, description="optional; when given it must be the id in the path")
    title: str = Field("", max_length=MAX_TEXT_CHARS)
    description: str = Field("", max_length=MAX_TEXT_CHARS)
    image: str | None = Field(
        None,
        max_length=4096,
        description="a public http(s) URL of the image; left out, the stored image stays; null removes it",
    )
    image_base64: str | None = Field(None, max_length=MAX_UPLOAD_BYTES * 4 // 3 + 4, description="image bytes")


class PutResult(BaseModel):
    id: str
    created: bool = Field(description="the product was new")
    embedded: bool = Field(description="its text or image changed, so it was embedded again")
    changed: bool = Field(True, description="anything stored changed (false: the product was already so)")
    truncated: bool = Field(False, description="its text was over the model's token limit and was cut")


class DeleteResult(BaseModel):
    id: str
    deleted: bool


@dataclass(frozen=True)
class _Image:
    """The image a PUT asks for: its bytes (None: no image) and what the payload records."""

    data: bytes | None = None
    ref: str | None = None
    upload: Path | None = None  # where an uploaded image is kept


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["product"],
    "properties": {
        "product": {"type": "string", "description": "the product as JSON (the application/json body)"},
        "image": {"type": "string", "format": "binary", "description": "the product's image"},
    },
}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ProductBody.model_json_schema()},
        "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
    },
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _DOCUMENTED[code]} for code in codes}


def add_write_routes(app: FastAPI, get_engine: Callable[[], SearchEngine]) -> None:
    writer = ProductWriter()

    @app.put(
        "/products/{product_id}",
        response_model=PutResult,
        responses=_errors(400, 401, 403, 404, 405, 409, 413, 415, 422, 503),
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def put_product(product_id: str, request: Request) -> PutResult:
        """Create or replace a product (admin key): embedded with the serving model, searchable at once."""
        body, upload = await _read_body(request)
        return await run_in_threadpool(lambda: writer.put(get_engine(), product_id, body, upload))

    @app.delete(
        "/products/{product_id}",
        response_model=DeleteResult,
        responses=_errors(400, 401, 403, 404, 405, 409, 413, 422, 503),
    )
    def delete_product(product_id: str) -> DeleteResult:
        """Remove a product (admin key), and its uploaded image."""
        return writer.delete(get_engine(), product_id)


async def _read_body(request: Request) -> tuple[ProductBody, bytes | None]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            return ProductBody.model_validate_json(await request.body()), None
        if kind == "multipart/form-data":
            async with request.form(max_files=1, max_fields=1) as form:
                product, image = form.get("product"), form.get("image")
                if not isinstance(product, str):
                    raise BadInputError("a multipart PUT needs a 'product' part holding the product as JSON")
                upload = await image.read(MAX_UPLOAD_BYTES + 1) if isinstance(image, UploadFile) else None
            if upload is not None and len(upload) > MAX_UPLOAD_BYTES:
                raise BadInputError(f"image is over the {MAX_UPLOAD_BYTES}-byte upload cap")
            return ProductBody.model_validate_json(product), upload
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    raise HTTPException(
        415, "send the product as application/json, or as multipart/form-data with parts 'product' and 'image'"
    )


class ProductWriter:
    """PUT and DELETE against the serving engine's store, one write at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def put(self, engine: SearchEngine, product_id: str, body: ProductBody, upload: bytes | None) -> PutResult:
        if body.id is not None and body.id != product_id:
            raise BadInputError(f"the body's id {body.id!r} is not the path's {product_id!r}; send one id")
        meta, name, pid = engine.meta, engine.collection, point_id(product_id)
        fields = check_fields(dict(body.model_extra or {}), meta)
        with self.lock:
            _refuse_during_rebuild(engine)
            found = engine.store.retrieve(name, [pid], with_vectors=True)
            stored = found[0].payload if found else None
            image = _image(engine, product_id, body, upload, stored)
            product = Product(product_id, body.title.strip(), body.description.strip(), image.ref, fields)
            if not product.text and image.data is None:
                raise BadInputError("nothing to embed: give the product a title, a description or an image")
            digest = content_hash(meta.model, product.text, image.data, meta.fused_weight)
            payload = product_payload(product, digest, Path.cwd())
            same = stored is not None and stored.get("content_hash") == digest
            changed, truncated = not same, False
            vector = None if same or image.data is None else image_vector(image.data, engine.embedder, WRITE_POLICY)
            if image.upload is not None and image.data is not None:
                _keep(image.upload, image.data)
            if stored is not None and same:
                payload = keep_derived(stored, payload, meta)
                changed = payload != stored
                if changed:  # whole, with its vectors: what the store derives from the payload follows
                    engine.store.upsert(name, [PointRecord(pid, found[0].vectors, payload)])
            else:
                embedded = embed_points([product], [vector], [payload], engine.embedder, meta)
                engine.store.upsert(name, embedded.points)
                truncated = embedded.truncated > 0
            _drop_uploads(engine, product_id, keep=image.upload)
        return PutResult(id=product_id, created=stored is None, embedded=not same, changed=changed, truncated=truncated)

    def delete(self, engine: SearchEngine, product_id: str) -> DeleteResult:
        with self.lock:
            _refuse_during_rebuild(engine)
            engine.get(product_id)  # ProductNotFoundError (404) when there is none
            engine.store.delete(engine.collection, [point_id(product_id)])
            _drop_uploads(engine, product_id, keep=None)
        return DeleteResult(id=product_id, deleted=True)


def _refuse_during_rebuild(engine: SearchEngine) -> None:
    """A write into a store that ``ingest --reindex`` is rebuilding would be lost at the switch."""
    db = engine.settings.db
    if isinstance(engine.store, EdgeStore) and db and rebuilding(db, engine.collection):
        raise StoreUnavailableError(
            "an `ingest --reindex` is rebuilding this store beside the live one, and a write now would be "
            "lost when the server switches to the rebuilt one: send it again after the rebuild"
        )


def _image(
    engine: SearchEngine, product_id: str, body: ProductBody, upload: bytes | None, stored: dict[str, Any] | None
) -> _Image:
    """The image the PUT asks for: an upload, base64, a URL (or allowed path), none, or the stored one."""
    given = body.model_fields_set & {"image", "image_base64"}
    if len([x for x in (upload, body.image, body.image_base64) if x is not None]) > 1:
        raise BadInputError("give one image: an upload, image_base64 or image")
    if upload is not None or body.image_base64 is not None:
        data = upload if upload is not None else image_from_base64(body.image_base64 or "")
        path = _upload_path(engine, product_id, data)
        return _Image(data, str(path), path)
    if "image" in given and body.image is None:
        return _Image()  # "image": null removes it
    ref = body.image if "image" in given and body.image != image_url(product_id) else None
    if ref is None:  # left out (or this API's own link to it): the stored image stays
        ref = (stored or {}).get("image")
        if not ref:
            return _Image()
        kept = Path(ref) if not is_url(ref) and _uploads_dir(engine) in Path(ref).parents else None
        return _Image(read_image_bytes(ref, Path.cwd(), WRITE_POLICY), ref, kept)
    if not is_url(ref) and not engine.allow_local_paths:
        raise BadInputError(
            f"image {ref!r} is a local path, and local paths are off here; "
            "upload the image, send it as image_base64, or give a public http(s) URL"
        )
    return _Image(read_image_bytes(ref, Path.cwd(), WRITE_POLICY), ref)


def _uploads_dir(engine: SearchEngine) -> Path | None:
    """Where uploaded images are kept: inside the embedded store's collection folder."""
    if not isinstance(engine.store, EdgeStore):
        return None
    return engine.store.root.resolve() / engine.collection / "uploads"  # the engine's own generation


def _upload_path(engine: SearchEngine, product_id: str, data: bytes) -> Path:
    """The file an uploaded image is kept in: named by the product and the bytes' hash."""
    folder = _uploads_dir(engine)
    if folder is None:
        raise BadInputError("uploaded images are kept beside an embedded store; with a Qdrant server give an image URL")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            suffix = _SUFFIXES.get(opened.format or "")
    except (OSError, ValueError, Image.DecompressionBombError):
        suffix = None
    if suffix is None:
        raise BadInputError("the uploaded image is not a JPEG, PNG, WebP, GIF, BMP or TIFF file")
    return folder / f"{point_id(product_id)}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"


def _keep(path: Path, data: bytes) -> None:
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)  # never a half-written image under the name a payload records


def _drop_uploads(engine: SearchEngine, product_id: str, keep: Path | None) -> None:
    """Remove the product's uploaded images other than ``keep``."""
    folder = _uploads_dir(engine)
    if folder is None or not folder.is_dir():
        return
    for old in folder.glob(f"{point_id(product_id)}-*"):
        if old != keep:
            old.unlink(missing_ok=True)
