"""Where the storefront's answers come from: the store itself, or the server that owns it.

One process owns an embedded store (the engine locks it). When ``shelfsight serve`` owns the
store the storefront was started on (its discovery record, ``search/discovery.py``), the
storefront asks that server over HTTP (``search/remote.py``); otherwise it opens the store
itself. ``ShopHolder.current()`` decides again on every page run, so ``shelfsight ui`` and
``shelfsight serve`` can run side by side on one store in either order: a storefront that holds
the store closes it as soon as a server announces itself (the server opens the store on its next
request), and opens it again when the server has gone.

Example::

    holder = ShopHolder(Settings.from_env(db="db"))
    shop = holder.current()
    answer = shop.answer("red bag", None, SearchRequest(limit=12))
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from shelfsight.search import Hit, Product, SearchEngine, SearchRequest, Settings
from shelfsight.search.catalog_summary import CatalogSummary, summarize
from shelfsight.search.discovery import ServerRecord, find_server
from shelfsight.search.images import is_url
from shelfsight.search.records import Answer
from shelfsight.search.remote import (
    remote_answer,
    remote_facets,
    remote_image,
    remote_product,
    remote_similar,
    remote_summary,
)

# What st.image can show: bytes, a local path or a URL.
ImageRef = bytes | str


class Shop(Protocol):
    """The reads the storefront makes, from either source."""

    served_by: ServerRecord | None  # the server answering, or None when this process holds the store

    def summary(self) -> CatalogSummary: ...

    def answer(self, text: str | None, image: bytes | str | None, request: SearchRequest) -> Answer: ...

    def similar(self, product_id: str, filters: Sequence[str], limit: int) -> list[Hit]: ...

    def product(self, product_id: str) -> Product: ...

    def facets(self, fields: Sequence[str], text: str | None) -> dict[str, list[tuple[Any, int]]]: ...

    def card_image(self, hit: Hit) -> ImageRef | None: ...

    def query_image(self, product_id: str) -> bytes | str | None: ...

    def close(self) -> None: ...


class LocalShop:
    """The store opened in this process. Calls take turns (the store holds the GIL through each
    of them anyway), so ``close`` never pulls the store from under a query of another page."""

    served_by: ServerRecord | None = None

    def __init__(self, engine: SearchEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._summary: CatalogSummary | None = None

    def summary(self) -> CatalogSummary:
        with self._lock:
            self._summary = summarize(self.engine, self._summary)
            return self._summary

    def answer(self, text: str | None, image: bytes | str | None, request: SearchRequest) -> Answer:
        with self._lock:
            return self.engine.answer(text, image, request)

    def similar(self, product_id: str, filters: Sequence[str], limit: int) -> list[Hit]:
        with self._lock:
            return self.engine.similar(product_id, filters=list(filters), limit=limit)

    def product(self, product_id: str) -> Product:
        with self._lock:
            return self.engine.get(product_id)

    def facets(self, fields: Sequence[str], text: str | None) -> dict[str, list[tuple[Any, int]]]:
        with self._lock:
            return self.engine.facets(fields, text)

    def card_image(self, hit: Hit) -> ImageRef | None:
        image = hit.payload.get("image")
        if isinstance(image, str) and (image.startswith(("http://", "https://")) or Path(image).is_file()):
            return image
        return None

    def query_image(self, product_id: str) -> bytes | str | None:
        """The product's image as a query: a file's bytes, or its URL (fetched behind the engine's guard)."""
        path = self.product(product_id).image
        if path and is_url(path):
            return path
        return Path(path).read_bytes() if path and Path(path).is_file() else None

    def close(self) -> None:
        with self._lock:
            self.engine.close()


class ServerShop:
    """The server that owns the store, over its HTTP API."""

    def __init__(self, record: ServerRecord):
        self.served_by: ServerRecord | None = record
        self.record = record

    def summary(self) -> CatalogSummary:
        return remote_summary(self.record)

    def answer(self, text: str | None, image: bytes | str | None, request: SearchRequest) -> Answer:
        return remote_answer(self.record, text, image, request)

    def similar(self, product_id: str, filters: Sequence[str], limit: int) -> list[Hit]:
        return remote_similar(self.record, product_id, SearchRequest(filters=list(filters), limit=limit))

    def product(self, product_id: str) -> Product:
        return remote_product(self.record, product_id)

    def facets(self, fields: Sequence[str], text: str | None) -> dict[str, list[tuple[Any, int]]]:
        return remote_facets(self.record, fields, text)

    def card_image(self, hit: Hit) -> ImageRef | None:
        return remote_image(self.record, hit.id) if hit.payload.get("image") else None

    def query_image(self, product_id: str) -> bytes | str | None:
        return remote_image(self.record, product_id)

    def close(self) -> None:
        """Nothing to let go of: the server keeps the store."""


class ShopHolder:
    """The storefront's one source of answers for a store, shared by every page of the process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._shop: Shop | None = None

    def current(self) -> Shop:
        """The server that owns the store when one is running, else the store opened here."""
        record = self._server()
        with self._lock:
            if self._shop is not None and self._shop.served_by == record:
                return self._shop
            if self._shop is not None:
                self._shop.close()  # a server took the store over (or left): let go of the old source
                self._shop = None
            self._shop = ServerShop(record) if record is not None else self._open_here()
            return self._shop

    def close(self) -> None:
        with self._lock:
            if self._shop is not None:
                self._shop.close()
                self._shop = None

    def _server(self) -> ServerRecord | None:
        if self.settings.qdrant_url:
            return None  # a Qdrant server is shared by design: no owner to ask
        record = find_server(self.settings.db)
        return record if record is not None and record.collection == self.settings.collection else None

    def _open_here(self) -> LocalShop:
        engine = SearchEngine.open(self.settings)
        try:
            engine.count()  # opens the store now, so a locked or missing store is reported here
        except Exception:
            engine.close()
            raise
        return LocalShop(engine)
