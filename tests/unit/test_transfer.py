"""migrate (edge -> server backend -> edge, resumed after an interruption, verified) and
snapshot/restore of an embedded store, on a generated catalog ingested with the tiny model."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.engine import SearchEngine
from shelfsight.search.errors import BadInputError, StoreUnavailableError
from shelfsight.search.store.base import CollectionMeta, PointRecord
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.server import local_store
from shelfsight.search.store.snapshot import restore_edge, snapshot_edge, snapshot_server
from shelfsight.search.store.transfer import MigrateRequest, migrate, verify

QUERIES = ["red bag", "blue shoe", "striped hat", "green mug", "black tee", "white", "a photo of a bag"]


@pytest.fixture
def source_db(tmp_path, embedder, catalog_dir):
    """An embedded store with the generated catalog, early-fused vector included, index built."""
    db = tmp_path / "db"
    store = EdgeStore(db)
    try:
        report = ingest_catalog(
            catalog_dir / "catalog.csv", store, embedder, IngestOptions("products", fused_weight=0.5)
        )
        assert report.skipped == 0
    finally:
        store.close()
    return db


def top10s(store, embedder) -> list[list[frozenset[str] | int]]:
    """Each query's top 10 as runs of ids of equal score (within 1e-4), in rank order: an engine
    orders a tie (equal-weight RRF gives mirrored ranks equal scores) its own way, and a tie that
    the 10th place cuts through is compared by how many of it are inside (two more results are
    read to see such a tie)."""
    engine = SearchEngine(store, embedder, "products")
    # The CLIP lists and the words list apart: fused, a tie among equal BM25 scores (which each
    # engine orders its own way) moves RRF ranks; alone, equal scores stay visible as ties.
    dense = ["image", "text"]
    runs = [engine.search(q, limit=12, vectors=dense) for q in QUERIES]
    runs += [engine.search(q, limit=12, fusion_method="rrf", filters=["price<=60"], vectors=dense) for q in QUERIES]
    runs += [engine.search(q, limit=12, vectors=["bm25"]) for q in QUERIES]
    return [_tie_runs(hits, 10) for hits in runs]


def _tie_runs(hits, top: int) -> list[frozenset[str] | int]:
    groups: list[list] = []
    for h in hits:
        if groups and abs(groups[-1][0].score - h.score) <= 1e-4:
            groups[-1].append(h)
        else:
            groups.append([h])
    ranked: list[frozenset[str] | int] = []
    seen = 0
    for g in groups:
        if seen + len(g) > top:  # the 10th place cuts this tie: which of it falls inside is not defined
            ranked.append(top - seen)
            break
        ranked.append(frozenset(h.id for h in g))
        seen += len(g)
        if seen == top:
            break
    return ranked


def test_edge_to_server_and_back_keeps_every_top10(source_db, tmp_path, embedder):
    source, server, back = EdgeStore(source_db), local_store(str(tmp_path / "local")), EdgeStore(tmp_path / "db2")
    try:
        there = migrate(source, server, MigrateRequest("products", batch_size=7))
        assert there.copied == there.total == source.count("products") and there.verified_queries > 0
        home = migrate(server, back, MigrateRequest("products", batch_size=5))
        assert home.copied == home.total == there.total
        assert back.get_meta("products") == source.get_meta("products")
        assert top10s(back, embedder) == top10s(source, embedder)
        assert top10s(server, embedder) == top10s(source, embedder)
        one = next(iter(source.scroll("products", with_vectors=True)))
        copy = back.retrieve("products", [one.id], with_vectors=True)[0]
        assert copy.payload == one.payload and set(copy.vectors) == set(one.vectors)
        # Copied, never re-embedded; each store renormalizes cosine vectors in float32, which may
        # move the last bit (seen in about a third of the vectors with some tiny models).
        for k in one.vectors:
            np.testing.assert_allclose(copy.vectors[k], one.vectors[k], rtol=0, atol=1e-6)
    finally:
        for s in (source, server, back):
            s.close()


class Interrupted(Exception):
    pass


def test_an_interrupted_migrate_resumes_where_it_stopped(source_db, tmp_path):
    source, target = EdgeStore(source_db), EdgeStore(tmp_path / "target")
    request = MigrateRequest("products", batch_size=10)

    def stop_after_two_batches(done: int, copied: int) -> None:
        if done >= 20:
            raise Interrupted

    try:
        with pytest.raises(Interrupted):
            migrate(source, target, request, on_batch=stop_after_two_batches)
        assert target.count("products") == 20
        report = migrate(source, target, request)
        assert (report.already_there, report.copied) == (20, report.total - 20)
        again = migrate(source, target, request)
        assert (again.already_there, again.copied) == (report.total, 0)
    finally:
        source.close()
        target.close()


def test_verify_finds_a_missing_point_and_a_changed_vector(source_db, tmp_path):
    source, target = EdgeStore(source_db), EdgeStore(tmp_path / "target")
    request = MigrateRequest("products", sample=1000)
    try:
        migrate(source, target, request)
        victim = next(iter(target.scroll("products", with_vectors=True)))
        target.delete("products", [victim.id])
        with pytest.raises(StoreUnavailableError, match="run the same migrate again"):
            verify(source, target, request)
        turned = {k: -v for k, v in victim.vectors.items()}
        target.upsert("products", [PointRecord(victim.id, turned, victim.payload)])
        with pytest.raises(StoreUnavailableError, match="differs between source and target"):
            verify(source, target, request)
    finally:
        source.close()
        target.close()


def test_a_target_of_another_space_is_refused(source_db, tmp_path):
    source, target = EdgeStore(source_db), EdgeStore(tmp_path / "target")
    try:
        target.create_collection("products", CollectionMeta(model="other@1", dimension=8))
        with pytest.raises(BadInputError, match="another space.*--to-collection"):
            migrate(source, target, MigrateRequest("products"))
    finally:
        source.close()
        target.close()


def test_snapshot_and_restore_round_trip(source_db, tmp_path, embedder):
    archive = snapshot_edge(source_db, "products", tmp_path / "snap" / "products.tar.gz")
    assert restore_edge(archive, tmp_path / "restored") == "products"
    assert restore_edge(archive, tmp_path / "restored", collection="copy") == "copy"
    original, restored = EdgeStore(source_db), EdgeStore(tmp_path / "restored")
    try:
        assert restored.count("products") == restored.count("copy") == original.count("products")
        assert restored.get_meta("products") == original.get_meta("products")
        assert top10s(restored, embedder) == top10s(original, embedder)
    finally:
        original.close()
        restored.close()
    with pytest.raises(BadInputError, match="already exists.*--force"):
        restore_edge(archive, tmp_path / "restored")
    assert restore_edge(archive, tmp_path / "restored", force=True) == "products"


def test_snapshot_is_refused_while_another_owner_has_the_store_open(source_db, tmp_path):
    owner = EdgeStore(source_db)
    try:
        owner.count("products")  # holds the shard's lock, as `shelfsight serve` does
        with pytest.raises(StoreUnavailableError, match="open in another process"):
            snapshot_edge(source_db, "products", tmp_path / "s.tar.gz")
        assert not (tmp_path / "s.tar.gz").exists()
    finally:
        owner.close()


def test_restore_refuses_an_archive_that_is_not_a_snapshot(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    (tmp_path / "a.txt").write_text("x")
    with tarfile.open(junk, "w:gz") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    with pytest.raises(BadInputError, match="not a Shelfsight embedded-store snapshot"):
        restore_edge(junk, tmp_path / "db")


def test_local_mode_says_it_has_no_snapshots(tmp_path):
    store = local_store(str(tmp_path / "local"))
    try:
        store.create_collection("products", CollectionMeta(model="m@1", dimension=4))
        with pytest.raises(StoreUnavailableError, match="no snapshot API"):
            snapshot_server(store, "products", tmp_path / "s.snapshot")
    finally:
        store.close()
