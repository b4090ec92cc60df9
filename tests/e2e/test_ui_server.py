"""The storefront beside `shelfsight serve` on one store: it answers through the server while one
runs, by itself when the server has gone, and lets go of the store when a server starts after it.
Through the server, its reads give what the engine gives in-process (the same hits, facets,
products, images and catalog summary).
The server runs with ``--fp32-queries`` here: it embeds query texts as the engine in-process does,
so "the same hits" is exact (by default it uses an int8 text tower, a cosine of 0.998 away)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from urllib.parse import quote_plus

import pytest
from shelfsight.search import SearchEngine, SearchRequest
from shelfsight.search.catalog_summary import summarize
from shelfsight.search.discovery import find_server
from shelfsight.ui.shop import LocalShop, ServerShop

from tests.e2e.helpers import run_cli, serving
from tests.e2e.storefront import BROWSER_ARGS, CHROMIUM, wait_for_results

THROUGH = "Answering through the Shelfsight server"


def _cards_for(page, url: str) -> list[str]:
    """Open ``url`` and return the card lines ("hat · $12.99") once all the results are in."""
    page.goto(url, wait_until="domcontentloaded")
    return wait_for_results(page)


def _misspelt(title: str) -> str:
    """The title with its first word's last two letters swapped ("Atlas" -> "Atlsa")."""
    word, rest = title.split(" ", 1)
    return f"{word[:-2]}{word[-1]}{word[-2]} {rest}"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_storefront_and_server_side_by_side_on_one_store(built_db):
    from playwright.sync_api import sync_playwright

    with serving("ui", "--db", built_db, health="/_stcore/health") as ui, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        url = f"{ui}/?q={quote_plus('bag')}"
        try:
            # serve first: the storefront, started beside it, asks it (and so does the CLI)
            with serving("serve", "--db", built_db, "--fp32-queries", health="/health"):
                record = find_server(built_db)
                assert record is not None
                through = _cards_for(page, url)
                page.get_by_text(f"{THROUGH} (pid {record.pid})").wait_for(timeout=30_000)
                cli = run_cli("search", "bag", "--db", built_db, "--json", check=True)
                assert "answered by the server" in cli.stderr and json.loads(cli.stdout)
            # the server has gone: the storefront opens the store itself, with the same answers
            assert _cards_for(page, url) == through
            assert page.get_by_text(THROUGH).count() == 0
            # a server started while the storefront holds the store: the storefront hands it over
            # (/docs answers before the server has the store, /health only after)
            with serving("serve", "--db", built_db, "--fp32-queries", health="/docs"):
                record = find_server(built_db)
                assert record is not None
                assert _cards_for(page, url) == through
                page.get_by_text(f"{THROUGH} (pid {record.pid})").wait_for(timeout=30_000)
        finally:
            browser.close()


def test_the_server_answers_the_storefronts_reads_as_the_engine_does(built_db, catalog_dir):
    first = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    with SearchEngine.open(built_db) as engine:
        local = LocalShop(engine)
        summary = summarize(engine)
        # the vectors named, as the storefront names them (the engine's default)
        request = SearchRequest(
            filters=[f"price<={float(first['price']) + 20}"], vectors=summary.search_vectors, limit=8
        )
        answer = local.answer(first["title"], None, request)
        typo = local.answer(_misspelt(first["title"]), None, request)
        facets = local.facets(["category", "color"], first["title"])
        similar = local.similar(first["id"], ["price<=60"], 5)
        product = local.product(first["id"])
    image = (catalog_dir / first["image"]).read_bytes()
    with serving("serve", "--db", built_db, "--fp32-queries", health="/health"):
        record = find_server(built_db)
        assert record is not None
        shop = ServerShop(record)
        assert replace(shop.summary(), measured_at=0.0) == replace(summary, measured_at=0.0)
        assert summary.ranges["price"][0] < summary.ranges["price"][1]
        for asked, expected in ((first["title"], answer), (_misspelt(first["title"]), typo)):
            got = shop.answer(asked, None, request)
            assert expected.hits and [h.id for h in got.hits] == [h.id for h in expected.hits]
            assert replace(got, hits=[]) == replace(expected, hits=[])  # corrections and notes too
        assert typo.showing_results_for
        assert shop.facets(["category", "color"], first["title"]) == facets
        assert [h.id for h in shop.similar(first["id"], ["price<=60"], 5)] == [h.id for h in similar]
        assert replace(shop.product(first["id"]), image=None) == replace(product, image=None)
        assert shop.card_image(answer.hits[0]) is not None and shop.query_image(first["id"]) == image
        # a query by that photo, sent as bytes, finds the product first among the product photos
        assert shop.answer(None, image, SearchRequest(vectors=("image",), limit=3)).hits[0].id == first["id"]
