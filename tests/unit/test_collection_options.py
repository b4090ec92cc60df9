"""Collection options for a cluster: from flags and environment, recorded in the metadata, applied
by the server backend, and by the embedded store as far as one local shard allows."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from shelfsight.search.errors import BadInputError
from shelfsight.search.store.base import CollectionMeta, CollectionOptions, Match, NearestQuery, PointRecord
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.options import (
    DEFAULT_HNSW_EF,
    add_option_args,
    default_hnsw_ef,
    options_from_args,
    server_collection_kwargs,
)
from shelfsight.search.store.server import local_store

GRAPH = dict(hnsw_m=32, hnsw_ef_construct=200, hnsw_ef=128, oversampling=2.0)
CLUSTER = CollectionOptions(
    shards=3,
    replication_factor=2,
    write_consistency=2,
    on_disk_vectors=True,
    on_disk_payload=True,
    quantization="int8",
    **GRAPH,  # type: ignore[arg-type]
)
META = CollectionMeta(model="m@1", dimension=8, fields={"category": "keyword"})


def _parse(*flags: str) -> CollectionOptions:
    parser = argparse.ArgumentParser()
    add_option_args(parser)
    return options_from_args(parser.parse_args(list(flags)))


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("SHELFSIGHT_SHARDS", "4")
    monkeypatch.setenv("SHELFSIGHT_QUANTIZATION", "int8")
    monkeypatch.setenv("SHELFSIGHT_ON_DISK_VECTORS", "true")
    assert _parse("--shards", "2") == CollectionOptions(shards=2, quantization="int8", on_disk_vectors=True)
    assert _parse("--no-rescore").rescore is False
    assert _parse() == CollectionOptions(shards=4, quantization="int8", on_disk_vectors=True)
    monkeypatch.setenv("SHELFSIGHT_HNSW_EF_CONSTRUCT", "200")
    graph = _parse("--hnsw-m", "32", "--hnsw-ef", "128", "--oversampling", "2")
    assert (graph.hnsw_m, graph.hnsw_ef_construct, graph.hnsw_ef, graph.oversampling) == (32, 200, 128, 2.0)
    monkeypatch.setenv("SHELFSIGHT_HNSW_PAYLOAD_M", "16")
    assert _parse().hnsw_payload_m == 16 and _parse("--hnsw-payload-m", "0").hnsw_payload_m == 0


def test_bad_options_name_the_variable_or_flag(monkeypatch):
    monkeypatch.setenv("SHELFSIGHT_REPLICATION_FACTOR", "two")
    with pytest.raises(BadInputError, match="SHELFSIGHT_REPLICATION_FACTOR='two'.*whole number"):
        _parse()
    monkeypatch.delenv("SHELFSIGHT_REPLICATION_FACTOR")
    with pytest.raises(BadInputError, match="--shards must be at least 1"):
        _parse("--shards", "0")
    monkeypatch.setenv("SHELFSIGHT_ON_DISK_PAYLOAD", "maybe")
    with pytest.raises(BadInputError, match="SHELFSIGHT_ON_DISK_PAYLOAD.*true or false"):
        _parse()
    monkeypatch.delenv("SHELFSIGHT_ON_DISK_PAYLOAD")
    with pytest.raises(BadInputError, match="--hnsw-ef must be a whole number from 1"):
        _parse("--hnsw-ef", "0")
    with pytest.raises(BadInputError, match="--hnsw-payload-m must be a whole number from 0"):
        _parse("--hnsw-payload-m", "-1")
    with pytest.raises(BadInputError, match="--oversampling must be from 1 to 100"):
        _parse("--oversampling", "0.5")
    monkeypatch.setenv("SHELFSIGHT_OVERSAMPLING", "lots")
    with pytest.raises(BadInputError, match="SHELFSIGHT_OVERSAMPLING='lots'"):
        _parse()


def _fill(store, name: str = "c") -> None:
    rng = np.random.default_rng(0)
    points = []
    for i in range(40):
        vectors = {
            k: (v / np.linalg.norm(v)).astype(np.float32)
            for k, v in {n: rng.normal(size=8) for n in ("image", "text")}.items()
        }
        points.append(PointRecord(f"00000000-0000-0000-0000-{i + 1:012d}", vectors, {"category": "ab"[i % 2]}))
    store.upsert(name, points)
    store.optimize(name)


@pytest.mark.parametrize("backend", ["edge", "server-local"])
def test_options_are_recorded_kept_and_searched_with(backend, tmp_path):
    store = EdgeStore(tmp_path / "db") if backend == "edge" else local_store(str(tmp_path / "local"))
    try:
        store.default_options = CLUSTER
        store.create_collection("c", META)
        recorded = store.get_meta("c").options
        if backend == "edge":  # one local shard: the cluster-only options are dropped, the rest kept
            assert recorded == CollectionOptions(
                on_disk_vectors=True,
                on_disk_payload=True,
                quantization="int8",
                **GRAPH,  # type: ignore[arg-type]
            )
            applied = json.loads((tmp_path / "db" / "c" / "shard" / "edge_config.json").read_text())
            assert (applied["hnsw_config"]["m"], applied["hnsw_config"]["ef_construct"]) == (32, 200)
            assert applied["vectors"]["image"]["quantization_config"]["scalar"]["type"] == "int8"
            assert applied["vectors"]["text"]["on_disk"] is True and applied["on_disk_payload"] is True
        else:
            assert recorded == CLUSTER
        store.set_meta("c", CollectionMeta(model="m@1", dimension=8, fields={"category": "keyword", "x": "float"}))
        assert store.get_meta("c").options == recorded  # the layout is fixed at creation
        _fill(store)
        query = NearestQuery(np.ones(8, dtype=np.float32) / np.sqrt(8), "image", 5)
        approximate = store.query("c", [query], (Match("category", ("a",)),))[0][0]
        exact = store.query("c", [query], (Match("category", ("a",)),), exact=True)[0][0]
        assert [p.id for p in approximate] == [p.id for p in exact]  # rescored with the originals
    finally:
        store.close()


def test_ingest_records_options_and_says_what_the_embedded_store_ignores(tmp_path, tiny_model_dir, catalog_dir):
    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "shelfsight", "ingest", str(catalog_dir / "catalog.csv"), "--db", str(db)]
    cmd += ["--model", str(tiny_model_dir), "--shards", "2", "--quantization", "int8", "--on-disk-vectors"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "ignores --shards" in proc.stderr
    stats = subprocess.run(
        [sys.executable, "-m", "shelfsight", "stats", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    options = json.loads(stats.stdout)["options"]
    assert (options["quantization"], options["on_disk_vectors"], options["shards"]) == ("int8", True, None)


def test_a_collection_may_build_its_graph_without_the_links_per_payload_value(tmp_path):
    """``--hnsw-payload-m 0`` skips the graph links the engine adds among the products sharing an
    indexed field value (a faster build, lower recall under wide filters: bench/index_build.py);
    without it the engine's default stands."""
    store = EdgeStore(tmp_path / "db")
    try:
        store.create_collection("plain", META)
        store.create_collection("lean", replace(META, options=CollectionOptions(hnsw_payload_m=0)))
        applied = {
            name: json.loads((tmp_path / "db" / name / "shard" / "edge_config.json").read_text()).get("hnsw_config")
            for name in ("plain", "lean")
        }
        assert applied["plain"] is None
        assert (applied["lean"]["payload_m"], applied["lean"]["m"], applied["lean"]["ef_construct"]) == (0, 16, 100)
    finally:
        store.close()
    assert server_collection_kwargs(META)["hnsw_config"] is None
    assert (
        server_collection_kwargs(replace(META, options=CollectionOptions(hnsw_payload_m=0)))["hnsw_config"].payload_m
        == 0
    )


def test_searches_look_wide_and_scan_small_filtered_sets_exactly(tmp_path, monkeypatch):
    store = EdgeStore(tmp_path / "db")
    try:
        store.create_collection("c", META)
        _fill(store)  # 40 points, 20 in each category
        meta, vector = store.get_meta("c"), np.ones(8, dtype=np.float32) / np.sqrt(8)
        query = NearestQuery(vector, "image", 5)
        plain = store._nearest("c", [query], (), meta, exact=False)[0]["params"]
        assert not plain.exact and plain.hnsw_ef == DEFAULT_HNSW_EF and plain.acorn is None
        only_a = (Match("category", ("a",)),)
        assert store._nearest("c", [query], only_a, meta, exact=False)[0]["params"].exact  # 20 points
        monkeypatch.setattr("shelfsight.search.store.core.EXACT_FILTER_MAX_POINTS", 10)
        wide = store._nearest("c", [query], only_a, meta, exact=False)[0]["params"]
        assert not wide.exact and wide.acorn.enable  # more points than that: HNSW with ACORN
    finally:
        store.close()


def test_the_default_search_width_grows_with_the_collection_and_a_chosen_one_stays(tmp_path, monkeypatch):
    """512 up to 100k products, then with the count to the power 0.6 (measured: the fused query's
    recall at 1M needs about four times 100k's width); a collection's own hnsw_ef wins. Filters
    that pass at most a tenth of a large collection scan it exactly."""
    assert [default_hnsw_ef(n) for n in (0, 40, 100_000)] == [512, 512, 512]
    assert default_hnsw_ef(400_000) == 1216 and default_hnsw_ef(1_000_000) == 2048
    assert default_hnsw_ef(10**9) == 4096
    monkeypatch.setattr("shelfsight.search.store.options.EF_BASE_POINTS", 10)  # 40 points: 2.3x the width
    store = EdgeStore(tmp_path / "db")
    try:
        for name, ef in (("auto", None), ("chosen", 300)):
            store.create_collection(name, replace(META, options=replace(META.options, hnsw_ef=ef)))
            _fill(store, name)
        query = NearestQuery(np.ones(8, dtype=np.float32) / np.sqrt(8), "image", 5)
        widths = {
            n: store._nearest(n, [query], (), store.get_meta(n), exact=False)[0]["params"].hnsw_ef
            for n in ("auto", "chosen")
        }
        assert widths == {"auto": 1216, "chosen": 300}
        only_a = (Match("category", ("a",)),)  # 20 of 40 points
        monkeypatch.setattr("shelfsight.search.store.core.EXACT_FILTER_MAX_POINTS", 10)
        assert not store._nearest("auto", [query], only_a, store.get_meta("auto"), exact=False)[0]["params"].exact
        monkeypatch.setattr("shelfsight.search.store.core.EXACT_FILTER_MAX_SHARE", 0.5)
        assert store._nearest("auto", [query], only_a, store.get_meta("auto"), exact=False)[0]["params"].exact
    finally:
        store.close()
