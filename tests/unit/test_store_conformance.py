"""One body of tests, every backend: what the engine and the pipeline rely on from a store."""

import numpy as np
import pytest
from shelfsight.search.errors import BadInputError, CollectionNotFoundError
from shelfsight.search.fusion import fuse_dbsf, fuse_rrf, rank_fused
from shelfsight.search.records import point_id
from shelfsight.search.store.base import CollectionMeta, Match, NearestQuery, PointRecord, Range

META = CollectionMeta(
    model="m@1", dimension=8, model_source="/models/m", fields={"category": "keyword", "price": "float"}
)


def _points(n=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        vectors = {name: rng.normal(size=8) for name in ("image", "text")}
        vectors = {k: (v / np.linalg.norm(v)).astype(np.float32) for k, v in vectors.items()}
        payload = {"product_id": str(i), "category": ["shoe", "bag", "hat"][i % 3], "price": float(i)}
        out.append(PointRecord(point_id(str(i)), vectors, payload))
    return out


@pytest.fixture
def filled(store, collection_name):
    store.create_collection(collection_name, META)
    points = _points()
    store.upsert(collection_name, points)
    return store, collection_name, points  # the collection_name fixture drops it


def test_meta_round_trip_and_missing(store, collection_name):
    assert not store.collection_exists(collection_name)
    with pytest.raises(CollectionNotFoundError, match="ingest"):
        store.get_meta(collection_name)
    store.create_collection(collection_name, META)
    assert store.get_meta(collection_name) == META
    store.drop_collection(collection_name)
    assert not store.collection_exists(collection_name)


def test_upsert_is_idempotent_and_retrieve(filled):
    store, name, points = filled
    store.upsert(name, points[:5])  # same ids again: update, not duplicate
    assert store.count(name) == 30
    got = store.retrieve(name, [points[3].id], with_vectors=True)[0]
    assert got.payload["product_id"] == "3"
    assert got.vectors["image"] == pytest.approx(points[3].vectors["image"], abs=1e-6)
    assert store.retrieve(name, [point_id("nope")]) == []


def test_filters_count_and_delete(filled):
    store, name, _ = filled
    assert store.count(name, (Match("category", ("shoe",)),)) == 10
    assert store.count(name, (Match("category", ("shoe", "bag")),)) == 20
    assert store.count(name, (Match("category", ("shoe",), exclude=True),)) == 20
    assert store.count(name, (Range("price", lte=9.0),)) == 10
    assert store.count(name, (Range("price", gt=9.0, lt=20.0), Match("category", ("hat",)))) == 3
    store.delete(name, [point_id("0"), point_id("1")])
    assert store.count(name) == 28
    assert sum(1 for _ in store.scroll(name, batch_size=7)) == 28


def test_ids_lists_every_point_across_pages(filled, monkeypatch):
    """What pruning compares with the catalog: every id once, however many pages it takes."""
    from shelfsight.search.store import core

    store, name, points = filled
    monkeypatch.setattr(core, "IDS_PAGE", 7)  # 30 points: five pages, the last one short
    store.delete(name, [points[0].id])
    assert sorted(store.ids(name)) == sorted(p.id for p in points[1:])


def test_payload_updates(filled):
    store, name, _ = filled
    store.set_payload(name, {point_id("2"): {"tag": "red"}})
    assert store.retrieve(name, [point_id("2")])[0].payload["tag"] == "red"
    store.set_payload(name, {point_id("2"): {"product_id": "2", "only": "this"}}, overwrite=True)
    assert store.retrieve(name, [point_id("2")])[0].payload == {"product_id": "2", "only": "this"}


def test_facets(filled):
    store, name, _ = filled
    assert dict(store.facet(name, "category")) == {"shoe": 10, "bag": 10, "hat": 10}
    assert dict(store.facet(name, "category", (Range("price", lt=4.0),))) == {"shoe": 2, "bag": 1, "hat": 1}


def test_bm25_words_given_with_a_point_are_the_ones_stored(store, collection_name):
    """The ingest's read workers make each product's BM25 words; a point that brings them is
    found by them, and a point without them by the words the store makes from its payload."""
    from shelfsight.search.lexical import BM25, bm25_document, bm25_query

    store.create_collection(collection_name, META)
    given, made = _points(2)
    given = PointRecord(given.id, given.vectors, given.payload, words=bm25_document("zebra"))
    store.upsert(collection_name, [given, made])
    assert BM25 in META.sparse_vectors

    def found(text: str) -> list[str]:
        lists, _ = store.query(collection_name, [NearestQuery(bm25_query(text), BM25, 5)])
        return [hit.payload["product_id"] for hit in lists[0]]

    assert found("zebra") == ["0"]
    assert found("shoe") == []  # point 0's payload words were not used: its own words were
    assert found("bag") == ["1"]


def test_nearest_with_filter_and_threshold(filled):
    store, name, points = filled
    lists, fused = store.query(name, [NearestQuery(points[4].vectors["image"], "image", 5)])
    assert fused is None and lists[0][0].id == points[4].id and lists[0][0].score == pytest.approx(1.0, abs=1e-5)
    lists, _ = store.query(
        name, [NearestQuery(points[4].vectors["image"], "image", 30)], (Match("category", ("hat",)),)
    )
    assert lists[0] and all(p.payload["category"] == "hat" for p in lists[0])
    lists, _ = store.query(name, [NearestQuery(points[4].vectors["image"], "image", 30, score_threshold=0.5)])
    assert lists[0] and all(p.score >= 0.5 for p in lists[0])


@pytest.mark.parametrize("method, weights", [("rrf", [1.0, 1.0]), ("rrf", [3.0, 1.0]), ("dbsf", [1.0, 1.0])])
def test_engine_fusion_matches_python(filled, method, weights):
    store, name, points = filled
    queries = [
        NearestQuery(points[7].vectors["image"], "image", 20),
        NearestQuery(points[9].vectors["text"], "text", 20),
    ]
    lists, fused = store.query(name, queries, fusion=(method, weights), limit=10)
    ranked = [[(p.id, p.score) for p in lst] for lst in lists]
    python = rank_fused((fuse_rrf if method == "rrf" else fuse_dbsf)(ranked, weights))
    expected = {pid: score for pid, score in python}
    assert len(fused) == 10
    for p in fused:
        assert p.score == pytest.approx(expected[p.id], rel=1e-4)
    assert [p.score for p in fused] == pytest.approx([s for _, s in python[:10]], rel=1e-4)


@pytest.mark.parametrize(
    "vectors, message",
    [
        ({"image": np.full(8, np.nan)}, "NaN"),
        ({"image": np.ones(4)}, "8-d"),
        ({"sketch": np.ones(8)}, "no vector 'sketch'"),
    ],
)
def test_bad_vectors_rejected_before_the_engine(filled, vectors, message):
    store, name, _ = filled
    with pytest.raises(BadInputError, match=message):
        store.upsert(name, [PointRecord(point_id("x"), vectors, {})])
    assert store.count(name) == 30
