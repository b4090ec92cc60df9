"""The storefront: flows through Streamlit's AppTest, then the real app in headless Chromium."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from shelfsight.search.engine import SearchEngine
from streamlit.testing.v1 import AppTest

from tests.e2e.helpers import run_cli, serving
from tests.e2e.storefront import APP, storefront

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


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


def test_empty_state_suggests(app):
    at = app()
    assert not at.exception and any("Try:" in i.value for i in at.info)


def test_text_query_from_url_shows_cards(app, catalog_dir):
    first = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    at = app(q=f"{first['title']}. {first['description']}")
    assert not at.exception
    assert first["title"] in _texts(at)
    assert any("results in" in c.value for c in at.caption)


def _cards(at: AppTest) -> list[str]:
    return [t for t in _texts(at) if "score" in t]


def test_filter_narrows_results_and_lands_in_url(app):
    at = app(q="bag", category="hat")
    assert not at.exception
    cards = _cards(at)
    assert cards and all(t.startswith("hat") for t in cards)
    assert at.query_params["category"] == ["hat"] or at.query_params["category"] == "hat"


def test_filter_chosen_in_the_sidebar_is_written_to_the_url(app):
    at = app(q="bag")
    assert not at.exception and "category" not in at.query_params
    assert {t.split(" ")[0] for t in _cards(at)} - {"hat"}  # unfiltered, other categories show

    at.multiselect(key="f-category").select("hat").run()
    assert not at.exception
    assert at.query_params.get("category") in ("hat", ["hat"])  # the app wrote the choice into the URL
    assert at.query_params.get("q") in ("bag", ["bag"])
    cards = _cards(at)
    assert cards and all(t.startswith("hat") for t in cards)

    at.multiselect(key="f-category").unselect("hat").run()
    assert not at.exception and "category" not in at.query_params  # and takes it out again


def test_more_like_this(app):
    at = app(q="shoe")
    at.button(key="similar-0").click().run()
    assert not at.exception and any(c.value.startswith("More like") for c in at.caption)


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


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_storefront_in_headless_chromium(built_db, catalog_dir):
    from playwright.sync_api import sync_playwright

    # The in-process runs above closed their engines, so the server process can open the shared store.
    first = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    ARTIFACTS.mkdir(exist_ok=True)
    with serving("ui", "--db", built_db, health="/_stcore/health") as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            query = quote_plus(f"{first['title']}. {first['description']}")
            page.goto(f"{base}/?q={query}", wait_until="domcontentloaded")
            try:
                page.get_by_text("results in").first.wait_for(timeout=150_000)
                page.get_by_text(first["title"], exact=True).first.wait_for(timeout=30_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "storefront.png"), full_page=True)
            # upload a product photo: results for the image appear
            page.locator("input[type=file]").set_input_files(str(catalog_dir / first["image"]))
            page.get_by_text("results in").first.wait_for(timeout=60_000)
            page.get_by_text(first["title"], exact=True).first.wait_for(timeout=60_000)
            # change a filter through the URL the page keeps: only that category shows
            page.goto(f"{base}/?q=bag&category={first['category']}", wait_until="domcontentloaded")
            page.get_by_text("results in").first.wait_for(timeout=60_000)
            page.get_by_text(" score ").first.wait_for(timeout=60_000)  # the summary can render before the cards
            cards = page.get_by_text(" score ").all_inner_texts()
            assert cards and all(c.startswith(first["category"]) for c in cards)
            page.screenshot(path=str(ARTIFACTS / "storefront-filtered.png"), full_page=True)
            browser.close()
