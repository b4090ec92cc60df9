"""HTTP API over SearchEngine (FastAPI). Every bad input is a 4xx ``{"error", "detail"}``.

Run with ``shelfsight serve --db DIR``; the OpenAPI page is at ``/docs`` and documents every
status each operation returns. What one request may cost is bounded: the body (``http_guard``),
the image's decode memory and concurrent decodes (``images.QUERY_POLICY``), the query's parts
and length (``query``), the page and offset (``engine``). Queries never read the server's files:
images come as uploads, base64 or public URLs, and products carry ``/products/{id}/image``.

Example::

    app = create_app(Settings(db="db"), options=ServeOptions(read_key="s3cret"))
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from PIL import Image
from pydantic import BaseModel, Field
from shelfsight.search.batching import batch_query_texts, limit_torch_threads
from shelfsight.search.boosts import EXAMPLES as BOOST_EXAMPLES
from shelfsight.search.boosts import MAX_BOOSTS
from shelfsight.search.engine import FUSION_METHODS, MAX_OFFSET, SearchEngine, SearchRequest
from shelfsight.search.errors import (
    BadInputError,
    CollectionNotFoundError,
    IncompatibleCollectionError,
    ModelUnavailableError,
    ProductNotFoundError,
    ShelfsightError,
    StoreUnavailableError,
)
from shelfsight.search.http_catalog import add_catalog_route
from shelfsight.search.http_docs import add_offline_docs
from shelfsight.search.http_guard import (
    ApiKeyGuard,
    BodyLimit,
    ErrorBody,
    RedactingFilter,
    ServeOptions,
    json_h11_protocol,
    limit_malloc_arenas,
)
from shelfsight.search.http_swap import add_generation_watch
from shelfsight.search.http_writes import add_write_routes, image_url
from shelfsight.search.images import ALLOWED_FORMATS, QUERY_POLICY, image_from_base64, is_url
from shelfsight.search.query import MAX_QUERY_CHARS
from shelfsight.search.records import Hit
from shelfsight.search.redaction import redact
from shelfsight.search.settings import DEFAULT_FUSION, MAX_UPLOAD_BYTES, Settings
from starlette.exceptions import HTTPException

log = logging.getLogger("shelfsight.http")

_STATUS = [
    (ProductNotFoundError, 404),
    (CollectionNotFoundError, 404),
    (BadInputError, 400),
    (IncompatibleCollectionError, 409),
    (ModelUnavailableError, 503),
    (StoreUnavailableError, 503),
]
MAX_PAGE = 200
MAX_FILTERS = 32


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation can return, all with ``ErrorBody``."""
    text = {
        400: "bad input: the detail names the item and the fix",
        401: "an API key is needed (SHELFSIGHT_API_KEY / SHELFSIGHT_ADMIN_KEY is set)",
        404: "no such product or collection",
        405: "method not allowed",
        409: "the collection was built with another model",
        413: "request body over the size limit",
        422: "a parameter has the wrong type or is out of range",
        503: "the store or the model cannot be reached, or the store is damaged",
    }
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


_COMMON = (401, 405, 409, 503)
_QUERY_ERRORS = _errors(400, 404, 413, 422, *_COMMON)
_PRODUCT_ERRORS = _errors(400, 404, 422, *_COMMON)


class SearchBody(BaseModel):
    q: str | None = Field(
        None,
        max_length=MAX_QUERY_CHARS,
        description='query text; syntax: "red bag + https://.../photo.jpg", "2:red", "-striped"',
    )
    image_base64: str | None = Field(
        None, max_length=MAX_UPLOAD_BYTES * 4 // 3 + 4, description="query image, base64-encoded bytes"
    )
    filters: list[str] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="e.g. ['category=shoe', 'price<=40']"
    )
    fusion: str | None = Field(None, description=f"one of {', '.join(FUSION_METHODS)}; default {DEFAULT_FUSION}")
    vectors: list[str] = Field(
        default_factory=list, max_length=3, description="image, text, bm25; default: all the collection has"
    )
    text_weight: float | None = Field(None, ge=0, allow_inf_nan=False)
    image_weight: float | None = Field(None, ge=0, allow_inf_nan=False)
    min_score: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)
    limit: int = Field(10, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    correct: bool = Field(True, description="correct words the catalog does not have (false: search as typed)")
    diversity: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="0-1: spread the page (MMR)")
    boost: list[str] = Field(
        default_factory=list, max_length=MAX_BOOSTS, description=f"shop signals, e.g. {BOOST_EXAMPLES}"
    )


class _EngineHolder:
    """The app's engine, opened on first use; a lock keeps two first requests from opening the
    embedded store twice (the second would find it locked)."""

    def __init__(self, settings: Settings | None, engine: SearchEngine | None, options: ServeOptions):
        self.settings = settings
        self.options = options
        self.engine = self._harden(engine) if engine is not None else None
        self.lock = threading.Lock()

    def _harden(self, engine: SearchEngine) -> SearchEngine:
        engine.allow_local_paths = self.options.allow_local_paths
        engine.image_policy = QUERY_POLICY
        tower = batch_query_texts(engine, self.options.int8_queries, self.options.text_process)  # shared passes
        log.info("serving %s: %s", engine.collection, tower)
        return engine

    def __call__(self) -> SearchEngine:
        with self.lock:
            if self.engine is None:
                self.engine = self._harden(SearchEngine.open(self.settings or Settings.from_env()))
            return self.engine

    def swap(self, engine: SearchEngine) -> SearchEngine | None:
        """Serve ``engine`` from now on; returns the old one, which requests may still be using
        (``http_swap`` closes it after they finish)."""
        engine = self._harden(engine)
        with self.lock:
            old, self.engine = self.engine, engine
        return old


def create_app(
    settings: Settings | None = None, engine: SearchEngine | None = None, options: ServeOptions | None = None
) -> FastAPI:
    """An app over ``engine`` (or one opened from ``settings`` on first request)."""
    options = options or ServeOptions()
    app = FastAPI(
        title="Shelfsight", description="Multimodal product search", version="0.1.0", docs_url=None, redoc_url=None
    )
    add_offline_docs(app)  # /docs and /redoc without a CDN (http_docs.py)
    get_engine = _EngineHolder(settings, engine, options)
    app.add_exception_handler(ShelfsightError, _library_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/health", responses=_errors(401, 405, 409, 503))
    def health() -> dict[str, Any]:
        e = get_engine()
        return {"status": "ok", "collection": e.collection, "count": e.count(), "model": e.meta.model}

    _add_search_routes(app, get_engine)
    _add_product_routes(app, get_engine)
    add_write_routes(app, get_engine)  # PUT and DELETE /products/{id}, admin key only (http_writes.py)
    add_catalog_route(app, get_engine)  # GET /catalog: fields and ranges for filters (http_catalog.py)
    add_generation_watch(app, get_engine)  # blue/green: a rebuilt store generation is switched to (http_swap.py)
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(ApiKeyGuard, options=options)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    return app


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": redact(detail)}, status_code=status, headers=headers)


async def _library_error(request: Request, exc: ShelfsightError) -> JSONResponse:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    return _error(status, type(exc).__name__, str(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return _error(422, "ValidationError", "; ".join(problems) + " (see /docs for each parameter's type and range)")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    try:
        name = HTTPStatus(exc.status_code).phrase.replace(" ", "")
    except ValueError:
        name = "HTTPError"
    return _error(exc.status_code, name, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, redact(repr(exc)))
    return _error(500, "InternalError", "the server failed on this request; its log has the details")


def _public_hit(hit: Hit) -> dict[str, Any]:
    out = hit.to_dict()
    if out["payload"].get("image"):
        out["payload"] = {**out["payload"], "image": image_url(hit.id)}
    return out


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
        correct=body.correct,
        diversity=body.diversity,
        boosts=tuple(body.boost),
    )
    answer = engine.answer(body.q, image, request)
    return {
        "hits": [_public_hit(h) for h in answer.hits],
        "showing_results_for": answer.showing_results_for,
        "no_close_matches": answer.no_close_matches,
        "exact_match": answer.exact_match,
        "took_ms": round((time.perf_counter() - started) * 1000, 2),
    }


def _vector_names(vectors: str) -> list[str]:
    return [v for v in vectors.split(",") if v][:3]


# List parameters default to Query([]), not default_factory=list: pydantic inspects a default
# factory's signature on every request, which took about a tenth of the server's GIL time under 16
# clients (py-spy). FastAPI copies a default before each use, so no request shares the list.
def _add_search_routes(app: FastAPI, get_engine: _EngineHolder) -> None:
    @app.get("/search", responses=_QUERY_ERRORS)
    def search_get(
        q: str = Query(..., max_length=MAX_QUERY_CHARS),
        filter: list[str] = Query([], max_length=MAX_FILTERS, description="repeatable: category=shoe, price<=40"),
        fusion: str | None = None,
        vectors: str = Query("", max_length=64, description="image,text,bm25; default: all the collection has"),
        text_weight: float | None = Query(None, ge=0, allow_inf_nan=False),
        image_weight: float | None = Query(None, ge=0, allow_inf_nan=False),
        min_score: float | None = Query(None, ge=-1, le=1, allow_inf_nan=False),
        limit: int = Query(10, ge=1, le=MAX_PAGE),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        correct: bool = True,
        diversity: float | None = Query(None, ge=0, le=1, allow_inf_nan=False),
        boost: list[str] = Query([], max_length=MAX_BOOSTS, description="repeatable: stock=in:0.5"),
    ) -> dict[str, Any]:
        body = SearchBody(
            q=q,
            filters=filter,
            fusion=fusion,
            vectors=_vector_names(vectors),
            text_weight=text_weight,
            image_weight=image_weight,
            min_score=min_score,
            limit=limit,
            offset=offset,
            correct=correct,
            diversity=diversity,
            boost=boost,
        )
        return _run_search(get_engine(), body, None)

    @app.post("/search", responses=_QUERY_ERRORS)
    def search_post(body: SearchBody) -> dict[str, Any]:
        image = image_from_base64(body.image_base64) if body.image_base64 else None
        return _run_search(get_engine(), body, image)

    @app.post("/search/upload", responses=_QUERY_ERRORS)
    async def search_upload(
        image: UploadFile = File(..., description="query image"),
        q: str | None = Form(None, max_length=MAX_QUERY_CHARS),
        fusion: str | None = Form(None),
        vectors: str = Form("", max_length=64),
        limit: int = Form(10, ge=1, le=MAX_PAGE),
    ) -> dict[str, Any]:
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadInputError(f"image is over the {MAX_UPLOAD_BYTES}-byte upload cap")
        body = SearchBody(q=q, fusion=fusion, vectors=_vector_names(vectors), limit=limit)
        # Decoding and embedding block: run them off the event loop like the other routes.
        return await run_in_threadpool(lambda: _run_search(get_engine(), body, data))


_IMAGE_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}
_IMAGE_TYPES |= {"WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}


def _image_response(product_id: str, ref: str | None) -> Response:
    """The product's stored image: a redirect to its public URL, or the catalog file's bytes."""
    if not ref:
        raise ProductNotFoundError(f"product {product_id!r} has no image")
    if is_url(ref):
        if not ref.lower().startswith(("http://", "https://")):
            raise ProductNotFoundError(f"product {product_id!r} has no image this API can serve")
        return RedirectResponse(ref, status_code=307)
    path = Path(ref)
    try:
        with Image.open(path) as opened:
            kind = opened.format
    except (OSError, ValueError):
        raise ProductNotFoundError(
            f"the image file of product {product_id!r} is missing or unreadable on the server; re-ingest the catalog"
        ) from None
    if kind not in ALLOWED_FORMATS:
        raise ProductNotFoundError(f"product {product_id!r} has no image this API can serve")
    return FileResponse(path, media_type=_IMAGE_TYPES.get(kind or "", "application/octet-stream"))


def _add_product_routes(app: FastAPI, get_engine: _EngineHolder) -> None:
    @app.get("/products/{product_id}", responses=_PRODUCT_ERRORS)
    def product(product_id: str) -> dict[str, Any]:
        p = get_engine().get(product_id)
        image = image_url(p.id) if p.image else None
        return {"id": p.id, "title": p.title, "description": p.description, "image": image, **p.fields}

    image_types = {t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(set(_IMAGE_TYPES.values()))}

    @app.get(
        "/products/{product_id}/image",
        response_class=Response,
        responses={
            200: {"content": image_types, "description": "the product's image"},
            307: {"description": "the product's image lives at a public URL (Location)"},
            **_PRODUCT_ERRORS,
        },
    )
    def product_image(product_id: str) -> Response:
        return _image_response(product_id, get_engine().get(product_id).image)

    @app.get("/products/{product_id}/similar", responses=_PRODUCT_ERRORS)
    def similar(
        product_id: str,
        limit: int = Query(10, ge=1, le=MAX_PAGE),
        filter: list[str] = Query([], max_length=MAX_FILTERS),
    ) -> dict[str, Any]:
        return {"hits": [_public_hit(h) for h in get_engine().similar(product_id, filters=filter, limit=limit)]}

    @app.get("/facets", responses=_QUERY_ERRORS)
    def facets(
        q: str | None = Query(None, max_length=MAX_QUERY_CHARS),
        field: list[str] = Query([], max_length=MAX_FILTERS),
        filter: list[str] = Query([], max_length=MAX_FILTERS),
    ) -> dict[str, Any]:
        counts = get_engine().facets(field or None, q, filters=filter)
        return {f: [{"value": v, "count": c} for v, c in pairs] for f, pairs in counts.items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, host: str, port: int, options: ServeOptions) -> None:
    """Open and check the store, then serve until stopped. A store that cannot be used (locked,
    damaged, missing) is named in one line on stderr and in every answer (503 on ``/health``);
    the server opens it again on each request until it can."""
    import uvicorn

    limit_malloc_arenas()  # before the model's and the server's threads start
    limit_torch_threads()  # one core stays for the request threads (batching.py)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "shelfsight"):
        logging.getLogger(name).addFilter(RedactingFilter())
    if not is_loopback(host) and not options.read_key:
        print(
            f"warning: serving on {host} without an API key: anyone who can reach port {port} can search. "
            "Set SHELFSIGHT_API_KEY (and SHELFSIGHT_ADMIN_KEY for writes), or bind to 127.0.0.1.",
            file=sys.stderr,
        )
    engine: SearchEngine | None = None
    try:
        engine = SearchEngine.open(settings)
        engine.count()  # loads the store now, so its integrity check runs before the first request
    except ShelfsightError as exc:
        if engine is not None:
            engine.close()
            engine = None
        print(f"error: {redact(str(exc))}", file=sys.stderr)
    try:
        app = create_app(settings, engine, options)
        uvicorn.run(app, host=host, port=port, log_level="warning", http=json_h11_protocol())
    finally:
        if engine is not None:
            engine.close()
