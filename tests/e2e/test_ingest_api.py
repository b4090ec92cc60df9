"""``shelfsight ingest CATALOG --api``: a catalog streamed through a running ``serve``, with the local
ingest's report and exit codes; and a plain ingest into a served store pointed at ``--api``.

A product found by its own exact text (``vectors=text``) has cosine 1 to the query, so it ranks
first whatever the tiny random model makes of the words.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.proctree import run_cli, stopped_tree

READ_KEY, ADMIN_KEY = "read-key-api-ingest", "admin-key-api-ingest"
KEYS = {"SHELFSIGHT_API_KEY": READ_KEY, "SHELFSIGHT_ADMIN_KEY": ADMIN_KEY}
NEW_TITLE = "quilted saffron api weekender"


@pytest.fixture(scope="module")
def served(built_db, tmp_path_factory):
    db = tmp_path_factory.mktemp("api-ingest") / "db"
    shutil.copytree(built_db, db)
    with stopped_tree("serve", "--db", db, health="/openapi.json", env=KEYS) as (base, _):
        yield db, base


def edited_catalog(catalog_dir: Path, out: Path) -> Path:
    """The catalog with one price changed, one title changed, a new product, a row whose image is
    missing (row 3) and one whose price is not a number (row 5)."""
    rows = [dict(r, image=str(catalog_dir / r["image"])) for r in csv.DictReader((catalog_dir / "catalog.csv").open())]
    rows[0]["price"] = str(float(rows[0]["price"]) + 1)
    rows[1]["title"] += " deluxe"
    rows[2]["image"] = str(catalog_dir / "images" / "missing.jpg")
    rows[4]["price"] = "cheap"
    rows.append(dict(rows[6], id="API-NEW", title=NEW_TITLE))
    path = out / "edited.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_catalog_goes_in_through_the_server_with_the_local_report(served, catalog_dir, tmp_path):
    db, base = served
    catalog, report = edited_catalog(catalog_dir, tmp_path), tmp_path / "skipped.jsonl"
    admin = {"SHELFSIGHT_ADMIN_KEY": ADMIN_KEY}
    done = run_cli("ingest", catalog, "--api", base, "--report", report, "--json", env=admin)
    assert done.returncode == 3, done.stderr  # EXIT_PARTIAL: done, some rows skipped
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # Catalog images are uploaded (the server keeps its own copy), so every unchanged row's image
    # reference changes once: payload-only updates, no embedding.
    assert (summary["ingested"], summary["skipped"]) == (2, 2)
    assert summary["updated"] + summary["unchanged"] == 48 - 3
    skipped = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(e["row"], "not found" in e["reason"] or "not a number" in e["reason"]) for e in skipped] == [
        (3, True),
        (5, True),
    ]
    assert all(e["hint"] for e in skipped)

    client = httpx.Client(base_url=base, headers={"X-API-Key": READ_KEY}, timeout=120)
    hits = client.get("/search", params={"q": NEW_TITLE, "vectors": "text"}).json()["hits"]
    assert hits[0]["id"] == "API-NEW"
    assert client.get("/health").json()["count"] == 49

    again = run_cli("ingest", catalog, "--db", db, "--api", "--json", env=admin)  # the server serving --db
    assert again.returncode == 3, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["unchanged"] == 47


def test_the_api_ingest_refuses_a_wrong_key_and_a_plain_ingest_points_at_it(served, catalog_dir, tiny_model_dir):
    db, base = served
    wrong = run_cli("ingest", catalog_dir / "catalog.csv", "--api", base, env={"SHELFSIGHT_ADMIN_KEY": READ_KEY})
    assert wrong.returncode == 2 and "admin key" in wrong.stderr, wrong.stderr
    plain = run_cli("ingest", catalog_dir / "catalog.csv", "--db", db, "--model", tiny_model_dir)
    assert plain.returncode == 1 and "--api" in plain.stderr and "Traceback" not in plain.stderr, plain.stderr
    mixed = run_cli("ingest", catalog_dir / "catalog.csv", "--api", base, "--prune")
    assert mixed.returncode == 2 and "--prune" in mixed.stderr
