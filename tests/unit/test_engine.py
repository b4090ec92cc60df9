"""Search through the public API on every backend: each query kind, fusion method and error."""

import pytest
from PIL import Image
from shelfsight.search.engine import SearchEngine
from shelfsight.search.errors import (
    BadInputError,
    CollectionNotFoundError,
    IncompatibleCollectionError,
    ProductNotFoundError,
)
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.tagging import tag_collection
from shelfsight.train.model_init import init_model


def _products(engine, n=6):
    products = [engine.get(p.payload["product_id"]) for p in list(engine.store.scroll(engine.collection))[:n]]
    assert len(products) == n  # the loops below must check something
    return products


def test_own_image_first_on_image_vector(engine, catalog_dir):
    for product in _products(engine):
        hits = engine.search(image=str(catalog_dir / product.image), vectors=["image"], limit=3)
        assert hits[0].id == product.id
        assert hits[0].vector_scores["image->image"].score == pytest.approx(1.0, abs=1e-4)


def test_own_text_first_on_text_vector(engine):
    for product in _products(engine):
        hits = engine.search(product.text, vectors=["text"], limit=3, parse=False)
        assert hits[0].id == product.id


@pytest.mark.parametrize("method", ["rrf", "dbsf", "weighted", "early"])
def test_every_fusion_method_with_filters(engine, catalog_dir, method):
    product = _products(engine, 1)[0]
    category = product.fields["category"]
    hits = engine.search(
        product.text,
        str(catalog_dir / product.image),
        fusion_method=method,
        parse=False,
        filters=[f"category={category}", "price<=1000"],
        limit=5,
    )
    assert hits and all(h.payload["category"] == category for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    if method != "early":
        lists = {"text->image", "text->text", "image->image", "image->text", "text->bm25"}
        named = set(hits[0].vector_scores) - lists  # field values the query names, e.g. its brand
        assert lists <= set(hits[0].vector_scores) and all(n.startswith("text->text[") for n in named)
        assert sum(hits[0].contributions.values()) == pytest.approx(hits[0].score, rel=1e-3)
    # its own text and image together put the product first in every mode
    assert hits[0].id == product.id


def test_numeric_ranges_and_exclusions_honoured(engine):
    hits = engine.search("bag", filters={"price": {"gte": 20, "lt": 60}, "color": ["red", "blue"]}, limit=50)
    assert hits and all(20 <= h.payload["price"] < 60 and h.payload["color"] in ("red", "blue") for h in hits)
    hits = engine.search("bag", filters=["color!=red"], limit=50)
    assert hits and all(h.payload["color"] != "red" for h in hits)


def test_paging_and_min_score(engine):
    page = engine.search("shoe", limit=10)
    later = engine.search("shoe", limit=5, offset=5)
    # the same hits; scores to float noise (local mode's cosines vary in the 16th digit from call
    # to call, and DBSF's normalization over a tiny model's close scores magnifies that)
    assert [h.id for h in later] == [h.id for h in page[5:10]]
    assert [h.score for h in later] == pytest.approx([h.score for h in page[5:10]], rel=1e-6)
    # just under the 4th hit's cosine, which may be the best text cosine of all (a hit ranks by
    # every list): the store compares in float32
    floor = page[3].vector_scores["text->text"].score - 1e-4
    hits = engine.search("shoe", vectors=["text"], min_score=floor, limit=50)
    assert hits and all(h.score >= floor - 1e-6 for h in hits)


def test_negative_term_lowers_matching_products(engine):
    product = _products(engine, 1)[0]
    plain = engine.search(product.title, vectors=["text"], limit=48, parse=False)
    negated = engine.search(f"{product.title} -{product.fields['color']}", vectors=["text"], limit=48)
    score = lambda hits: next(h.vector_scores["text->text"].score for h in hits if h.id == product.id)  # noqa: E731
    assert score(negated) < score(plain)


def test_similar_excludes_itself(engine):
    product = _products(engine, 1)[0]
    hits = engine.similar(product.id, limit=5)
    assert len(hits) == 5 and product.id not in [h.id for h in hits]
    with pytest.raises(ProductNotFoundError):
        engine.similar("no-such-id")


def test_facets_count_filtered_and_query(engine):
    total = dict(engine.facets(["category"])["category"])
    assert sum(total.values()) == engine.count()
    shoes = dict(engine.facets(["category"], filters=["category=shoe"])["category"])
    assert set(shoes) == {"shoe"} and shoes["shoe"] == total["shoe"]
    top = dict(engine.facets(["category"], "red", depth=10)["category"])
    assert sum(top.values()) == 10


def test_query_errors(engine, tmp_path):
    with pytest.raises(BadInputError, match="empty query"):
        engine.search("  ")
    with pytest.raises(BadInputError, match="filterable fields: .*category"):
        engine.search("shoe", filters=["colour=red"])
    with pytest.raises(BadInputError, match="holds text"):
        engine.search("shoe", filters=["category<3"])
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(BadInputError, match="not an image"):
        engine.search(image=str(tmp_path / "bad.jpg"))
    with pytest.raises(BadInputError, match="not found"):
        engine.search(image=str(tmp_path / "missing.jpg"))
    with pytest.raises(BadInputError, match="unknown fusion"):
        engine.search("shoe", fusion_method="magic")


def test_pil_and_bytes_images(engine, catalog_dir):
    product = _products(engine, 1)[0]
    path = catalog_dir / product.image
    by_pil = engine.search(image=Image.open(path), vectors=["image"], limit=1)
    by_bytes = engine.search(image=path.read_bytes(), vectors=["image"], limit=1)
    assert by_pil[0].id == by_bytes[0].id == product.id


def test_zero_shot_tags_become_filterable(engine):
    counts = tag_collection(engine.store, engine.embedder, engine.collection, ["shoe", "bag", "hat"], threshold=0.0)
    engine.meta = engine.store.get_meta(engine.collection)
    assert sum(counts.values()) == engine.count()
    label, n = max(counts.items(), key=lambda kv: kv[1])
    hits = engine.search("product", filters=[f"tag={label}"], limit=100)
    assert len(hits) == n and all(h.payload["tag"] == label for h in hits)
    everything_unknown = tag_collection(
        engine.store, engine.embedder, engine.collection, ["shoe", "bag"], threshold=1.0
    )
    assert everything_unknown == {"unknown": engine.count()}


def test_open_errors(tmp_path, embedder, catalog_dir):
    with pytest.raises(CollectionNotFoundError, match="shelfsight ingest"):
        SearchEngine.open(tmp_path / "empty-db")
    from shelfsight.ingest.pipeline import ingest_catalog

    store = EdgeStore(tmp_path / "db")
    ingest_catalog(catalog_dir / "catalog.csv", store, embedder)
    store.close()
    other = init_model("tiny", tmp_path / "other", seed=3)
    with pytest.raises(IncompatibleCollectionError, match="--reindex"):
        SearchEngine.open(tmp_path / "db", model=str(other))
    with SearchEngine.open(tmp_path / "db") as engine:  # the collection's own model by default
        assert engine.search("red shoe", limit=2)


def test_repeated_queries_reuse_their_vectors(engine, catalog_dir):
    product = _products(engine, 1)[0]
    image = Image.open(catalog_dir / product.image)
    first = engine.search("red bag", image, filters=["price<=100"], limit=5)
    misses = engine.query_vectors.misses
    again = engine.search("red bag", image.copy(), filters=["price<=100"], limit=5)  # same pixels, new object
    assert engine.query_vectors.misses == misses  # nothing embedded again
    assert [(h.id, h.score) for h in again] == [(h.id, h.score) for h in first]
    engine.search("blue shoe", image, limit=5)
    assert engine.query_vectors.misses == misses + 1  # only the new text


def test_default_fusion_is_dbsf(engine):
    default = engine.search("red bag", limit=8)
    dbsf = engine.search("red bag", fusion_method="dbsf", limit=8)
    rrf = engine.search("red bag", fusion_method="rrf", limit=8)
    assert [h.id for h in default] == [h.id for h in dbsf]
    assert [h.score for h in default] == pytest.approx([h.score for h in dbsf])
    assert [h.score for h in default] != pytest.approx([h.score for h in rrf])


@pytest.mark.parametrize("method", ["dbsf", "weighted"])
def test_explanations_give_exact_cosines_also_for_lists_a_hit_missed(engine, monkeypatch, method):
    """Lists only 4 deep under a page of 8, so page hits miss lists: the cosine shown for such a
    list (rank None) is still the product's exact cosine, read from the store for the page alone;
    weighted fusion scores every candidate with such cosines."""
    import numpy as np
    from shelfsight.search.records import point_id

    monkeypatch.setattr("shelfsight.search.engine.candidate_depth", lambda want: 4)
    text = _products(engine, 1)[0].text
    query = engine.encode_query_texts([text])[0]
    hits = engine.search(text, fusion_method=method, vectors=["image", "text"], parse=False, limit=8)
    # more hits than one list holds, so some hit is missing from a list, whatever the numerics
    assert len(hits) > 4
    stored = {p.id: p for p in engine.store.retrieve(engine.collection, [point_id(h.id) for h in hits], True)}
    missed = 0
    for hit in hits:
        vectors = stored[point_id(hit.id)].vectors
        for using in ("image", "text"):
            shown = hit.vector_scores[f"text->{using}"]
            expected = float(np.dot(vectors[using], query)) if using in vectors else 0.0
            assert shown.score == pytest.approx(expected, abs=1e-4)
            missed += shown.rank is None
    assert missed  # follows from the count above; the page read those cosines from the store
    if method == "weighted":  # the fused score is the mean of the two exact cosines
        for hit in hits:
            mean = sum(hit.vector_scores[f"text->{u}"].score for u in ("image", "text")) / 2
            assert hit.score == pytest.approx(mean, abs=1e-4)
