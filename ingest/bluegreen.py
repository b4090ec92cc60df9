"""``ingest --reindex`` beside the live store: build the next one, then switch.

On a Qdrant server (``reindex_by_alias``) the collection's name is an alias: the rebuild fills a
new collection beside the live one, then the alias is moved to it in one atomic step, so every
server process and client querying the name goes on without a failed request; the old
collection is deleted after a short grace for requests already on it.

For the embedded store while ``serve`` owns it (``reindex_beside_server``):

The serving process keeps answering from the live generation while this process builds a new one
beside it (``search/store/generations.py``): every product embedded again, the HNSW index built
(``optimize``, minutes at 100k products, here and not in the server), the vocabulary and relevance
floor calibrated. Then ``live.json`` names the new generation, the server switches to it and
drains its requests (``search/http_swap.py``), and answers in ``served.json``; this process then
removes the old generation. A build that fails leaves the live generation as it was; a server
that cannot open the new one keeps the old one and the pointer goes back.

While the build runs (this process holds the build lock) the server answers ``PUT`` and ``DELETE
/products/{id}`` with 503: such a write would go into the old generation and be gone after the
switch, since a rebuild serves its catalog.

Example::

    report, switch = reindex_beside_server("db", "products", server_pid, lambda store: ingest_catalog(...))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shelfsight.ingest.pipeline import IngestReport
from shelfsight.search.discovery import process_alive
from shelfsight.search.errors import StoreUnavailableError
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.generations import (
    Served,
    building,
    generation_root,
    generations,
    live_generation,
    next_generation,
    read_served,
    remove_generation,
    set_live,
)
from shelfsight.search.store.server import ServerStore

# How long the server may take to open the new generation (its model included) and drain.
SWITCH_WAIT_S = 600.0
_POLL_S = 0.2
# After an alias moves, requests that resolved it just before may still run on the old collection.
ALIAS_GRACE_S = 2.0


def reindex_by_alias(
    store: ServerStore, collection: str, build: Callable[[str], IngestReport], grace_s: float = ALIAS_GRACE_S
) -> tuple[IngestReport, str, str | None]:
    """Run ``build`` (an ingest with ``reindex``) into a new collection beside ``collection``, then
    point the alias ``collection`` at it and delete the one it named before. Returns the report,
    the new collection and the old one (None: there was none, or it was a plain collection of that
    name, which had to go just before the alias came). A failed build is deleted; the live one stays."""
    new = _beside(store, collection)
    try:
        report = build(new)
    except BaseException:
        store.drop_collection(new)
        raise
    old = store.switch_alias(collection, new)
    if old is not None:
        time.sleep(grace_s)
        store.drop_collection(old)
    return report, new, old


def _beside(store: ServerStore, collection: str) -> str:
    """A free name for the next build of ``collection``: its name and the time, within 64 characters."""
    stamp = int(time.time())
    while store.collection_exists(name := f"{collection[:53]}.{stamp}"):
        stamp += 1
    return name


@dataclass(frozen=True)
class Switch:
    """The generation served before the rebuild (now removed) and the one served after it."""

    old: int
    new: int


def reindex_beside_server(
    db: str, collection: str, server_pid: int, build: Callable[[EdgeStore], IngestReport]
) -> tuple[IngestReport, Switch]:
    """Run ``build`` (an ingest with ``reindex``) into a new generation of ``collection`` and have
    the server ``server_pid`` switch to it; raises ``StoreUnavailableError`` when it cannot."""
    with building(db, collection):
        old = live_generation(db, collection)
        _remove_leftovers(db, collection, keep=old)
        new = next_generation(db, collection)
        store = EdgeStore(generation_root(db, collection, new))
        try:
            report = build(store)
        except BaseException:
            store.close()
            remove_generation(db, collection, new)
            raise
        store.close()  # releases the new shard's lock for the server
        set_live(db, collection, new)
        served = _wait_for_switch(db, collection, server_pid, new)
        if served is not None and served.error:
            set_live(db, collection, old)
            raise StoreUnavailableError(
                f"the server (pid {server_pid}) could not open the rebuilt store ({served.error}); it keeps "
                f"serving the old one. The new build stays in {generation_root(db, collection, new)} until "
                "the next --reindex; fix the cause (e.g. restart serve without --model) and run it again"
            )
        if served is None and process_alive(server_pid):
            raise StoreUnavailableError(
                f"the server (pid {server_pid}) did not switch to the rebuilt store in {SWITCH_WAIT_S:.0f}s "
                "(a server from before blue/green rebuilds?); the store now names the new build, so a restarted "
                f"`shelfsight serve` serves it; until then the old one stays in {generation_root(db, collection, old)}"
            )
        remove_generation(db, collection, old)  # drained and closed by the server (or it is gone)
    return report, Switch(old, new)


def _remove_leftovers(db: str, collection: str, keep: int) -> None:
    """Generations a killed rebuild or a refused switch left behind; one still open stays."""
    for generation in generations(db, collection):
        if generation != keep:
            try:
                remove_generation(db, collection, generation)
            except StoreUnavailableError:
                continue


def _wait_for_switch(db: str, collection: str, pid: int, generation: int) -> Served | None:
    """The server's answer about ``generation`` (None: none came, or the server is gone)."""
    deadline = time.monotonic() + SWITCH_WAIT_S
    while time.monotonic() < deadline and process_alive(pid):
        served = read_served(db, collection)
        if served is not None and served.pid == pid and served.generation == generation:
            return served
        time.sleep(_POLL_S)
    return None
