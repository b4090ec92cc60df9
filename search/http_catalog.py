"""``GET /catalog``: the collection's summary (``catalog_summary``) over HTTP.

A storefront that answers through the server builds its filters from it: keyword and number
fields, each number field's range (the price slider's ends), the vectors and the default fusion.

Example::

    add_catalog_route(app, get_engine)   # get_engine() -> the app's SearchEngine
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from shelfsight.search.catalog_summary import CatalogSummary, summarize
from shelfsight.search.engine import SearchEngine
from shelfsight.search.http_guard import ErrorBody

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "an API key is needed (SHELFSIGHT_API_KEY is set)"},
    404: {"model": ErrorBody, "description": "no such collection"},
    405: {"model": ErrorBody, "description": "method not allowed"},
    409: {"model": ErrorBody, "description": "the collection was built with another model"},
    503: {"model": ErrorBody, "description": "the store or the model cannot be reached, or the store is damaged"},
}


def add_catalog_route(app: FastAPI, get_engine: Callable[[], SearchEngine]) -> None:
    last: list[CatalogSummary] = []  # the previous summary, whose ranges are reused while good
    lock = threading.Lock()

    @app.get("/catalog", responses=_ERRORS)
    def catalog() -> dict[str, Any]:
        """Fields a client can filter on (keyword or float), each float field's lowest and highest
        value, the collection's vectors and model, its product count and the default fusion."""
        engine = get_engine()
        with lock:
            summary = summarize(engine, last[0] if last else None)
            last[:] = [summary]
        return summary.to_dict()
