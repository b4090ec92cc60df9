"""Shared fixtures: one tiny CLIP model for the session, a generated catalog, and stores of every
backend (embedded qdrant-edge, qdrant-client local mode, and a real server when QDRANT_URL is set)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from shelfsight.data.generate import write_catalog
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.embedder import Embedder
from shelfsight.search.engine import SearchEngine
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.server import ServerStore, local_store
from shelfsight.train.model_init import init_model

BACKENDS = ["edge", "server-local"] + (["server"] if os.environ.get("QDRANT_URL") else [])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def embedder(tiny_model_dir) -> Embedder:
    return Embedder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catalog")
    write_catalog(out, n=48, seed=5)
    return out


def make_store(backend: str, tmp: Path):
    if backend == "edge":
        return EdgeStore(tmp / "db")
    if backend == "server-local":
        return local_store(str(tmp / "qdrant-local"))
    return ServerStore.connect(os.environ["QDRANT_URL"], os.environ.get("QDRANT_API_KEY"))


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.close()


def drop_if_present(store, name: str) -> None:
    if store.collection_exists(name):
        store.drop_collection(name)


@pytest.fixture
def collection_name(store) -> Iterator[str]:
    """A collection name of the test's own; whatever the test left under it is dropped, pass or fail."""
    # Unique per test so a shared server never sees two tests in one collection.
    name = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        drop_if_present(store, name)


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, tmp_path_factory, embedder, catalog_dir):
    """A search engine over the generated catalog, ingested with an early-fused vector."""
    tmp = tmp_path_factory.mktemp(f"engine-{request.param}")
    s = make_store(request.param, tmp)
    name = f"e{uuid.uuid4().hex[:12]}"
    try:
        options = IngestOptions(collection=name, fused_weight=0.5)
        report = ingest_catalog(catalog_dir / "catalog.csv", s, embedder, options)
        assert report.skipped == 0
        yield SearchEngine(s, embedder, name)
    finally:
        try:
            drop_if_present(s, name)
        finally:
            s.close()
