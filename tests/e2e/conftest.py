"""Fixtures for the end-to-end tests; the process helpers they use live in ``tests.e2e.helpers``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import run_cli


@pytest.fixture(scope="session")
def built_db(tmp_path_factory, tiny_model_dir, catalog_dir) -> Path:
    db = tmp_path_factory.mktemp("cli") / "db"
    run_cli(
        "ingest",
        catalog_dir / "catalog.csv",
        "--db",
        db,
        "--model",
        tiny_model_dir,
        "--fused-weight",
        "0.5",
        check=True,
    )
    return db
