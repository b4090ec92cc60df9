"""Shelfsight's core library and public Python API."""

from search.embedder import Embedder
from search.engine import SearchEngine
from search.errors import (
    BadInputError,
    CollectionNotFoundError,
    IncompatibleCollectionError,
    ModelUnavailableError,
    ProductNotFoundError,
    ShelfsightError,
    StoreUnavailableError,
)
from search.records import Hit, Product, VectorScore
from search.settings import Settings

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
    "Settings",
    "ShelfsightError",
    "StoreUnavailableError",
    "VectorScore",
]
