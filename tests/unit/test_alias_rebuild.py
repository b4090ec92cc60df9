"""Blue/green rebuilds on a Qdrant server: the collection's name is an alias that moves to the
rebuilt collection in one step. Runs on qdrant-client's local mode, and on a real server where
QDRANT_URL is set."""

import os
import uuid

import numpy as np
import pytest
from shelfsight.ingest.bluegreen import reindex_by_alias
from shelfsight.ingest.catalog import read_catalog
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.store.base import CollectionMeta, PointRecord
from shelfsight.search.store.server import ServerStore, local_store

META = CollectionMeta(model="m@1", dimension=4, vectors=("text",))
SERVERS = ["local"] + (["server"] if os.environ.get("QDRANT_URL") else [])


@pytest.fixture(params=SERVERS)
def server(request, tmp_path):
    if request.param == "local":
        store = local_store(str(tmp_path / "qdrant-local"))
    else:
        store = ServerStore.connect(os.environ["QDRANT_URL"], os.environ.get("QDRANT_API_KEY"))
    made: list[str] = []
    yield store, made
    for name in made:
        store.drop_collection(name)
    store.close()


def _collection(store, name, product):
    store.create_collection(name, META)
    vector = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    store.upsert(name, [PointRecord(str(uuid.uuid5(uuid.NAMESPACE_URL, product)), {"text": vector}, {"id": product})])


def _ids(store, name):
    return sorted(p.payload.get("product_id", p.payload.get("id")) for p in store.scroll(name))


def test_the_name_moves_from_a_plain_collection_then_from_build_to_build(server):
    store, made = server
    name = f"t{uuid.uuid4().hex[:10]}"
    made.append(name)
    _collection(store, name, "old")
    _collection(store, f"{name}.1", "first rebuild")
    assert store.switch_alias(name, f"{name}.1") is None  # the plain collection gave way
    assert _ids(store, name) == ["first rebuild"] and store.get_meta(name).model == "m@1"
    assert store.alias_target(name) == f"{name}.1"
    _collection(store, f"{name}.2", "second rebuild")
    assert store.switch_alias(name, f"{name}.2") == f"{name}.1"  # alias to alias, one step
    assert _ids(store, name) == ["second rebuild"]
    store.drop_collection(f"{name}.1")
    store.drop_collection(name)  # the alias and what it names
    assert not store.collection_exists(name) and not store.collection_exists(f"{name}.2")


def test_reindex_by_alias_serves_the_old_build_until_the_new_one_is_whole(server, embedder, catalog_dir, tmp_path):
    store, made = server
    name = f"t{uuid.uuid4().hex[:10]}"
    made.append(name)
    catalog = read_catalog(catalog_dir / "catalog.csv")
    ingest_catalog(catalog, store, embedder, IngestOptions(collection=name))
    old_ids = _ids(store, name)
    smaller = tmp_path / "smaller.csv"  # the first 20 products, their images where they lie
    (tmp_path / "images").symlink_to(catalog_dir / "images")
    smaller.write_text("".join((catalog_dir / "catalog.csv").read_text().splitlines(keepends=True)[:21]))
    seen_during_build = []

    def build(collection):
        seen_during_build.append(_ids(store, name))
        report = ingest_catalog(
            read_catalog(smaller), store, embedder, IngestOptions(collection=collection, reindex=True)
        )
        seen_during_build.append(_ids(store, name))  # built, not yet switched
        return report

    report, new, old = reindex_by_alias(store, name, build, grace_s=0)
    assert report.ingested == 20 and old is None
    assert seen_during_build == [old_ids, old_ids] and len(old_ids) == 48
    assert len(_ids(store, name)) == 20 and store.alias_target(name) == new
    report, newer, old = reindex_by_alias(store, name, build, grace_s=0)
    assert old == new and not store.client.collection_exists(new)  # the previous build is gone
    assert store.alias_target(name) == newer and len(_ids(store, name)) == 20


def test_a_failed_rebuild_is_deleted_and_the_live_collection_stays(server):
    store, made = server
    name = f"t{uuid.uuid4().hex[:10]}"
    made.append(name)
    _collection(store, name, "live")
    started = []

    def build(collection):
        _collection(store, collection, "half")
        started.append(collection)
        raise RuntimeError("the model ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        reindex_by_alias(store, name, build)
    assert not store.collection_exists(started[0])
    assert _ids(store, name) == ["live"]


def test_ingest_reindex_against_a_server_moves_the_alias(monkeypatch, tmp_path, tiny_model_dir, catalog_dir, capsys):
    """`shelfsight ingest --reindex` with QDRANT_URL takes the alias path (a local-mode store here)."""
    from shelfsight.cli import main

    path = str(tmp_path / "qdrant-local")
    # The server is local mode; the CLI reaches it the way it reaches any server, through QDRANT_URL.
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.invalid:6333")
    monkeypatch.setattr(ServerStore, "connect", classmethod(lambda cls, url, api_key=None: local_store(path)))
    args = ["ingest", str(catalog_dir / "catalog.csv"), "--model", str(tiny_model_dir), "--collection", "shop"]
    assert main(args) == 0
    assert main([*args, "--reindex"]) == 0
    assert "switched: 'shop' names 'shop." in capsys.readouterr().err
    store = local_store(path)
    try:
        assert store.alias_target("shop").startswith("shop.") and store.count("shop") == 48
        assert sorted(c.name for c in store.client.get_collections().collections) == [store.alias_target("shop")]
    finally:
        store.close()


def test_a_serving_engine_follows_the_rebuild_and_refuses_another_models(
    server, embedder, catalog_dir, tmp_path, monkeypatch
):
    """An engine over a server re-reads the collection's metadata (every 30 s; at once here), so a
    rebuild's vocabulary reaches it, and a rebuild with another model is refused, not searched in
    the wrong space."""
    from dataclasses import replace

    import shelfsight.search.engine as engine_module
    from shelfsight.search.engine import SearchEngine
    from shelfsight.search.errors import IncompatibleCollectionError

    store, made = server
    name = f"t{uuid.uuid4().hex[:10]}"
    made.append(name)
    catalog = read_catalog(catalog_dir / "catalog.csv")
    ingest_catalog(catalog, store, embedder, IngestOptions(collection=name))
    engine = SearchEngine(store, embedder, name)
    engine.search("anything", limit=1)  # answers (a made-up query may find nothing)
    monkeypatch.setattr(engine_module, "META_REFRESH_S", 0.0)

    def rebuild(vocabulary=None, model=None):
        def build(collection):
            report = ingest_catalog(catalog, store, embedder, IngestOptions(collection=collection, reindex=True))
            meta = store.get_meta(collection)
            store.set_meta(
                collection, replace(meta, vocabulary=vocabulary or meta.vocabulary, model=model or meta.model)
            )
            return report

        reindex_by_alias(store, name, build, grace_s=0)

    rebuild(vocabulary={"zebrawood": 3})
    assert engine.meta.vocabulary == {"zebrawood": 3}
    rebuild(model="another-model@1")
    with pytest.raises(IncompatibleCollectionError, match="another-model"):
        engine.search("anything", limit=1)
