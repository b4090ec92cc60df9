"""HTTP API over SearchEngine (FastAPI). Library errors become 4xx JSON, never a 500 for bad input.

Run with ``shelfsight serve --db DIR``; the OpenAPI page is at ``/docs``.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from shelfsight.search.engine import FUSION_METHODS, SearchEngine, SearchRequest
from shelfsight.search.errors import (
    BadInputError,
    CollectionNotFoundError,
    IncompatibleCollectionError,
    ModelUnavailableError,
    ProductNotFoundError,
    ShelfsightError,
    StoreUnavailableError,
)
from shelfsight.search.settings import DEFAULT_FUSION, MAX_UPLOAD_BYTES, Settings

_STATUS = [
    (ProductNotFoundError, 404),
    (CollectionNotFoundError, 404),
    (BadInputError, 400),
    (IncompatibleCollectionError, 409),
    (ModelUnavailableError, 503),
    (StoreUnavailableError, 503),
]


class SearchBody(BaseModel):
    q: str | None = Field(
        None, description='query text; syntax: "red bag + https://.../photo.jpg", "2:red", "-striped"'
    )
    image_base64: str | None = Field(None, description="query image, base64-encoded bytes")
    filters: list[str] = Field(default_factory=list, description="e.g. ['category=shoe', 'price<=40']")
    fusion: str | None = Field(None, description=f"one of {', '.join(FUSION_METHODS)}; default {DEFAULT_FUSION}")
    vectors: list[str] = Field(default_factory=lambda: ["image", "text"])
    text_weight: float | None = None
    image_weight: float | None = None
    min_score: float | None = None
    limit: int = Field(10, ge=1, le=200)
    offset: int = Field(0, ge=0)


class _EngineHolder:
    """The app's engine, opened on first use; a lock keeps two first requests from opening the
    embedded store twice (the second would find it locked)."""

    def __init__(self, settings: Settings | None, engine: SearchEngine | None):
        self.settings = settings
        self.engine = engine
        self.lock = threading.Lock()

    def __call__(self) -> SearchEngine:
        with self.lock:
            if self.engine is None:
                self.engine = SearchEngine.open(self.settings or Settings.from_env())
            return self.engine


def create_app(settings: Settings | None = None, engine: SearchEngine | None = None) -> FastAPI:
    """An app over ``engine`` (or one opened from ``settings`` on first request)."""
    app = FastAPI(title="Shelfsight", description="Multimodal product search", version="0.1.0")
    get_engine = _EngineHolder(settings, engine)
    app.add_exception_handler(ShelfsightError, _library_error)  # type: ignore[arg-type]

    @app.get("/health")
    def health() -> dict[str, Any]:
        e = get_engine()
        return {"status": "ok", "collection": e.collection, "count": e.count(), "model": e.meta.model}

    _add_search_routes(app, get_engine)
    _add_product_routes(app, get_engine)
    return app


async def _library_error(request: Request, exc: ShelfsightError) -> JSONResponse:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)


def _run_search(engine: SearchEngine, body: SearchBody, image: bytes | None) -> dict[str, Any]:
    started = time.perf_counter()
    request = SearchRequest(
        filters=body.filters,
        fusion=body.fusion,
        vectors=tuple(body.vectors) or None,
        text_weight=body.text_weight,
        image_weight=body.image_weight,
        min_score=body.min_score,
        limit=body.limit,
        offset=body.offset,
    )
    hits = engine.run(body.q, image, request)
    return {"hits": [h.to_dict() for h in hits], "took_ms": round((time.perf_counter() - started) * 1000, 2)}


def _decode_base64_image(data: str) -> bytes:
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInputError("image_base64 is not valid base64") from None
    if len(image) > MAX_UPLOAD_BYTES:
        raise BadInputError(f"image is over the {MAX_UPLOAD_BYTES}-byte upload cap")
    return image


def _add_search_routes(app: FastAPI, get_engine: _EngineHolder) -> None:
    @app.get("/search")
    def search_get(
        q: str,
        filter: list[str] = Query(default_factory=list, description="repeatable: category=shoe, price<=40"),
        fusion: str | None = None,
        vectors: str = "image,text",
        text_weight: float | None = None,
        image_weight: float | None = None,
        min_score: float | None = None,
        limit: int = Query(10, ge=1, le=200),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        body = SearchBody(
            q=q,
            filters=filter,
            fusion=fusion,
            vectors=[v for v in vectors.split(",") if v],
            text_weight=text_weight,
            image_weight=image_weight,
            min_score=min_score,
            limit=limit,
            offset=offset,
        )
        return _run_search(get_engine(), body, None)

    @app.post("/search")
    def search_post(body: SearchBody) -> dict[str, Any]:
        image = _decode_base64_image(body.image_base64) if body.image_base64 else None
        return _run_search(get_engine(), body, image)

    @app.post("/search/upload")
    async def search_upload(
        image: UploadFile = File(..., description="query image"),
        q: str | None = Form(None),
        fusion: str | None = Form(None),
        vectors: str = Form("image,text"),
        limit: int = Form(10),
    ) -> dict[str, Any]:
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadInputError(f"image is over the {MAX_UPLOAD_BYTES}-byte upload cap")
        body = SearchBody(q=q, fusion=fusion, vectors=[v for v in vectors.split(",") if v], limit=limit)
        return _run_search(get_engine(), body, data)


def _add_product_routes(app: FastAPI, get_engine: _EngineHolder) -> None:
    @app.get("/products/{product_id}")
    def product(product_id: str) -> dict[str, Any]:
        p = get_engine().get(product_id)
        return {"id": p.id, "title": p.title, "description": p.description, "image": p.image, **p.fields}

    @app.get("/products/{product_id}/similar")
    def similar(
        product_id: str, limit: int = Query(10, ge=1, le=200), filter: list[str] = Query(default_factory=list)
    ) -> dict[str, Any]:
        return {"hits": [h.to_dict() for h in get_engine().similar(product_id, filters=filter, limit=limit)]}

    @app.get("/facets")
    def facets(
        q: str | None = None,
        field: list[str] = Query(default_factory=list),
        filter: list[str] = Query(default_factory=list),
    ) -> dict[str, Any]:
        counts = get_engine().facets(field or None, q, filters=filter)
        return {f: [{"value": v, "count": c} for v, c in pairs] for f, pairs in counts.items()}
