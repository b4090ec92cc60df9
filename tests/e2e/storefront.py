"""The storefront run in this process (Streamlit's AppTest), for the tests that drive it, and what
the browser tests read off its page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from re import compile as regex

import pytest
import streamlit as st
from shelfsight.search.engine import SearchEngine
from streamlit.testing.v1 import AppTest

from tests.e2e.helpers import LOCATION_VARIABLES

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
# A card's second line: "hat · $12.99" (category, price).
CARD_LINE = regex(r"^(\S.*) · \$(\d+\.\d\d)$")
# The page has drawn every result the count announces ("12 results for …"), each with its
# "More like this" button and its picture loaded (Streamlit sends elements as the script runs and
# draws placeholders first).
_ALL_CARDS_JS = """() => {
    const texts = [...document.querySelectorAll('[data-testid="stText"]')].map(e => e.innerText.trim());
    const count = texts.map(t => /^(\\d+) results? for /.exec(t)).find(m => m);
    if (!count) return false;
    const cards = texts.filter(t => /^\\S.* · \\$\\d+\\.\\d\\d$/.test(t)).length;
    const buttons = [...document.querySelectorAll('button')].filter(b => b.innerText.trim() === 'More like this');
    const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
    const n = Number(count[1]);
    return cards === n && buttons.length === n && images.length === n && images.every(i => i.complete && i.naturalWidth);
}"""


def wait_for_results(page, timeout: float = 150_000) -> list[str]:
    """Wait until the page shows a search's results in full; return the cards' lines, in order."""
    page.wait_for_function(_ALL_CARDS_JS, timeout=timeout)
    return [t.strip() for t in page.locator('[data-testid="stText"]').all_inner_texts() if CARD_LINE.match(t.strip())]


@contextmanager
def storefront(db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """Run the app in this process over ``db``; yields ``make(**url_params) -> AppTest`` after one run.

    The app keeps its engine in a ``st.cache_resource`` (so the store stays open and locked); on the
    way out, pass or fail, the cache is cleared and every engine the app opened is closed.
    """
    opened: list[SearchEngine] = []
    real_open = SearchEngine.open.__func__

    def recording_open(cls, *args, **kwargs):
        engine = real_open(cls, *args, **kwargs)
        opened.append(engine)
        return engine

    for name in LOCATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHELFSIGHT_DB", str(db))
    monkeypatch.setattr(SearchEngine, "open", classmethod(recording_open))

    def make(**params) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        for key, value in params.items():
            at.query_params[key] = value
        return at.run()

    try:
        yield make
    finally:
        st.cache_resource.clear()
        for engine in opened:
            engine.close()
