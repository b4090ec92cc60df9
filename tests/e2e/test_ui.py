"""The storefront: flows through Streamlit's AppTest, then the real app in headless Chromium."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from streamlit.testing.v1 import AppTest

from tests.e2e.conftest import serving

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def app(built_db, monkeypatch):
    monkeypatch.setenv("SHELFSIGHT_DB", str(built_db))
    monkeypatch.delenv("QDRANT_URL", raising=False)

    def make(**params) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        for key, value in params.items():
            at.query_params[key] = value
        return at.run()

    return make


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


def test_filter_narrows_results_and_lands_in_url(app):
    at = app(q="bag", category="hat")
    assert not at.exception
    cards = [t for t in _texts(at) if "score" in t]
    assert cards and all(t.startswith("hat") for t in cards)
    assert at.query_params["category"] == ["hat"] or at.query_params["category"] == "hat"


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


def test_description_never_rendered_as_html(app, built_db, catalog_dir):
    hits_html = "<b>bold</b>"
    at = app(q=f"{hits_html}")
    assert not at.exception
    assert all("<b>" not in m.value for m in at.markdown)


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_storefront_in_headless_chromium(tmp_path, tiny_model_dir, catalog_dir, server_env):
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import run_cli

    # Its own store: the AppTest runs above keep theirs open in this process, and one process owns a store.
    built_db = tmp_path / "db"
    run_cli("ingest", catalog_dir / "catalog.csv", "--db", built_db, "--model", tiny_model_dir, check=True)

    first = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    ARTIFACTS.mkdir(exist_ok=True)
    with serving("ui", "--db", built_db, health="/_stcore/health", env=server_env) as base:
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
