"""``shelfsight ingest CATALOG --api URL``: a catalog streamed through a running ``serve``.

The catalog is read and validated here with the same reader as a local ingest (``catalog.py``);
each good row becomes one ``PUT /products/{id}`` (``search/http_writes.py``), embedded by the
server with its own model. Local image files are read here, under the same caps as a local ingest,
and sent as base64: the server never reads its own disk for a client. Image URLs go as URLs and
the server fetches them behind its address guard (with ``--allow-private-urls`` they are fetched
here instead and sent as bytes, since the server refuses private addresses).

The report is the local ingest's ``IngestReport``: a row the server refuses (400, 404, 413, 422)
is skipped and named with the server's reason; every other row still goes in. A refused key, a
collection of another model or a server that fails stops the run with what went in so far
intact; running the same command again skips unchanged products (the content hash).

Points written this way join the HNSW index at the next ingest that optimizes (local or blue/green
``--reindex``), and the relevance floor and vocabulary are not recalibrated: both would stall a
serving process for minutes on a large catalog.

Example::

    target = ApiTarget("http://127.0.0.1:8000", key=os.environ["SHELFSIGHT_ADMIN_KEY"])
    report = ingest_through_api(read_catalog("catalog.csv"), target, IngestOptions(workers=2))
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from shelfsight.ingest.catalog import Catalog, CatalogRow, RowError
from shelfsight.ingest.pipeline import IngestOptions, IngestReport
from shelfsight.search.errors import (
    BadInputError,
    IncompatibleCollectionError,
    StoreUnavailableError,
)
from shelfsight.search.images import ImageError, is_url, read_image_bytes
from shelfsight.search.settings import MAX_UPLOAD_BYTES

# A PUT embeds one product with the server's model; the first one also loads it.
TIMEOUT_S = 120.0
# Requests in flight and rows per batch when the options leave them to us: the server embeds.
API_WORKERS = 2
API_BATCH = 32
# What to do about a row the server refused, by status (its detail says what was wrong).
_ROW_HINTS = {
    400: "fix the row as the reason says and run the ingest again",
    404: "the server has no such collection; ingest the catalog into it locally first",
    413: f"the row's image is over the server's upload cap ({MAX_UPLOAD_BYTES} bytes); send a smaller image",
    422: "fix the row's value as the reason says (see the server's /docs for each field's type)",
}


@dataclass(frozen=True)
class ApiTarget:
    """The serving process to write through: its base URL and the admin key (``SHELFSIGHT_ADMIN_KEY``)."""

    url: str
    key: str | None = None
    timeout: float = TIMEOUT_S


@dataclass(frozen=True)
class _Outcome:
    """What the server made of one row: its answer, or why the row was skipped."""

    row: CatalogRow
    answer: dict[str, Any] | None = None
    error: RowError | None = None


def ingest_through_api(
    catalog: Catalog,
    target: ApiTarget,
    options: IngestOptions = IngestOptions(),
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Send every good row of ``catalog`` to the server; bad rows are reported, never raised.
    Raises ``ShelfsightError`` when the server refuses the whole run (key, model, failure)."""
    started = time.perf_counter()
    report = IngestReport()
    check_fields(catalog, call(target, "GET", "/catalog"), target.url)
    # Each worker keeps one request in flight: the next rows' images are read and encoded while
    # the server embeds (it writes one product at a time).
    size = options.batch_size or API_BATCH
    with ThreadPoolExecutor(max_workers=options.workers or API_WORKERS) as pool:
        for batch, errors in catalog.stream(size):  # rows stream: memory does not grow with the catalog
            report.errors.extend(errors)
            sent = time.perf_counter()
            outcomes = list(pool.map(lambda row: send_row(row, catalog, target, options), batch))
            report.time("write", time.perf_counter() - sent)
            for outcome in outcomes:
                _tally(report, outcome)
            if on_progress:
                on_progress(len(batch) + len(errors))
    report.skipped = len(report.errors)
    report.errors.sort(key=lambda e: e.row)
    report.seconds = time.perf_counter() - started
    return report


def check_fields(catalog: Catalog, summary: dict[str, Any], url: str) -> None:
    """Refuse a catalog whose columns the served collection lacks (every row would be refused)."""
    served = summary.get("fields") or {}
    new = sorted(set(catalog.fields) - set(served))
    if new:
        raise BadInputError(
            f"the catalog has column(s) {', '.join(new)} that the collection served at {url} lacks; "
            "a new field comes with a rebuild: run `shelfsight ingest CATALOG --db DIR --reindex` "
            "(it builds beside the live store and switches when ready), or drop the column(s)"
        )


def _tally(report: IngestReport, outcome: _Outcome) -> None:
    if outcome.error is not None:
        report.errors.append(outcome.error)
        return
    answer = outcome.answer or {}
    if answer.get("embedded"):
        report.ingested += 1
        report.text_only += outcome.row.product.image is None
        report.truncated += bool(answer.get("truncated"))
    elif answer.get("changed", True):
        report.updated += 1
    else:
        report.unchanged += 1


def send_row(row: CatalogRow, catalog: Catalog, target: ApiTarget, options: IngestOptions) -> _Outcome:
    """One ``PUT /products/{id}`` for ``row``; its image read here when it is a local file."""
    product = row.product
    body: dict[str, Any] = {**product.fields, "title": product.title, "description": product.description}
    policy = replace(options.images, max_bytes=min(options.images.max_bytes, MAX_UPLOAD_BYTES))
    try:
        if product.image is None:
            body["image"] = None  # as in the catalog: no image (a stored one is removed)
        elif is_url(product.image) and not policy.allow_private:
            body["image"] = product.image
        else:
            data = read_image_bytes(product.image, catalog.base_dir, policy)
            body["image_base64"] = base64.b64encode(data).decode()
    except ImageError as exc:
        return _Outcome(row, error=RowError(row.row, product.id, exc.reason, exc.hint))
    try:
        return _Outcome(row, answer=call(target, "PUT", "/products/" + urllib.parse.quote(product.id, safe=""), body))
    except _RowRefused as exc:
        return _Outcome(row, error=RowError(row.row, product.id, exc.detail, _ROW_HINTS[exc.status]))


class _RowRefused(Exception):
    """The server refused this request's content (not the run): the row is skipped."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def call(target: ApiTarget, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON request with the admin key; the server's ``{"error", "detail"}`` becomes an error."""
    headers = {"Content-Type": "application/json"}
    if target.key:
        headers["X-API-Key"] = target.key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(target.url.rstrip("/") + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=target.timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise _refusal(target, method, path, exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StoreUnavailableError(
            f"the server at {target.url} did not answer {method} {path} ({exc}); check that "
            "`shelfsight serve` runs there, then run the same ingest again (products already sent are skipped)"
        ) from None


def _refusal(target: ApiTarget, method: str, path: str, status: int, raw: bytes) -> Exception:
    try:
        detail = str(json.loads(raw).get("detail") or "")
    except (ValueError, AttributeError):
        detail = raw.decode(errors="replace")[:300]
    if status in _ROW_HINTS and method == "PUT":
        return _RowRefused(status, detail)
    if status in (401, 403):
        return BadInputError(
            f"the server at {target.url} refused the write ({detail}); pass its admin key with "
            "SHELFSIGHT_ADMIN_KEY (or --api-key), and start the server with SHELFSIGHT_ADMIN_KEY set"
        )
    if status == 409:
        return IncompatibleCollectionError(f"the server at {target.url} refused the catalog: {detail}")
    return StoreUnavailableError(
        f"the server at {target.url} failed on {method} {path} ({status}: {detail}); the products sent "
        "before went in: fix the server, then run the same ingest again (unchanged products are skipped)"
    )


def resolve_target(url: str | None, key: str | None, discovered: str | None, db: str | None) -> ApiTarget:
    """The server to write through: ``url``, or the one serving ``db`` (its discovery record)."""
    if url:
        if not url.lower().startswith(("http://", "https://")):
            raise BadInputError(f"--api {url!r} is not an http(s) URL; give the server's base URL (http://HOST:PORT)")
        return ApiTarget(url, key)
    if discovered:
        return ApiTarget(discovered, key)
    where = f"no `shelfsight serve` is serving {db}" if db else "no --db names a served store"
    raise BadInputError(f"--api without a URL writes through the server of --db, but {where}; give --api URL")
