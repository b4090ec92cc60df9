"""The serving side of a blue/green rebuild: switch to a new store generation without failing a query.

``ingest --reindex`` builds the next generation of an embedded store beside the live one and
points ``live.json`` at it (``search/store/generations.py``). While ``serve`` runs, a watcher
thread looks at that pointer every ``POLL_S`` seconds; when it names another generation it:

1. opens it (shard, integrity check, the collection's model, one warm-up query) beside the
   serving engine; queries go on meanwhile (the load holds the GIL for moments, it fails none);
2. swaps the app's engine under ``_EngineHolder``'s lock: every request that asks after this gets
   the new one;
3. drains: waits until every request that started before the swap has finished (a middleware
   counts requests per swap), so no request loses its engine half-way; then closes the old one,
   which releases its shard lock;
4. answers in ``served.json``; the ingest process then removes the old generation.

A generation that does not open (damaged, another model than ``serve --model``) is named in
``served.json`` and in the log, and the server keeps serving the old one; the ingest process
points ``live.json`` back. Index building never happens here: the new generation arrives
optimized.

Example::

    add_generation_watch(app, get_engine)   # create_app does this for an embedded store
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI
from shelfsight.search.embedder import Embedder
from shelfsight.search.engine import SearchEngine
from shelfsight.search.redaction import redact
from shelfsight.search.settings import Settings
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.generations import (
    Served,
    generation_of,
    generation_root,
    live_generation,
    write_served,
)
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("shelfsight.http")

# How often the pointer is read: a stat and a small file read, nothing for a query to notice.
POLL_S = 0.5


class Holder(Protocol):
    """What the watcher needs of the app's engine holder (``http._EngineHolder``)."""

    settings: Settings | None
    engine: SearchEngine | None

    def swap(self, engine: SearchEngine) -> SearchEngine | None: ...


class RequestCount:
    """Requests in flight per swap ("epoch"): the old engine closes when its epoch has none left."""

    def __init__(self) -> None:
        self.epoch = 0
        self.draining = False  # a drain is waiting for requests (tests look)
        self._open: Counter[int] = Counter()
        self._changed = threading.Condition()

    def enter(self) -> int:
        with self._changed:
            self._open[self.epoch] += 1
            return self.epoch

    def leave(self, epoch: int) -> None:
        with self._changed:
            self._open[epoch] -= 1
            self._changed.notify_all()

    def next_epoch(self) -> int:
        """Start a new epoch; returns the one that ended."""
        with self._changed:
            self.epoch += 1
            return self.epoch - 1

    def drain(self, epoch: int, stop: threading.Event) -> None:
        """Wait until no request of ``epoch`` or earlier is in flight (or the server stops)."""
        with self._changed:
            while any(n for e, n in self._open.items() if e <= epoch) and not stop.is_set():
                self.draining = True
                self._changed.wait(timeout=POLL_S)
            self.draining = False


class _Counted:
    """ASGI middleware: every HTTP request is counted in the epoch it started in."""

    def __init__(self, app: ASGIApp, requests: RequestCount):
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        epoch = self.requests.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests.leave(epoch)


def open_generation(settings: Settings, generation: int) -> SearchEngine:
    """An engine over ``generation`` of the settings' collection, its shard loaded and checked."""
    assert settings.db is not None
    store = EdgeStore(generation_root(settings.db, settings.collection, generation))
    try:
        meta = store.get_meta(settings.collection)
        embedder = Embedder(settings.model or meta.model_source or meta.model, device=settings.device)
        engine = SearchEngine(store, embedder, settings.collection, settings)
        engine.count()  # loads the shard now: its integrity check runs before it serves
        # Loads the model and runs its first forward here, not in the first request after the
        # swap (seen: a lazy load there stalled every client for up to 1.9 s on the busy machine).
        engine.search("warm up", limit=1)
        return engine
    except Exception:
        store.close()
        raise


class GenerationWatch:
    """The thread that follows ``live.json`` and switches the holder's engine (module docstring)."""

    def __init__(self, holder: Holder, settings: Settings, requests: RequestCount):
        assert settings.db is not None
        self.holder, self.settings, self.requests = holder, settings, requests
        self.db, self.collection = settings.db, settings.collection
        self.stop = threading.Event()
        self.failed: set[int] = set()  # generations that did not open: not tried again
        self.acked: int | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="shelfsight-generations", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                self.check()
            except Exception as exc:  # a bad pointer or a full disk: say so, keep serving, look again
                log.error("store generation check failed: %s", redact(str(exc)))

    def serving(self) -> int | None:
        engine = self.holder.engine
        if engine is None or not isinstance(engine.store, EdgeStore):
            return None
        return generation_of(self.db, self.collection, engine.store.root)

    def check(self) -> None:
        live = live_generation(self.db, self.collection)
        current = self.serving()
        if live in self.failed or live == current:
            return
        if current is None:  # no engine open yet: the first request opens the live generation
            if live != self.acked:
                write_served(self.db, self.collection, Served(os.getpid(), live))
                self.acked = live
            return
        self.switch(live)

    def switch(self, generation: int) -> None:
        try:
            engine = open_generation(self.settings, generation)
        except Exception as exc:
            self.failed.add(generation)
            log.error("cannot serve store generation %d: %s", generation, redact(str(exc)))
            write_served(self.db, self.collection, Served(os.getpid(), generation, redact(str(exc))))
            return
        old = self.holder.swap(engine)
        self.requests.drain(self.requests.next_epoch(), self.stop)
        if old is not None:
            old.close()
        write_served(self.db, self.collection, Served(os.getpid(), generation))
        log.warning("now serving store generation %d of %r", generation, self.collection)


def add_generation_watch(app: FastAPI, holder: Holder) -> None:
    """Switch ``app``'s engine to each new generation of its embedded store while it serves."""
    settings = holder.settings
    if settings is None or settings.qdrant_url or not settings.db:
        return
    requests = RequestCount()
    watch = GenerationWatch(holder, settings, requests)
    app.add_middleware(_Counted, requests=requests)
    inner: Callable[[Any], Any] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        watch.start()
        try:
            async with inner(scope_app) as state:
                yield state
        finally:
            watch.close()

    app.router.lifespan_context = lifespan
