"""Shelfsight's core library and public Python API."""

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
