"""Reads through a running ``shelfsight serve`` that owns the store: the CLI's read commands and
the storefront (``ui/shop.py``) use it.

The server answers with the same hits the engine would give; its ``{"error", "detail"}`` bodies
become the library's errors again, so the CLI and the storefront report them as their own.

Example::

    hits = remote_answer(find_server("db"), "red bag", None, SearchRequest(limit=5)).hits
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shelfsight.search.catalog_summary import CatalogSummary
from shelfsight.search.discovery import ServerRecord
from shelfsight.search.engine import SearchRequest
from shelfsight.search.errors import BadInputError, ProductNotFoundError, StoreUnavailableError
from shelfsight.search.images import is_url
from shelfsight.search.records import Answer, Hit, Product
from shelfsight.search.settings import MAX_UPLOAD_BYTES

TIMEOUT_S = 120.0  # the first query loads the server's model


def remote_answer(record: ServerRecord, text: str | None, image: str | bytes | None, request: SearchRequest) -> Answer:
    """``engine.answer(text, image, request)`` on the server: image bytes or a local image file go
    as base64, an image URL as a query part (the server fetches it behind its own guard)."""
    body: dict[str, Any] = {
        "q": text,
        "filters": list(_filters(request)),
        "fusion": request.fusion,
        "text_weight": request.text_weight,
        "image_weight": request.image_weight,
        "min_score": request.min_score,
        "offset": request.offset,
        "correct": request.correct,
        "diversity": request.diversity,
        "boost": list(request.boosts),
    }
    body.update({k: v for k, v in (("vectors", request.vectors), ("limit", request.limit)) if v})
    if isinstance(image, bytes):
        body["image_base64"] = base64.b64encode(image).decode()
    elif image and is_url(image):
        body["q"] = f"{text} + {image}" if text else image
    elif image:
        body["image_base64"] = base64.b64encode(_read_image(image)).decode()
    data = _call(record, "POST", "/search", body)
    return Answer(
        [Hit.from_dict(h) for h in data["hits"]],
        data.get("showing_results_for"),
        bool(data.get("no_close_matches")),
        bool(data.get("exact_match")),
    )


def remote_similar(record: ServerRecord, product_id: str, request: SearchRequest) -> list[Hit]:
    query = [("limit", str(request.limit or 10))] + [("filter", f) for f in _filters(request)]
    path = f"/products/{urllib.parse.quote(product_id, safe='')}/similar?{urllib.parse.urlencode(query)}"
    return [Hit.from_dict(h) for h in _call(record, "GET", path)["hits"]]


def remote_health(record: ServerRecord) -> dict[str, Any]:
    return _call(record, "GET", "/health")


def remote_summary(record: ServerRecord) -> CatalogSummary:
    """The collection's fields, number ranges, vectors and default fusion (``GET /catalog``)."""
    return CatalogSummary.from_dict(_call(record, "GET", "/catalog"))


def remote_product(record: ServerRecord, product_id: str) -> Product:
    data = _call(record, "GET", _product_path(product_id))
    known = ("id", "title", "description", "image")
    return Product(
        id=str(data["id"]),
        title=str(data.get("title") or ""),
        description=str(data.get("description") or ""),
        image=data.get("image"),
        fields={k: v for k, v in data.items() if k not in known},
    )


def remote_facets(
    record: ServerRecord, fields: Sequence[str] | None, text: str | None = None, filters: Sequence[str] = ()
) -> dict[str, list[tuple[Any, int]]]:
    """``engine.facets(fields, text, filters=filters)`` on the server (``None``: every keyword field)."""
    if fields is not None and not fields:
        return {}
    query = [("field", f) for f in fields or ()] + [("filter", f) for f in filters] + ([("q", text)] if text else [])
    answer = _call(record, "GET", f"/facets?{urllib.parse.urlencode(query)}")
    return {f: [(pair["value"], int(pair["count"])) for pair in pairs] for f, pairs in answer.items()}


def remote_image(record: ServerRecord, product_id: str) -> bytes | str:
    """A product's image: its bytes, or the public URL the server redirects to (not fetched here:
    whoever shows it loads it, as they would the catalog's own URL)."""
    request = urllib.request.Request(record.url + _product_path(product_id) + "/image", headers=_headers())
    try:
        with _NO_REDIRECTS.open(request, timeout=TIMEOUT_S) as response:
            data: bytes = response.read(MAX_UPLOAD_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
            return str(exc.headers["Location"])
        raise _library_error(exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(record, exc) from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadInputError(f"the image of product {product_id!r} is over {MAX_UPLOAD_BYTES} bytes")
    return data


def _product_path(product_id: str) -> str:
    return f"/products/{urllib.parse.quote(product_id, safe='')}"


def _filters(request: SearchRequest) -> list[str]:
    filters = request.filters or []
    if isinstance(filters, str):
        return [filters]
    if not all(isinstance(f, str) for f in filters):
        raise BadInputError("filters sent to a server must be expressions like 'price<=40'")
    return [str(f) for f in filters]


def _read_image(path: str) -> bytes:
    file = Path(path).expanduser()
    if not file.is_file():
        raise BadInputError(f"query image not found: {path}")
    if file.stat().st_size > MAX_UPLOAD_BYTES:
        raise BadInputError(f"query image {path} is over the {MAX_UPLOAD_BYTES}-byte upload cap")
    return file.read_bytes()


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("SHELFSIGHT_API_KEY"):
        headers["X-API-Key"] = os.environ["SHELFSIGHT_API_KEY"]
    return headers


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """Hands a redirect back as the answer (an ``HTTPError`` with its ``Location``) instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_KeepRedirects)


def _call(record: ServerRecord, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(record.url + path, data=data, headers=_headers(), method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise _library_error(exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(record, exc) from None


def _unreachable(record: ServerRecord, exc: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"the store is served by pid {record.pid} at {record.url}, which did not answer ({exc}); "
        "wait for it to start, or stop it to open the store directly"
    )


def _library_error(status: int, raw: bytes) -> Exception:
    try:
        detail = str(json.loads(raw).get("detail") or raw.decode(errors="replace"))
    except ValueError:
        detail = raw.decode(errors="replace")
    if status == 404:
        return ProductNotFoundError(detail)
    if status < 500:
        return BadInputError(detail)
    return StoreUnavailableError(detail)
