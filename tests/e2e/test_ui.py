"""The storefront: flows through Streamlit's AppTest, then the real app in headless Chromium."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from shelfsight.search.engine import SearchEngine
from streamlit.testing.v1 import AppTest

from tests.e2e.helpers import run_cli, serving
from tests.e2e.storefront import APP, BROWSER_ARGS, CARD_LINE, CHROMIUM, storefront, wait_for_results

# A product whose catalog text is full of markup; the storefront must show it as typed.
MARKUP_TITLE = "<b>bold</b> **tote** bag"
MARKUP_DESCRIPTION = "<i>hand</i> made, see [offer](http://shop.test) `now` <script>alert(1)</script>"


@pytest.fixture
def app(built_db, monkeypatch):
    with storefront(built_db, monkeypatch) as make:
        yield make


@pytest.fixture(scope="module")
def markup_db(tmp_path_factory, tiny_model_dir, catalog_dir) -> Path:
    """A small store holding five generated products and one whose title and description are markup."""
    tmp = tmp_path_factory.mktemp("markup")
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))[:5]
    for r in rows:
        r["image"] = str(catalog_dir / r["image"])
    rows.append(dict(rows[0], id="M-markup", title=MARKUP_TITLE, description=MARKUP_DESCRIPTION))
    with (tmp / "catalog.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run_cli("ingest", tmp / "catalog.csv", "--db", tmp / "db", "--model", tiny_model_dir, check=True)
    return tmp / "db"


def _texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def _cards(at: AppTest) -> list[str]:
    return [t for t in _texts(at) if CARD_LINE.match(t)]


def _rows(catalog_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((catalog_dir / "catalog.csv").open()))


def _catalog_prices(catalog_dir: Path) -> list[float]:
    return [float(r["price"]) for r in _rows(catalog_dir)]


@pytest.fixture
def hat_title(catalog_dir) -> str:
    """A hat's title: its words match that hat (so a search filtered to hats has close matches) and
    other products (its brand, colour and pattern), so unfiltered results hold other categories."""
    return next(r["title"] for r in _rows(catalog_dir) if r["category"] == "hat")


def test_empty_state_suggests(app):
    at = app()
    assert not at.exception and any("Try:" in i.value for i in at.info)


def test_text_query_from_url_shows_cards_and_says_what_was_searched(app, catalog_dir):
    first = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    query = f"{first['title']}. {first['description']}"
    at = app(q=query)
    assert not at.exception
    assert first["title"] in _texts(at)
    assert f"12 results for “{query}”" in _texts(at)


def test_scores_only_inside_why_this_result(app):
    at = app(q="bag")
    assert not at.exception and _cards(at)
    explained = {t.value for e in at.expander for t in e.text}
    scored = [t for t in _texts(at) if "score" in t.lower() or "similarity" in t]
    assert scored and all(t in explained for t in scored), scored
    assert all(CARD_LINE.match(c) for c in _cards(at))  # a card says what and how much, no score


def test_filter_narrows_results_and_lands_in_url(app, hat_title):
    at = app(q=hat_title, category="hat")
    assert not at.exception
    cards = _cards(at)
    assert cards and all(t.startswith("hat") for t in cards)
    assert at.query_params["category"] == ["hat"] or at.query_params["category"] == "hat"
    assert any(t.endswith("· filtered to hat") for t in _texts(at))


def test_filter_chosen_in_the_sidebar_is_written_to_the_url(app, hat_title):
    at = app(q=hat_title)
    assert not at.exception and "category" not in at.query_params
    assert {t.split(" ")[0] for t in _cards(at)} - {"hat"}  # unfiltered, other categories show

    at.multiselect(key="f-category").select("hat").run()
    assert not at.exception
    assert at.query_params.get("category") in ("hat", ["hat"])  # the app wrote the choice into the URL
    assert at.query_params.get("q") in (hat_title, [hat_title])
    cards = _cards(at)
    assert cards and all(t.startswith("hat") for t in cards)

    at.multiselect(key="f-category").unselect("hat").run()
    assert not at.exception and "category" not in at.query_params  # and takes it out again


def test_price_is_a_range_over_the_catalogs_own_prices(app, catalog_dir):
    prices = _catalog_prices(catalog_dir)
    cheapest = min(_rows(catalog_dir), key=lambda r: float(r["price"]))
    at = app(q=cheapest["title"])
    assert not at.exception
    price = at.slider(key="f-price")
    assert (price.min, price.max) == (math.floor(min(prices)), math.ceil(max(prices)))
    assert tuple(price.value) == (price.min, price.max)  # no limit until the shopper picks one
    assert "pmin" not in at.query_params and "pmax" not in at.query_params

    cap = math.ceil(float(cheapest["price"]))  # the product searched for is among what is left
    price.set_range(price.min, cap).run()
    assert not at.exception
    assert at.query_params.get("pmax") in (str(cap), [str(cap)])
    cards = _cards(at)
    assert cards and all(float(CARD_LINE.match(c).group(2)) <= cap for c in cards)
    assert any(t.endswith(f"” · up to ${cap}") for t in _texts(at))


def test_no_close_matches_says_what_was_searched_and_clears_filters(app):
    at = app(q="bag", category="no-such-category")
    assert not at.exception and not _cards(at)
    assert "No close matches for “bag” · filtered to no-such-category" in _texts(at)
    at.button(key="clear-filters").click().run()
    assert not at.exception and "category" not in at.query_params
    assert _cards(at) and any(t.startswith("12 results for “bag”") for t in _texts(at))


def test_a_corrected_query_says_what_was_searched_and_what_was_typed(app, catalog_dir):
    title = _rows(catalog_dir)[0]["title"]
    word, rest = title.split(" ", 1)
    typo = f"{word[:-2]}{word[-1]}{word[-2]} {rest}"  # "Atlas orange …" -> "Atlsa orange …"
    at = app(q=typo)
    assert not at.exception and _cards(at)
    assert any(t.startswith("12 results for “") and t.endswith(f"(you typed “{typo}”)") for t in _texts(at))


def test_more_like_this(app):
    at = app(q="shoe")
    at.button(key="similar-0").click().run()
    assert not at.exception and any(re.match(r"\d+ products like “", t) for t in _texts(at))


def test_errors_are_messages(app, monkeypatch, tmp_path):
    at = app(q="bag", pmax="-5")
    assert not at.exception
    monkeypatch.setenv("SHELFSIGHT_DB", str(tmp_path / "nothing"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception  # the missing collection is a message, not a traceback
    assert at.error and "not ready" in at.error[0].value


def test_description_never_rendered_as_html(markup_db, monkeypatch):
    with storefront(markup_db, monkeypatch) as make:
        at = make(q="<b>bold</b>")
    assert not at.exception
    assert all("<b>" not in m.value for m in at.markdown)
    # The catalog's markup comes back as the literal text it is, never as HTML or Markdown.
    texts = _texts(at)
    assert MARKUP_TITLE in texts and MARKUP_DESCRIPTION in texts
    rendered = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for piece in ("<b>", "**tote**", "<i>", "[offer]", "<script>"):
        assert not any(piece in r for r in rendered), piece


def test_storefront_lets_go_of_its_store(built_db, monkeypatch):
    with storefront(built_db, monkeypatch) as make:
        assert not make(q="bag").exception
    # One process owns an embedded store: this open is refused while the app still holds it.
    with SearchEngine.open(built_db) as engine:
        assert engine.count() == 48


# Text the page shows cut short: an element that clips its text with an ellipsis and has more than fits.
CUT_SHORT_JS = """() => [...document.querySelectorAll('body *')]
    .filter(e => e.offsetParent !== null && e.textContent.trim())
    .filter(e => getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.textContent.trim().slice(0, 80))"""
# Visible text that shows a score (the expanders' contents are not rendered while they are closed).
SCORES_SHOWN_JS = """() => [...document.querySelectorAll('[data-testid="stText"], [data-testid="stMarkdownContainer"]')]
    .filter(e => e.offsetParent !== null && /score|similarity/i.test(e.innerText)).map(e => e.innerText)"""


def _check_fits(page) -> None:
    assert not page.evaluate(CUT_SHORT_JS), page.evaluate(CUT_SHORT_JS)  # labels and buttons fit
    assert not page.evaluate(SCORES_SHOWN_JS)  # no score on a card until "Why this result" opens
    assert page.get_by_text("Deploy", exact=True).count() == 0  # no developer toolbar for shoppers
    assert page.get_by_test_id("stMainMenu").count() == 0


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_storefront_in_headless_chromium(built_db, catalog_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    # The in-process runs above closed their engines, so the server process can open the shared store.
    first = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    with serving("ui", "--db", built_db, health="/_stcore/health") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.goto(f"{base}/?q={quote_plus(first['title'])}", wait_until="domcontentloaded")
            try:
                wait_for_results(page)
                page.get_by_text(first["title"], exact=True).first.wait_for(timeout=30_000)
            finally:
                page.screenshot(path=str(tmp_path / "storefront-1400.png"), full_page=True)
            assert page.get_by_text(f"12 results for “{first['title']}”", exact=True).count() == 1
            _check_fits(page)
            page.get_by_text("Why this result").first.click()
            page.get_by_text(re.compile(r"^Match score ")).first.wait_for(timeout=30_000)

            phone = browser.new_page(viewport={"width": 390, "height": 1200}, is_mobile=True, has_touch=True)
            phone.goto(f"{base}/?q={quote_plus(first['title'])}", wait_until="domcontentloaded")
            try:
                wait_for_results(phone)
            finally:
                phone.screenshot(path=str(tmp_path / "storefront-390.png"), full_page=True)
            _check_fits(phone)
            phone.close()

            # upload a product photo: results for the image appear
            page.locator("input[type=file]").set_input_files(str(catalog_dir / first["image"]))
            page.get_by_text(f"for “{first['title']}” with your photo", exact=False).first.wait_for(timeout=60_000)
            page.get_by_text(first["title"], exact=True).first.wait_for(timeout=60_000)
            # a filter and a price cap through the URL the page keeps: only that category, only up to the cap
            cheapest = min(_rows(catalog_dir), key=lambda r: float(r["price"]))
            cap = math.ceil(float(cheapest["price"]))
            query, category = quote_plus(cheapest["title"]), quote_plus(cheapest["category"])
            page.goto(f"{base}/?q={query}&category={category}&pmax={cap}", wait_until="domcontentloaded")
            wait_for_results(page, 60_000)
            summary = f"for “{cheapest['title']}” · filtered to {cheapest['category']}, up to ${cap}"
            page.get_by_text(summary, exact=False).first.wait_for(timeout=60_000)
            for line in wait_for_results(page, 60_000):
                shown, price = CARD_LINE.match(line).groups()
                assert shown == cheapest["category"] and float(price) <= cap
            # nothing matches: the page says so, with what was searched
            page.goto(f"{base}/?q=bag&category=no-such-category", wait_until="domcontentloaded")
            page.get_by_text("No close matches for “bag” · filtered to no-such-category").wait_for(timeout=60_000)
        finally:
            browser.close()


def test_sort_lower_prices_first_is_a_boost_the_shopper_can_see(app):
    at = app(q="bag")
    assert not at.exception
    mean_price = lambda cards: sum(float(CARD_LINE.match(c).group(2)) for c in cards) / len(cards)  # noqa: E731
    best = mean_price(_cards(at))
    at.selectbox(key="sort").set_value("Best match, lower prices first").run()
    assert not at.exception
    assert at.query_params.get("sort") in ("Best match, lower prices first", ["Best match, lower prices first"])
    assert mean_price(_cards(at)) < best
    explained = {t.value for e in at.expander for t in e.text}
    assert any(t.startswith("shop preference on price") for t in explained)
    at.selectbox(key="sort").set_value("Best match, more variety").run()
    assert not at.exception and _cards(at)
