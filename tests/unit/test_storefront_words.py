"""What the storefront says about a search, and the catalog summary its filters are built from."""

from __future__ import annotations

import math

from shelfsight.search.catalog_summary import CatalogSummary, number_ranges
from shelfsight.ui.describe import Asked, Price, narrowing


def test_the_price_range_filters_only_where_the_shopper_narrowed_it():
    assert Price(5, 80, (5, 80)).filters == [] and Price(5, 80, (5, 80)).describe() == ""
    assert Price(5, 80, (5, 50)).filters == ["price<=50"] and Price(5, 80, (5, 50)).describe() == "up to $50"
    assert Price(5, 80, (10, 80)).filters == ["price>=10"] and Price(5, 80, (10, 80)).describe() == "from $10"
    assert Price(5, 80, (10, 50)).filters == ["price>=10", "price<=50"]
    assert Price(5, 80, (10, 50)).describe() == "$10–$50"


def test_the_result_count_says_what_was_searched():
    narrowed = narrowing({"category": ["shoe"], "color": []}, Price(5, 80, (5, 50)))
    assert narrowed == "filtered to shoe, up to $50"
    assert Asked("red bag", narrowed=narrowed).found(12) == "12 results for “red bag” · filtered to shoe, up to $50"
    assert Asked("red bag").found(1) == "1 result for “red bag”"
    assert Asked("red", "your photo").found(3) == "3 results for “red” with your photo"
    assert Asked(photo="this product's photo").found(2) == "2 results for this product's photo"
    assert Asked(similar_title="Atlas mug").found(5) == "5 products like “Atlas mug”"
    assert narrowing({"category": ["hat", "mug"]}, None) == "filtered to hat or mug"
    assert narrowing({"category": []}, Price(5, 80, (10, 80))) == "from $10"
    assert Asked("mug", narrowed="up to $9").found(2) == "2 results for “mug” · up to $9"


def test_no_close_matches_names_the_search():
    nothing = Asked("bag", narrowed="filtered to no-such").nothing()
    assert nothing == "No close matches for “bag” · filtered to no-such"
    assert Asked(similar_title="Atlas mug").nothing() == "No close matches for products like “Atlas mug”"


def test_number_ranges_skip_what_is_not_a_finite_number():
    payloads = [
        {"price": 12.5, "weight": 3},
        {"price": 4.0},
        {"price": math.nan, "weight": True},
        {"price": "cheap"},
        {"price": 99},
        {},
    ]
    assert number_ranges(payloads, ["price", "weight", "size"]) == {"price": (4.0, 99.0), "weight": (3.0, 3.0)}


def test_the_catalog_summary_round_trips_as_json():
    summary = CatalogSummary(
        "products", 48, "tiny", ("image", "text", "fused"), {"category": "keyword", "price": "float"}, "dbsf",
        {"price": (4.99, 89.5)}, 1.5, ("image", "text", "bm25"),
    )  # fmt: skip
    assert CatalogSummary.from_dict(summary.to_dict()) == summary
