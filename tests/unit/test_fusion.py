"""Fusion math checked against numbers worked by hand."""

import numpy as np
import pytest
from shelfsight.search.fusion import combine, dbsf_normalize, early_fuse, fuse_dbsf, fuse_rrf, fuse_weighted, rank_fused


def test_cosine_ranking_worked_example():
    # query [0.6, 0.8]: red car 0.6*0.64+0.8*0.77 = 1.0 (/|car| 1.0012 -> 0.9988),
    # green tree 0.48+0.48 = 0.96, blue bicycle 0.8.
    query = np.array([0.6, 0.8])
    products = {"red car": [0.64, 0.77], "blue bicycle": [0.0, 1.0], "green tree": [0.8, 0.6]}
    scores = {name: float(np.dot(early_fuse(np.array(v), None, 1.0), query)) for name, v in products.items()}
    assert scores["red car"] == pytest.approx(0.9988, abs=1e-4)
    assert scores["green tree"] == pytest.approx(0.96)
    assert scores["blue bicycle"] == pytest.approx(0.8)
    assert sorted(scores, key=scores.get, reverse=True) == ["red car", "green tree", "blue bicycle"]


def test_rrf_unweighted_by_hand():
    # k=60: a is 1st and 2nd -> 1/60 + 1/61; b is 2nd only -> 1/61; c is 1st in list 2 -> 1/60.
    fused = fuse_rrf([[("a", 0.9), ("b", 0.8)], [("c", 0.7), ("a", 0.6)]])
    assert sum(fused["a"]) == pytest.approx(1 / 60 + 1 / 61)
    assert fused["b"] == [pytest.approx(1 / 61), 0.0]
    assert rank_fused(fused)[0][0] == "a"


def test_rrf_weights_stretch_ranks_like_qdrant():
    # weight 2 on list 1: rank r scores 1/(k - 1 + r/2); item at rank 5 -> 1/(59 + 2.5) = 1/61.5
    fused = fuse_rrf([[(i, 1.0) for i in range(5)]], weights=[2.0])
    assert fused[4][0] == pytest.approx(1 / 61.5)
    assert fused[0][0] == pytest.approx(1 / 59.5)
    with pytest.raises(ValueError):
        fuse_rrf([[("a", 1.0)]], weights=[0.0])


def test_dbsf_normalize_by_hand():
    # scores 1, 2, 3: mean 2, sample sd 1 -> [-1, 5] maps onto [0, 1]
    assert dbsf_normalize([1.0, 2.0, 3.0]) == pytest.approx([2 / 6, 3 / 6, 4 / 6])
    assert dbsf_normalize([0.4]) == [0.5]
    assert dbsf_normalize([0.3, 0.3]) == [0.5, 0.5]


def test_dbsf_weighted_sum():
    fused = fuse_dbsf([[("a", 1.0), ("b", 2.0), ("c", 3.0)], [("a", 3.0), ("b", 2.0), ("c", 1.0)]], weights=[2.0, 1.0])
    assert sum(fused["a"]) == pytest.approx(2 * 2 / 6 + 4 / 6)
    assert sum(fused["c"]) == pytest.approx(2 * 4 / 6 + 2 / 6)


def test_weighted_sum_of_cosines():
    fused = fuse_weighted({"a": [0.8, 0.2], "b": [0.4, 0.7]}, weights=[3.0, 1.0])
    assert sum(fused["a"]) == pytest.approx((3 * 0.8 + 0.2) / 4)
    assert sum(fused["b"]) == pytest.approx((3 * 0.4 + 0.7) / 4)
    assert rank_fused(fused)[0][0] == "a"


def test_early_fuse_is_weighted_mean_renormalized():
    image, text = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    fused = early_fuse(image, text, 0.75)
    assert fused == pytest.approx(np.array([0.75, 0.25]) / np.hypot(0.75, 0.25))
    assert np.linalg.norm(fused) == pytest.approx(1.0)
    assert early_fuse(None, text, 0.3) == pytest.approx(text)
    with pytest.raises(ValueError):
        early_fuse(image, text, 1.5)


def test_combine_negative_term_pushes_away():
    red, striped = np.array([1.0, 0.0]), np.array([0.6, 0.8])
    query = combine([red, striped], [1.0, -1.0])
    assert query == pytest.approx(np.array([0.4, -0.8]) / np.hypot(0.4, 0.8))
    assert float(query @ striped) < float(red @ striped)
