"""The CLI's read commands through a running ``shelfsight serve`` that owns the store.

The server answers with the same hits the engine would give; its ``{"error", "detail"}`` bodies
become the library's errors again, so the CLI reports them as it reports its own.

Example::

    hits = remote_search(find_server("db"), "red bag", None, SearchRequest(limit=5))
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from shelfsight.search.discovery import ServerRecord
from shelfsight.search.engine import SearchRequest
from shelfsight.search.errors import BadInputError, ProductNotFoundError, StoreUnavailableError
from shelfsight.search.images import is_url
from shelfsight.search.records import Hit
from shelfsight.search.settings import MAX_UPLOAD_BYTES

TIMEOUT_S = 120.0  # the first query loads the server's model


def remote_search(record: ServerRecord, text: str | None, image: str | None, request: SearchRequest) -> list[Hit]:
    """``engine.run(text, image, request)`` on the server: a local image file goes as base64,
    an image URL as a query part (the server fetches it behind its own guard)."""
    body: dict[str, Any] = {
        "q": text,
        "filters": list(_filters(request)),
        "fusion": request.fusion,
        "text_weight": request.text_weight,
        "image_weight": request.image_weight,
        "min_score": request.min_score,
        "offset": request.offset,
    }
    body.update({k: v for k, v in (("vectors", request.vectors), ("limit", request.limit)) if v})
    if image and is_url(image):
        body["q"] = f"{text} + {image}" if text else image
    elif image:
        body["image_base64"] = base64.b64encode(_read_image(image)).decode()
    return [Hit.from_dict(h) for h in _call(record, "POST", "/search", body)["hits"]]


def remote_similar(record: ServerRecord, product_id: str, request: SearchRequest) -> list[Hit]:
    query = [("limit", str(request.limit or 10))] + [("filter", f) for f in _filters(request)]
    path = f"/products/{urllib.parse.quote(product_id, safe='')}/similar?{urllib.parse.urlencode(query)}"
    return [Hit.from_dict(h) for h in _call(record, "GET", path)["hits"]]


def remote_health(record: ServerRecord) -> dict[str, Any]:
    return _call(record, "GET", "/health")


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


def _call(record: ServerRecord, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("SHELFSIGHT_API_KEY"):
        headers["X-API-Key"] = os.environ["SHELFSIGHT_API_KEY"]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(record.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise _library_error(exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise StoreUnavailableError(
            f"the store is served by pid {record.pid} at {record.url}, which did not answer ({exc}); "
            "wait for it to start, or stop it to open the store directly"
        ) from None


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
