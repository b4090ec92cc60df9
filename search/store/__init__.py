"""Vector store backends behind one protocol: embedded qdrant-edge (default) or a Qdrant server."""

from __future__ import annotations

from shelfsight.search.errors import BadInputError
from shelfsight.search.settings import Settings
from shelfsight.search.store.base import (
    CollectionMeta,
    Condition,
    Filter,
    Match,
    NearestQuery,
    PointRecord,
    Range,
    StoredPoint,
    VectorStore,
)

__all__ = [
    "CollectionMeta",
    "Condition",
    "Filter",
    "Match",
    "NearestQuery",
    "PointRecord",
    "Range",
    "StoredPoint",
    "VectorStore",
    "open_store",
]


def open_store(settings: Settings) -> VectorStore:
    """The backend the settings name: a Qdrant server when ``qdrant_url`` is set, else ``db``."""
    if settings.qdrant_url:
        from shelfsight.search.store.server import ServerStore

        return ServerStore.connect(settings.qdrant_url, api_key=settings.qdrant_api_key)
    if not settings.db:
        raise BadInputError("no store given: pass --db DIR (embedded store) or set QDRANT_URL")
    from shelfsight.search.store.edge import EdgeStore
    from shelfsight.search.store.generations import store_root

    return EdgeStore(store_root(settings.db, settings.collection))  # its live generation (generations.py)
