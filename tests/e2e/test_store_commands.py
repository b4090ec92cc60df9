"""``shelfsight migrate``, ``snapshot`` and ``restore`` as a user runs them, including a migrate
killed with SIGKILL after its first batch and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.store.edge import EdgeStore

STORE_VARIABLES = ("QDRANT_URL", "QDRANT_API_KEY", "SHELFSIGHT_DB", "SHELFSIGHT_COLLECTION")


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "shelfsight", *map(str, args)]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}


def _run(*args: object, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == expect, f"shelfsight {args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def db(tmp_path, embedder, catalog_dir):
    path = tmp_path / "db"
    store = EdgeStore(path)
    try:
        ingest_catalog(catalog_dir / "catalog.csv", store, embedder, IngestOptions("products"))
    finally:
        store.close()
    return path


def test_migrate_killed_after_a_batch_resumes_and_verifies(db, tmp_path):
    target = tmp_path / "db2"
    proc = subprocess.Popen(
        _cmd("migrate", "--from", db, "--to", target, "--batch-size", 1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        first = proc.stderr.readline()  # written after the first batch is in the target
        assert "points done" in first, first + proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    report = json.loads(
        _run("migrate", "--from", db, "--to", target, "--batch-size", 1, "--json").stdout.splitlines()[-1]
    )
    assert report["already_there"] >= 1 and report["copied"] >= 1
    assert report["copied"] + report["already_there"] == report["total"] == 48
    assert report["verified_queries"] > 0
    again = json.loads(_run("migrate", "--from", db, "--to", target, "--json").stdout.splitlines()[-1])
    assert (again["copied"], again["already_there"]) == (0, 48)


def test_snapshot_restore_round_trip_through_the_cli(db, tmp_path):
    archive = tmp_path / "products.tar.gz"
    _run("snapshot", "--db", db, "--out", archive)
    _run("restore", archive, "--db", tmp_path / "restored")
    refused = _run("restore", archive, "--db", tmp_path / "restored", expect=2)
    assert "--force" in refused.stderr
    before = json.loads(_run("stats", "--db", db, "--json").stdout)
    after = json.loads(_run("stats", "--db", tmp_path / "restored", "--json").stdout)
    assert after == before
    hits = [_run("search", "red bag", "--db", d, "--json").stdout for d in (db, tmp_path / "restored")]
    assert [h["id"] for h in json.loads(hits[0])] == [h["id"] for h in json.loads(hits[1])]


def test_migrate_names_a_missing_collection(tmp_path):
    out = _run("migrate", "--from", tmp_path / "empty", "--to", tmp_path / "db2", expect=2)
    assert "no collection 'products'" in out.stderr
