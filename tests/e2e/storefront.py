"""The storefront run in this process (Streamlit's AppTest), for the tests that drive it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import streamlit as st
from shelfsight.search.engine import SearchEngine
from streamlit.testing.v1 import AppTest

from tests.e2e.helpers import LOCATION_VARIABLES

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")


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
