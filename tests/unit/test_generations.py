"""Store generations (``search/store/generations.py``) and the server's drain (``search/http_swap.py``):
the layout and pointer, the build lock, and an old engine that waits for its last request."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.engine import SearchEngine
from shelfsight.search.errors import StoreUnavailableError
from shelfsight.search.http import _EngineHolder, create_app
from shelfsight.search.http_guard import ServeOptions
from shelfsight.search.http_swap import GenerationWatch, RequestCount
from shelfsight.search.settings import Settings
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.generations import (
    Served,
    building,
    generation_of,
    generation_root,
    generations,
    live_generation,
    next_generation,
    read_served,
    remove_generation,
    set_live,
    store_root,
    write_served,
)


def test_a_store_from_before_generations_is_generation_0_in_its_old_place(tmp_path):
    (tmp_path / "products").mkdir()
    assert live_generation(tmp_path, "products") == 0
    assert store_root(tmp_path, "products") == tmp_path
    assert generations(tmp_path, "products") == [0]
    assert next_generation(tmp_path, "products") == 1


def test_the_pointer_names_the_live_generation(tmp_path):
    root = generation_root(tmp_path, "products", 3)
    (root / "products").mkdir(parents=True)
    set_live(tmp_path, "products", 3)
    assert store_root(tmp_path, "products") == root
    assert generation_of(tmp_path, "products", root) == 3
    assert generation_of(tmp_path, "products", tmp_path) == 0
    assert next_generation(tmp_path, "products") == 4
    assert not list(root.parent.glob("*.tmp"))  # the pointer was written through a rename


def test_a_broken_pointer_is_named_with_its_fix(tmp_path):
    set_live(tmp_path, "products", 1)
    (tmp_path / ".generations" / "products" / "live.json").write_text("{not json")
    with pytest.raises(StoreUnavailableError, match="live.json"):
        live_generation(tmp_path, "products")


def test_a_second_build_is_refused_while_one_runs(tmp_path):
    with building(tmp_path, "products"):
        with pytest.raises(StoreUnavailableError, match="another `ingest --reindex`"):
            with building(tmp_path, "products"):
                pass
    with building(tmp_path, "products"):  # free again once the first is done
        pass


def test_the_servers_answer_round_trips(tmp_path):
    assert read_served(tmp_path, "products") is None
    write_served(tmp_path, "products", Served(pid=7, generation=2, error="damaged"))
    assert read_served(tmp_path, "products") == Served(7, 2, "damaged")


def test_the_old_engine_waits_for_the_requests_that_started_on_it():
    requests = RequestCount()
    before = requests.enter()  # a request on the old engine
    ended = requests.next_epoch()  # the swap
    after = requests.enter()  # a request on the new engine: never waited for
    drained = threading.Event()

    def drain() -> None:
        requests.drain(ended, threading.Event())
        drained.set()

    waiter = threading.Thread(target=drain)
    waiter.start()
    assert not drained.wait(timeout=0.5)  # still in flight: no close yet
    requests.leave(before)
    waiter.join()
    assert drained.is_set()
    requests.leave(after)


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder, catalog_dir):
    """An embedded store of the catalog in the old layout (generation 0); tests work on copies."""
    db = tmp_path_factory.mktemp("generations") / "db"
    store = EdgeStore(db)
    try:
        ingest_catalog(catalog_dir / "catalog.csv", store, embedder, IngestOptions(collection="products"))
    finally:
        store.close()
    return db


def test_writes_are_refused_while_a_rebuild_runs(built, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(built, db)
    options = ServeOptions(admin_key="admin")
    with SearchEngine.open(Settings(db=str(db), collection="products")) as engine:
        with TestClient(create_app(engine=engine, options=options)) as client:
            put = {"json": {"title": "during a rebuild"}, "headers": {"X-API-Key": "admin"}}
            with building(db, "products"):
                answer = client.put("/products/R-1", **put)
                assert answer.status_code == 503 and "rebuild" in answer.json()["detail"], answer.text
                assert client.delete("/products/R-1", headers={"X-API-Key": "admin"}).status_code == 503
                assert (
                    client.get("/search", params={"q": "red"}, headers=put["headers"]).status_code == 200
                )  # reads go on
            assert client.put("/products/R-1", **put).status_code == 200


def test_a_switch_keeps_the_old_engine_open_until_its_last_request_ends(built, tmp_path):
    """The watcher swaps to a new generation while a request holds the old engine: the old one
    answers until that request ends, then it closes (its lock is free) and the server says so."""
    db = tmp_path / "db"
    shutil.copytree(built, db)
    shutil.copytree(db / "products", generation_root(db, "products", 1) / "products")  # a rebuilt generation
    settings = Settings(db=str(db), collection="products")
    holder = _EngineHolder(settings, SearchEngine.open(settings), ServeOptions())
    requests = RequestCount()
    watch = GenerationWatch(holder, settings, requests)

    in_flight = requests.enter()
    old = holder()
    set_live(db, "products", 1)
    switching = threading.Thread(target=watch.check)
    switching.start()
    while switching.is_alive() and (holder.engine is old or not requests.draining):
        time.sleep(0.01)  # until the watcher has swapped and waits on the drain (or, broken, has ended)
    assert switching.is_alive() and read_served(db, "products") is None  # waiting for the request
    assert holder() is not old
    assert old.search("red bag", limit=1)  # the old engine still answers its request
    requests.leave(in_flight)
    switching.join()
    assert read_served(db, "products") == Served(os.getpid(), 1)
    remove_generation(db, "products", 0)  # the old shard's lock was released: it can go
    assert holder().count() == 48
    holder().close()
