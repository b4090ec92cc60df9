"""One owner per embedded store, for every writer; and damaged stores named in one line.

``ingest --reindex`` used to delete a store's directory under a live server (and exit 0); now every
writer must hold the shard's lock first (and ``--reindex`` of a served store builds a new generation
beside it instead, ``test_blue_green.py``). A corpus of damaged stores (each a copy of a good one,
broken in one way) must each give one line that names the damage and the fix, in the CLI and on
``/health``, never a traceback and never a silently smaller count.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.proctree import run_cli, stopped_tree


def _copy(built_db: Path, tmp_path: Path) -> Path:
    db = tmp_path / "db"
    shutil.copytree(built_db, db)
    return db


def test_prune_is_refused_while_another_process_serves_the_store(built_db, tmp_path, catalog_dir, tiny_model_dir):
    """``--reindex`` builds beside a served store and switches (test_blue_green.py); ``--prune`` has
    no such path and stays refused."""
    db = _copy(built_db, tmp_path)
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))
    smaller = tmp_path / "smaller.csv"
    with smaller.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(dict(r, image=str(catalog_dir / r["image"])) for r in rows[:10])
    with stopped_tree("serve", "--db", db) as (base, _):
        for flag in ("--prune",):
            done = run_cli("ingest", smaller, "--db", db, "--model", tiny_model_dir, "--fused-weight", "0.5", flag)
            assert done.returncode != 0, (flag, done.stdout, done.stderr)
            assert "open in another process" in done.stderr, (flag, done.stderr)
            assert "Traceback" not in done.stderr
        # The server still owns an intact store.
        assert (db / "products" / "collection.json").is_file()
        health = httpx.get(base + "/health", timeout=60).json()
        assert health["count"] == len(rows)
        assert httpx.get(base + "/search", params={"q": "bag"}, timeout=60).status_code == 200


def _segment(db: Path) -> Path:
    return next((db / "products" / "shard" / "segments").iterdir())


def _truncate_metadata(db: Path) -> None:
    path = db / "products" / "collection.json"
    path.write_bytes(path.read_bytes()[:90])


def _metadata_of_another_shape(db: Path) -> None:
    (db / "products" / "collection.json").write_text('{"model": 3}')


def _truncate_id_tracker(db: Path) -> None:
    os.truncate(_segment(db) / "mutable_id_tracker.mappings", 500)


def _id_tracker_cut_at_an_entry(db: Path) -> None:
    os.truncate(_segment(db) / "mutable_id_tracker.mappings", 21 * 20)


def _truncate_vectors(db: Path) -> None:
    os.truncate(_segment(db) / "vector_storage-image" / "vectors" / "chunk_0.mmap", 1000)


def _scribble_over_vectors(db: Path) -> None:
    with (_segment(db) / "vector_storage-text" / "vectors" / "chunk_0.mmap").open("r+b") as fh:
        fh.write(b"\x7f" * 8192)


def _remove_the_segments(db: Path) -> None:
    shutil.rmtree(db / "products" / "shard" / "segments")


DAMAGE: list[tuple[Callable[[Path], None], str]] = [
    (_truncate_metadata, "collection.json does not parse"),
    (_metadata_of_another_shape, "collection.json does not parse"),
    (_truncate_id_tracker, "id tracker"),
    (_id_tracker_cut_at_an_entry, "id tracker"),
    (_truncate_vectors, "vectors do not read back"),
    (_scribble_over_vectors, "reads back wrong"),
    (_remove_the_segments, "segments are gone"),
]


@pytest.mark.parametrize("damage, named", DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_each_damage_is_one_line_naming_it_and_the_fix(built_db, tmp_path, damage, named):
    db = _copy(built_db, tmp_path)
    damage(db)
    for command in (["stats"], ["search", "bag"]):
        done = run_cli(*command, "--db", db)
        assert done.returncode != 0, (command, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "is damaged" in lines[0] and named in lines[0], lines[0]
        assert "snapshot" in lines[0] and "ingest" in lines[0], lines[0]


def test_health_names_the_damage(built_db, tmp_path):
    db = _copy(built_db, tmp_path)
    _truncate_id_tracker(db)
    with stopped_tree("serve", "--db", db, health="/openapi.json") as (base, proc):
        answer = httpx.get(base + "/health", timeout=60)
        assert answer.status_code == 503
        assert "is damaged" in answer.json()["detail"] and "--reindex" in answer.json()["detail"]
        assert httpx.get(base + "/search", params={"q": "bag"}, timeout=60).status_code == 503


def test_a_damaged_store_is_rebuilt_by_reindex(built_db, tmp_path, catalog_dir, tiny_model_dir):
    db = _copy(built_db, tmp_path)
    _truncate_id_tracker(db)
    rebuilt = run_cli(
        "ingest",
        catalog_dir / "catalog.csv",
        "--db",
        db,
        "--model",
        tiny_model_dir,
        "--fused-weight",
        "0.5",
        "--reindex",
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    stats = run_cli("stats", "--db", db, "--json")
    assert stats.returncode == 0, stats.stderr
    assert f'"count": {len(list(csv.DictReader((catalog_dir / "catalog.csv").open())))}' in stats.stdout
