"""Models found again where the collection is opened: a directory under the models root
(``SHELFSIGHT_MODELS``) is recorded relative to it, so a container that mounts the root elsewhere
loads the same model; ``--model`` overrides; a missing model names every path looked in."""

from __future__ import annotations

import shutil

import pytest
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.embedder import Embedder, resolve_model
from shelfsight.search.engine import SearchEngine
from shelfsight.search.errors import ModelUnavailableError
from shelfsight.search.settings import Settings
from shelfsight.search.store.edge import EdgeStore


@pytest.fixture
def host_root(tmp_path, tiny_model_dir):
    root = tmp_path / "host-models"
    shutil.copytree(tiny_model_dir, root / "shop" / "tiny")
    return root


def test_a_model_under_the_root_is_recorded_relative_to_it(host_root):
    embedder = Embedder(str(host_root / "shop" / "tiny"), models_root=host_root)
    assert embedder.model_source == "shop/tiny"
    assert Embedder("shop/tiny", models_root=host_root).model_id == embedder.model_id


def test_a_model_outside_the_root_is_recorded_absolute_and_a_hub_name_as_is(host_root, tmp_path):
    outside = shutil.copytree(host_root / "shop" / "tiny", tmp_path / "elsewhere")
    assert Embedder(str(outside), models_root=host_root).model_source == str(outside.resolve())
    assert Embedder("clip-ViT-B-32", models_root=host_root).model_source == "clip-ViT-B-32"


def test_collection_opens_where_the_root_is_mounted_elsewhere(host_root, tmp_path, catalog_dir, monkeypatch):
    db = tmp_path / "db"
    store = EdgeStore(db)
    try:
        embedder = Embedder(str(host_root / "shop" / "tiny"), models_root=host_root, device="cpu")
        ingest_catalog(catalog_dir / "catalog.csv", store, embedder, IngestOptions(collection="products"))
        assert store.get_meta("products").model_source == "shop/tiny"
    finally:
        store.close()
    container_root = tmp_path / "mnt-models"
    shutil.move(host_root, container_root)  # the host path is gone, as inside a container
    monkeypatch.setenv("SHELFSIGHT_MODELS", str(container_root))
    with SearchEngine.open(Settings(db=str(db), device="cpu")) as engine:
        assert engine.embedder.model_path == str(container_root / "shop" / "tiny")
        assert len(engine.search("red bag", limit=3)) == 3


def test_an_absolute_directory_from_another_machine_is_looked_for_under_the_root(host_root, tmp_path):
    recorded = "/home/someone/models/tiny"
    root = tmp_path / "root"
    shutil.copytree(host_root / "shop" / "tiny", root / "tiny")
    assert resolve_model(recorded, root) == str(root / "tiny")


def test_a_missing_model_names_both_paths_and_the_fixes(tmp_path):
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailableError) as err:
        _ = Embedder("/home/someone/models/tiny", models_root=root).model_id
    message = str(err.value)
    assert "/home/someone/models/tiny" in message and str(root / "tiny") in message
    assert "SHELFSIGHT_MODELS" in message and "--model DIR" in message


def test_a_missing_model_without_a_root_says_the_root_is_unset(monkeypatch):
    monkeypatch.delenv("SHELFSIGHT_MODELS", raising=False)
    with pytest.raises(
        ModelUnavailableError, match="nowhere/tiny is a directory with a config.json; SHELFSIGHT_MODELS is not set"
    ):
        Embedder("./nowhere/tiny").encode_texts(["red shoe"])


def test_model_flag_overrides_the_recorded_source(host_root, tmp_path, catalog_dir, tiny_model_dir):
    db = tmp_path / "db"
    store = EdgeStore(db)
    try:
        embedder = Embedder(str(host_root / "shop" / "tiny"), models_root=host_root, device="cpu")
        ingest_catalog(catalog_dir / "catalog.csv", store, embedder, IngestOptions(collection="products"))
    finally:
        store.close()
    shutil.rmtree(host_root)
    with SearchEngine.open(Settings(db=str(db), device="cpu"), model=str(tiny_model_dir)) as engine:
        assert engine.embedder.model_path == str(tiny_model_dir)
