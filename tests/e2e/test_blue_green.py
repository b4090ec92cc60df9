"""Updates while serving, under load: eight clients search while products are put and deleted
through the API and while ``ingest --reindex`` rebuilds the served store beside it and the server
switches to the new generation (blue/green, ``search/store/generations.py``). No query may fail.

A product found by its own exact text (``vectors=text``) has cosine 1 to the query, so it ranks
first whatever the tiny random model makes of the words.
"""

from __future__ import annotations

import base64
import csv
import random
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.proctree import run_cli, stopped_tree
from tests.e2e.test_http_writes import picture

READ_KEY, ADMIN_KEY = "read-key-blue-green", "admin-key-blue-green"
KEYS = {"SHELFSIGHT_API_KEY": READ_KEY, "SHELFSIGHT_ADMIN_KEY": ADMIN_KEY}
QUERIES = ["red bag", "blue mug", "noise print", "green shoe -striped", "lamp"]


class Load:
    """Eight clients searching until stopped; every answer that is not a 200 is kept."""

    def __init__(self, base: str):
        self.base = base
        self.answered = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.clients = [threading.Thread(target=self._query, args=(seed,)) for seed in range(8)]

    def _query(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.base, headers={"X-API-Key": READ_KEY}, timeout=120) as client:
            while not self.stop.is_set():
                answer = client.get("/search", params={"q": rng.choice(QUERIES)})
                with self.lock:
                    self.answered += 1
                    self.failures.extend([f"{answer.status_code}: {answer.text}"] if answer.status_code != 200 else [])


@contextmanager
def under_load(base: str) -> Iterator[Load]:
    load = Load(base)
    for client in load.clients:
        client.start()
    try:
        yield load
    finally:
        load.stop.set()
        for client in load.clients:
            client.join()


def new_catalog(catalog_dir: Path, out: Path, take: int, title: str) -> Path:
    """The first ``take`` products of the catalog (image paths absolute) plus one titled ``title``."""
    rows = [dict(r, image=str(catalog_dir / r["image"])) for r in csv.DictReader((catalog_dir / "catalog.csv").open())]
    rows = rows[:take] + [dict(rows[0], id="BG-NEW", title=title)]
    path = out / f"catalog-{take}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def first_id(api: httpx.Client, text: str) -> str | None:
    hits = api.get("/search", params={"q": text, "vectors": "text", "limit": "3"}).json()["hits"]
    return hits[0]["id"] if hits else None


def reindex(db: Path, catalog: Path, model: Path, load: Load) -> None:
    """``ingest --reindex`` of the served store while ``load`` runs; some queries are answered meanwhile."""
    before = load.answered
    done = run_cli("ingest", catalog, "--db", db, "--reindex", "--model", model, "--fused-weight", "0.5")
    assert done.returncode == 0, done.stderr
    assert "switched" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert load.answered > before  # the clients were answered while it built and switched


def test_updates_and_blue_green_rebuilds_under_eight_clients_fail_no_query(
    built_db, tmp_path, catalog_dir, tiny_model_dir
):
    db = tmp_path / "db"
    shutil.copytree(built_db, db)  # the old layout: generation 0 is db/products
    first, second = "quilted saffron blue green duffel", "braided cobalt second generation tote"
    with stopped_tree("serve", "--db", db, health="/openapi.json", env=KEYS) as (base, _):
        api = httpx.Client(base_url=base, headers={"X-API-Key": ADMIN_KEY}, timeout=120)
        with under_load(base) as load:
            for i in range(3):
                image = base64.b64encode(picture(300 + i)).decode()
                assert api.put(
                    f"/products/BG-{i}", json={"title": f"noise print {i}", "image_base64": image}
                ).is_success
                assert api.put(f"/products/BG-{i}", json={"title": f"noise print {i}", "price": 3.0}).is_success
            assert api.delete("/products/BG-0").is_success

            reindex(db, new_catalog(catalog_dir, tmp_path, 20, first), tiny_model_dir, load)
            assert first_id(api, first) == "BG-NEW"
            assert api.get("/health").json()["count"] == 21  # the new catalog only: the PUT products went too
            assert not (db / "products").exists()  # generation 0, the old layout, is gone
            assert sorted(p.name for p in (db / ".generations" / "products").iterdir() if p.is_dir()) == ["1"]

            reindex(db, new_catalog(catalog_dir, tmp_path, 30, second), tiny_model_dir, load)
            assert first_id(api, second) == "BG-NEW"
            assert api.get("/health").json()["count"] == 31
            assert sorted(p.name for p in (db / ".generations" / "products").iterdir() if p.is_dir()) == ["2"]
            assert api.put("/products/BG-after", json={"title": "after the switch"}).is_success  # writes go on
        assert not load.failures, load.failures[:3]
        assert load.answered >= 8
    # Stopped, the store opens on its own at the live generation.
    stats = run_cli("stats", "--db", db, "--json", check=True)
    assert '"count": 32' in stats.stdout
