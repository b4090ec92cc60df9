"""Congruence of the two backends, in the manner of qdrant-client's ``tests/congruence_tests``:
the same generated points go into the embedded store (EdgeStore, qdrant-edge) and the server
backend (ServerStore over qdrant-client's local mode; also a real server when ``QDRANT_URL`` is
set), then the same random requests run on both and the results are compared one by one.

Each request draws a vector selection (one to three nearest lists over ``image``/``text``), a
fusion mode (none, RRF with equal or unequal weights, DBSF), a random filter over keyword and range
fields (``random_filter``, after qdrant-client's ``one_random_filter_please``), per-list limits and
score thresholds, and a fused limit and offset. ``compare`` wants the same ids in the same order and
scores within 1e-4.

Why exact search on both sides: HNSW is approximate, so two engines could disagree on a hard query
without either being wrong. Here neither side uses an index: qdrant-edge builds HNSW only on
``optimize()``, which this test never calls, so its queries are a brute-force scan; qdrant-client's
local mode always scans; and a real server scans a collection this small (far below its
``indexing_threshold`` and ``full_scan_threshold``). So both sides are exact and must agree.

Ties: equal-weight RRF gives equal scores to points with mirrored ranks, and each engine orders a
tie its own way. ``compare`` treats a run of equal scores (within 1e-6) as a set; where a tie
straddles the page's edge (``boundary_ties`` asks the reference one result deeper, or the fused
page from the top) it compares that group by score only, since which tied point falls inside the
page is not defined. Everything else must match id for id.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import replace

import numpy as np
import pytest
from shelfsight.search.store.base import CollectionMeta, Match, NearestQuery, PointRecord, Range, StoredPoint
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.server import ServerStore, local_store

DIM = 16
N_POINTS = 300
N_QUERIES = 240
CATEGORIES = ("shoe", "bag", "hat", "mug", "tee")
COLORS = ("red", "blue", "green", "black")
META = CollectionMeta(
    model="m@1",
    dimension=DIM,
    fields={"category": "keyword", "color": "keyword", "price": "float", "stock": "float"},
)
SCORE_TOLERANCE = 1e-4
TIE = 1e-6


def generate_points(n: int = N_POINTS, seed: int = 17) -> list[PointRecord]:
    """Clustered unit vectors (as CLIP's are) and a payload with two keyword and two range fields."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, DIM))
    points = []
    for _ in range(n):
        vectors = {}
        for name in ("image", "text"):
            v = centres[rng.integers(len(centres))] + 0.6 * rng.normal(size=DIM)
            vectors[name] = (v / np.linalg.norm(v)).astype(np.float32)
        payload = {
            "category": CATEGORIES[int(rng.integers(len(CATEGORIES)))],
            "color": COLORS[int(rng.integers(len(COLORS)))],
            "price": round(float(rng.uniform(1, 200)), 2),
            "stock": float(rng.integers(0, 50)),
        }
        points.append(PointRecord(str(uuid.UUID(int=int(rng.integers(1, 2**63)))), vectors, payload))
    return points


def random_filter(rnd: random.Random) -> tuple:
    """Zero to three conditions: keyword matches (one or more values, sometimes negated) and ranges."""
    conditions: list = []
    for _ in range(rnd.choice((0, 0, 1, 1, 2, 3))):
        kind = rnd.choice(("category", "color", "price", "stock"))
        if kind in ("category", "color"):
            values = CATEGORIES if kind == "category" else COLORS
            picked = tuple(rnd.sample(values, rnd.choice((1, 1, 2, 3))))
            conditions.append(Match(kind, picked, exclude=rnd.random() < 0.25))
        else:
            top = 200.0 if kind == "price" else 50.0
            low, high = sorted((round(rnd.uniform(0, top), 2), round(rnd.uniform(0, top), 2)))
            bounds = rnd.choice(({"gte": low}, {"lt": high}, {"gt": low, "lte": high}, {"gte": low, "lt": high}))
            conditions.append(Range(kind, **bounds))
    return tuple(conditions)


def random_request(rnd: random.Random, rng: np.random.Generator) -> dict:
    """One store.query call: lists, filter, fusion, limit and offset."""
    lists = []
    for _ in range(rnd.choice((1, 2, 2, 3))):
        v = rng.normal(size=DIM)
        threshold = rnd.choice((None, None, None, 0.0, 0.3))
        lists.append(
            NearestQuery(
                (v / np.linalg.norm(v)).astype(np.float32), rnd.choice(("image", "text")), rnd.randint(1, 30), threshold
            )
        )
    fusion = rnd.choice((None, "rrf", "rrf", "dbsf"))
    weights = [rnd.choice((1.0, 1.0, 0.5, 2.0, 0.7)) for _ in lists] if fusion == "rrf" else [1.0] * len(lists)
    return {
        "lists": lists,
        "filter": random_filter(rnd),
        "fusion": (fusion, weights) if fusion else None,
        "limit": rnd.randint(1, 20),
        "offset": rnd.choice((0, 0, 0, 1, 3, 10)),
    }


def _tie_groups(points: list[StoredPoint]) -> list[list[StoredPoint]]:
    groups: list[list[StoredPoint]] = []
    for p in points:
        if groups and abs(groups[-1][0].score - p.score) <= TIE:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def compare(a: list[StoredPoint], b: list[StoredPoint], cut_at_end: bool, cut_at_start: bool, what: str) -> None:
    """Same ids in the same order (ties as sets), scores within SCORE_TOLERANCE.

    ``cut_at_start``/``cut_at_end``: the page's first/last result ties with the one just outside
    it, so which of the tied points fall inside is not defined; that group is compared by score only.
    """
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} results"
    for x, y in zip(a, b):
        assert abs(x.score - y.score) <= SCORE_TOLERANCE, f"{what}: score {x.score} vs {y.score}"
    groups_a, groups_b = _tie_groups(a), _tie_groups(b)
    assert [len(g) for g in groups_a] == [len(g) for g in groups_b], f"{what}: ties differ"
    for i, (ga, gb) in enumerate(zip(groups_a, groups_b)):
        if (cut_at_end and i == len(groups_a) - 1) or (cut_at_start and i == 0):
            continue
        ids_a = [p.id for p in ga] if len(ga) == 1 else sorted(p.id for p in ga)
        ids_b = [p.id for p in gb] if len(gb) == 1 else sorted(p.id for p in gb)
        assert ids_a == ids_b, f"{what}: ids differ at group {i}: {ids_a} vs {ids_b}"
        if len(ga) == 1:
            assert ga[0].payload == gb[0].payload, f"{what}: payload of {ids_a[0]} differs"


def _tied(points: list[StoredPoint], inside: int, outside: int) -> bool:
    if min(inside, outside) < 0 or max(inside, outside) >= len(points):
        return False
    return abs(points[inside].score - points[outside].score) <= TIE


def boundary_ties(store, name: str, request: dict) -> tuple[list[bool], bool, bool]:
    """Whether each list's last result, and the fused page's first and last, tie with the result
    just outside: asked again one deeper (the lists) or from the top (the fused page)."""
    deeper = [replace(q, limit=q.limit + 1) for q in request["lists"]]
    lists, _ = store.query(name, deeper, request["filter"])
    list_cuts = [_tied(r, q.limit - 1, q.limit) for r, q in zip(lists, request["lists"])]
    if request["fusion"] is None:
        return list_cuts, False, False
    offset, end = request["offset"], request["offset"] + request["limit"]
    _, fused = store.query(name, request["lists"], request["filter"], fusion=request["fusion"], limit=end + 1)
    assert fused is not None
    return list_cuts, _tied(fused, offset, offset - 1), _tied(fused, end - 1, end)


def _backends(tmp_path) -> list:
    stores = [EdgeStore(tmp_path / "edge"), local_store(str(tmp_path / "local"))]
    if os.environ.get("QDRANT_URL"):
        stores.append(ServerStore.connect(os.environ["QDRANT_URL"], os.environ.get("QDRANT_API_KEY")))
    return stores


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Every backend holding the same points in a collection of this module's own."""
    stores = _backends(tmp_path_factory.mktemp("congruence"))
    name = f"c{uuid.uuid4().hex[:12]}"
    points = generate_points()
    try:
        for store in stores:
            store.create_collection(name, META)
            for start in range(0, len(points), 64):
                store.upsert(name, points[start : start + 64])
        yield stores, name
    finally:
        for store in stores:
            try:
                if store.collection_exists(name):
                    store.drop_collection(name)
            finally:
                store.close()


def test_random_queries_agree_on_every_backend(loaded):
    stores, name = loaded
    rnd, rng = random.Random(2026), np.random.default_rng(2026)
    fused_pages = 0
    for n in range(N_QUERIES):
        request = random_request(rnd, rng)
        reference_lists, reference_fused = stores[0].query(name, **request)
        list_cuts, start_cut, end_cut = boundary_ties(stores[0], name, request)
        for store in stores[1:]:
            lists, fused = store.query(name, **request)
            what = f"query {n} on {type(store).__name__} vs EdgeStore ({request['fusion']}, filter {request['filter']})"
            for i, (a, b) in enumerate(zip(reference_lists, lists)):
                compare(a, b, list_cuts[i], False, f"{what}, list {i}")
            assert (reference_fused is None) == (fused is None), what
            if fused is not None:
                compare(reference_fused, fused, end_cut, start_cut, f"{what}, fused")
                fused_pages += bool(fused)
    assert fused_pages >= N_QUERIES // 4  # the fused paths really ran, most with results


def test_counts_and_facets_agree_under_random_filters(loaded):
    stores, name = loaded
    rnd = random.Random(7)
    for n in range(60):
        flt = random_filter(rnd)
        counts = [s.count(name, flt) for s in stores]
        assert len(set(counts)) == 1, f"filter {n} {flt}: counts {counts}"
        field = rnd.choice(("category", "color"))
        facets = [sorted(s.facet(name, field, flt)) for s in stores]
        assert all(f == facets[0] for f in facets), f"filter {n} {flt}: facets {facets}"
        scrolled = [sorted(p.id for p in s.scroll(name, flt, batch_size=50)) for s in stores]
        assert all(ids == scrolled[0] for ids in scrolled) and len(scrolled[0]) == counts[0], f"filter {n} {flt}"


def test_compare_catches_a_difference():
    """The comparison itself can fail: another id, a score off by more than the tolerance."""
    a = [StoredPoint("1", {}, 0.9), StoredPoint("2", {}, 0.8)]
    with pytest.raises(AssertionError, match="ids differ"):
        compare(a, [StoredPoint("3", {}, 0.9), a[1]], False, False, "other id")
    with pytest.raises(AssertionError, match="score"):
        compare(a, [StoredPoint("1", {}, 0.9), StoredPoint("2", {}, 0.7)], False, False, "drift")
