"""Words beside CLIP, on every backend: BM25 lists, exact ids, quoted phrases, typo correction, the
relevance floor, and collections made before any of these existed.

The tiny model is random, so these tests lean on what the words decide, not on CLIP's ranking.
"""

from __future__ import annotations

import csv
import random
from dataclasses import replace

import pytest
from shelfsight.search.engine import SearchEngine, SearchRequest
from shelfsight.search.errors import BadInputError
from shelfsight.search.lexical import correct_words, named_values, vocabulary
from shelfsight.search.relevance import made_up_queries


def _rows(catalog_dir) -> list[dict]:
    return list(csv.DictReader((catalog_dir / "catalog.csv").open()))


def test_bm25_alone_finds_the_products_with_the_word(engine, catalog_dir):
    brand = _rows(catalog_dir)[0]["brand"]
    holders = {r["id"] for r in _rows(catalog_dir) if brand.lower() in (r["title"] + r["description"]).lower()}
    hits = engine.search(brand, vectors=["bm25"], limit=100)
    assert {h.id for h in hits} == holders
    assert all(h.vector_scores["text->bm25"].rank for h in hits)


def test_default_search_fuses_the_words_list_and_explains_it(engine, catalog_dir):
    row = _rows(catalog_dir)[3]
    hit = engine.search(f"{row['brand']} {row['type']}", limit=5)[0]
    assert "text->bm25" in hit.vector_scores and "text->bm25" in hit.contributions
    assert sum(hit.contributions.values()) == pytest.approx(hit.score, rel=1e-3)


def test_a_product_id_finds_that_product_first(engine, catalog_dir):
    row = _rows(catalog_dir)[7]
    answer = engine.answer(row["id"], None, SearchRequest(limit=5))
    assert answer.exact_match and answer.hits[0].id == row["id"]
    assert answer.hits[0].vector_scores["exact:product_id"].rank == 1
    assert len(answer.hits) == 5 and len({h.id for h in answer.hits}) == 5
    # an exact match still obeys the filters
    other = next(r["category"] for r in _rows(catalog_dir) if r["category"] != row["category"])
    filtered = engine.answer(row["id"], None, SearchRequest(filters=(f"category={other}",), limit=5))
    assert not filtered.exact_match and row["id"] not in {h.id for h in filtered.hits}


def test_quoted_phrase_must_appear_word_for_word(engine, catalog_dir):
    row = _rows(catalog_dir)[2]
    words = row["title"].split()
    phrase = " ".join(words[-2:]).lower()
    hits = engine.search(f'"{phrase}"', limit=100)
    assert hits and all(phrase in (h.payload["title"] + " " + h.payload["description"]).lower() for h in hits)
    reversed_phrase = " ".join(reversed(words[-2:])).lower()
    assert all(
        reversed_phrase not in (h.payload["title"] + " " + h.payload["description"]).lower()
        for h in engine.search(f'"{reversed_phrase}"', limit=100)
    )


def test_a_misspelled_word_is_corrected_and_said(engine, catalog_dir):
    noun = next(r["type"] for r in _rows(catalog_dir) if len(r["type"]) >= 5 and r["type"].isalpha())
    typo = noun[0] + noun[2] + noun[1] + noun[3:]  # two neighbours swapped
    answer = engine.answer(f"{typo}", None, SearchRequest(limit=10))
    assert answer.showing_results_for == noun
    assert engine.answer(typo, None, SearchRequest(limit=10, correct=False)).showing_results_for is None


def test_made_up_words_find_nothing_unless_min_score_says_otherwise(engine):
    # The floor rejects 99% of calibration's made-up queries. The tiny model is random, so one
    # made-up query can land on either side by chance; fresh ones drawn the same way (another
    # seed) must be rejected about as often.
    assert engine.meta.relevance_floor is not None
    queries = made_up_queries(random.Random(7), engine.meta.vocabulary, 40)
    answers = [engine.answer(q, None, SearchRequest(limit=10)) for q in queries]
    assert all(a.hits == [] for a in answers if a.no_close_matches)
    assert sum(a.no_close_matches for a in answers) >= 32
    rejected = next(q for q, a in zip(queries, answers) if a.no_close_matches)
    forced = engine.answer(rejected, None, SearchRequest(limit=10, min_score=-1.0))
    assert not forced.no_close_matches and len(forced.hits) == 10


def test_a_catalog_word_always_gets_its_hits_whatever_the_floor(engine):
    strict = SearchEngine(engine.store, engine.embedder, engine.collection)
    strict.meta = replace(engine.meta, relevance_floor=1.0)
    answer = strict.answer("bag", None, SearchRequest(limit=5))
    assert not answer.no_close_matches and len(answer.hits) == 5


def test_a_collection_from_before_words_says_to_reindex(engine):
    old = SearchEngine(engine.store, engine.embedder, engine.collection)
    old.meta = replace(old.meta, sparse_vectors=(), text_fields=(), vocabulary={}, relevance_floor=None)
    with pytest.raises(BadInputError, match="--reindex"):
        old.search("bag", vectors=["bm25"])
    with pytest.raises(BadInputError, match="--reindex"):
        old.search('"red bag"')
    assert old.search("bag", limit=3)  # plain searches keep working, on the CLIP lists


def test_typo_correction_rules():
    vocab = vocabulary(["Kestrel red leather mug", "blue canvas sneaker", "cap cup"])
    assert correct_words("Kestrl mgu", vocab) == "kestrel mug"  # one edit each; a swap counts as one
    assert correct_words("cpa", vocab) == "cap"
    assert correct_words("blue sneakr + ./photo.jpg", vocab) == "blue sneaker + ./photo.jpg"
    assert correct_words('"kestrl" P000-12', vocab) is None  # quoted and id-like words stay
    assert correct_words("zzzz qqq", vocab) is None  # nothing close enough


def test_named_values_match_whole_words_in_order():
    values = {"brand": ["Fable & Co", "Atlas"], "color": ["red"]}
    assert named_values("fable & co red mug", values) == [("brand", "Fable & Co"), ("color", "red")]
    assert named_values("atlases", values) == []


def test_a_keyword_boost_lifts_matching_products_and_explains_its_share(engine):
    plain = engine.run("bag", None, SearchRequest(limit=10))
    color = next(h.payload["color"] for h in plain[3:] if h.payload["color"] != plain[0].payload["color"])
    boosted = engine.run("bag", None, SearchRequest(limit=10, boosts=(f"color={color}:50",)))
    assert boosted[0].payload["color"] == color
    for hit in boosted:
        signal = 1.0 if hit.payload["color"] == color else 0.0
        assert hit.vector_scores["boost:color"].score == signal
        assert sum(hit.contributions.values()) == pytest.approx(hit.score, rel=1e-3)
    assert [h.score for h in boosted] == sorted((h.score for h in boosted), reverse=True)


def test_a_price_preference_brings_prices_near_the_target(engine):
    request = SearchRequest(limit=5, fusion="rrf")
    plain = engine.run("bag", None, request)
    near = engine.run("bag", None, replace(request, boosts=("price~30/5:20",)))
    distance = lambda hits: sum(abs(h.payload["price"] - 30) for h in hits) / len(hits)  # noqa: E731
    assert distance(near) < distance(plain)


def test_bad_boosts_and_diversity_are_named(engine):
    for spec, message in [
        ("color~3", "not a numeric field"),
        ("price=cheap", "not a keyword field"),
        ("price^0", "above 0"),
        ("nonsense", "bad boost"),
    ]:
        with pytest.raises(BadInputError, match=message):
            engine.run("bag", None, SearchRequest(boosts=(spec,)))
    with pytest.raises(BadInputError, match="diversity"):
        engine.run("bag", None, SearchRequest(diversity=1.5))
    with pytest.raises(BadInputError, match="rrf, dbsf"):
        engine.run("bag", None, SearchRequest(fusion="weighted", boosts=("price^10",)))


def test_diversity_spreads_a_page_over_unlike_products(engine):
    def spread(hits) -> float:
        points = engine.store.retrieve(engine.collection, [h.payload and _point(h) for h in hits], with_vectors=True)
        vectors = [p.vectors["image"] for p in points]
        sims = [float(a @ b) for i, a in enumerate(vectors) for b in vectors[i + 1 :]]
        return sum(sims) / len(sims)

    relevance = engine.run("shoe", None, SearchRequest(limit=6, fusion="rrf", diversity=0.0))
    diverse = engine.run("shoe", None, SearchRequest(limit=6, fusion="rrf", diversity=0.9))
    assert len(diverse) == 6 and spread(diverse) < spread(relevance)


def _point(hit) -> str:
    from shelfsight.search.records import point_id

    return point_id(hit.id)


def test_recency_boost_in_the_store_matches_its_explanation(store, collection_name):
    import numpy as np
    from shelfsight.search.boosts import signal
    from shelfsight.search.records import point_id
    from shelfsight.search.store.base import Boost, CollectionMeta, NearestQuery, PointRecord

    store.create_collection(collection_name, CollectionMeta(model="m@1", dimension=4, vectors=("text",)))
    dates = ["2026-11-26T00:00:00Z", "2026-11-19T00:00:00Z", "2026-10-27T00:00:00Z", "2025-11-26T00:00:00Z"]
    vector = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    points = [PointRecord(point_id(f"p{i}"), {"text": vector}, {"added": d}) for i, d in enumerate(dates)]
    store.upsert(collection_name, points)
    boost = Boost("recent", "added", 1.0, "2026-11-26T00:00:00Z", 7 * 86_400.0)
    _, final = store.query(collection_name, [NearestQuery(vector, "text", 10)], limit=4, boosts=[boost])
    assert [p.payload["added"] for p in final] == dates
    for p in final:  # cosine 1 times (1 + signal): 2 for today, 1.5 for a week ago
        assert p.score == pytest.approx(1.0 + signal(boost, p.payload), rel=1e-4)
