"""Shelfsight's core library and public Python API.

The names below are imported on first use (PEP 562), so a process that needs only part of the
library, such as the ingest's write process, which needs the store alone, starts without loading
the model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shelfsight.search.embedder import Embedder
    from shelfsight.search.engine import SearchEngine, SearchRequest
    from shelfsight.search.errors import (
        BadInputError,
        CollectionNotFoundError,
        IncompatibleCollectionError,
        ModelUnavailableError,
        ProductNotFoundError,
        ShelfsightError,
        StoreUnavailableError,
    )
    from shelfsight.search.records import Hit, Product, VectorScore
    from shelfsight.search.settings import Settings

_WHERE = {
    "Embedder": "embedder",
    "SearchEngine": "engine",
    "SearchRequest": "engine",
    "BadInputError": "errors",
    "CollectionNotFoundError": "errors",
    "IncompatibleCollectionError": "errors",
    "ModelUnavailableError": "errors",
    "ProductNotFoundError": "errors",
    "ShelfsightError": "errors",
    "StoreUnavailableError": "errors",
    "Hit": "records",
    "Product": "records",
    "VectorScore": "records",
    "Settings": "settings",
}

__all__ = [
    "BadInputError",
    "CollectionNotFoundError",
    "Embedder",
    "Hit",
    "IncompatibleCollectionError",
    "ModelUnavailableError",
    "Product",
    "ProductNotFoundError",
    "SearchEngine",
    "SearchRequest",
    "Settings",
    "ShelfsightError",
    "StoreUnavailableError",
    "VectorScore",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
