"""The HTTP API through a real server process on loopback."""

from __future__ import annotations

import base64
import csv
import random

import httpx
import pytest
from shelfsight.search.lexical import vocabulary
from shelfsight.search.relevance import made_up_queries

from tests.e2e.helpers import serving


@pytest.fixture(scope="module")
def api(built_db):
    with (
        serving("serve", "--db", built_db, health="/health") as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        yield client


def test_health_search_and_products(api, catalog_dir):
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))
    health = api.get("/health").json()
    assert health["status"] == "ok" and health["count"] == len(rows)
    first = rows[0]
    got = api.get("/search", params={"q": f"{first['title']}. {first['description']}", "vectors": "text", "limit": 3})
    assert got.status_code == 200 and got.json()["hits"][0]["id"] == first["id"]
    image = (catalog_dir / first["image"]).read_bytes()
    posted = api.post(
        "/search", json={"image_base64": base64.b64encode(image).decode(), "vectors": ["image"], "limit": 2}
    )
    assert posted.json()["hits"][0]["id"] == first["id"]
    upload = api.post(
        "/search/upload", files={"image": ("p.jpg", image, "image/jpeg")}, data={"limit": "2", "vectors": "image"}
    )
    assert upload.status_code == 200 and upload.json()["hits"][0]["id"] == first["id"]
    filtered = api.get("/search", params=[("q", "bag"), ("filter", "category=bag"), ("filter", "price<=80")]).json()[
        "hits"
    ]
    assert filtered and all(h["payload"]["category"] == "bag" and h["payload"]["price"] <= 80 for h in filtered)
    product = api.get(f"/products/{first['id']}").json()
    assert product["title"] == first["title"] and product["category"] == first["category"]
    similar = api.get(f"/products/{first['id']}/similar", params={"limit": 4}).json()["hits"]
    assert len(similar) == 4 and first["id"] not in [h["id"] for h in similar]
    facets = api.get("/facets", params={"field": "category"}).json()
    assert sum(f["count"] for f in facets["category"]) == len(rows)
    assert api.get("/docs").status_code == 200 and "/search" in api.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("get", "/search", {"params": {"q": " "}}, 400),
        ("get", "/search", {"params": {"q": "x", "filter": "size=3"}}, 400),
        ("get", "/search", {"params": {"q": "x", "fusion": "magic"}}, 400),
        ("get", "/search", {"params": {"q": "x", "limit": 0}}, 422),
        ("post", "/search", {"json": {"image_base64": "!!notbase64"}}, 400),
        ("post", "/search", {"json": {"image_base64": base64.b64encode(b"not an image").decode()}}, 400),
        ("post", "/search/upload", {"files": {"image": ("x.jpg", b"garbage", "image/jpeg")}}, 400),
        ("get", "/products/nope", {}, 404),
        ("get", "/products/nope/similar", {}, 404),
        ("get", "/facets", {"params": {"field": "price"}}, 400),
    ],
)
def test_bad_input_is_4xx_with_message(api, method, path, kwargs, status):
    response = getattr(api, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.json().get("detail")


def test_words_typos_exact_ids_and_boosts_over_http(api, catalog_dir):
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))
    exact = api.get("/search", params={"q": rows[5]["id"], "limit": 3}).json()
    assert exact["exact_match"] and exact["hits"][0]["id"] == rows[5]["id"]
    noun = next(r["type"] for r in rows if len(r["type"]) >= 5 and r["type"].isalpha())
    typo = noun[0] + noun[2] + noun[1] + noun[3:]
    fixed = api.get("/search", params={"q": typo}).json()
    assert fixed["showing_results_for"] == noun and fixed["hits"]
    # the tiny model is random: one made-up query in a hundred lands above the floor by chance
    made_up = made_up_queries(random.Random(7), vocabulary(" ".join(r.values()) for r in rows), 10)
    answers = [api.post("/search", json={"q": q}).json() for q in made_up]
    assert any(a["no_close_matches"] for a in answers)
    assert all(a["hits"] == [] for a in answers if a["no_close_matches"])
    color = rows[0]["color"]
    boosted = api.get("/search", params=[("q", "bag"), ("boost", f"color={color}:50")]).json()["hits"]
    assert boosted[0]["payload"]["color"] == color and "boost:color" in boosted[0]["contributions"]
    diverse = api.post("/search", json={"q": "shoe", "fusion": "rrf", "diversity": 0.8, "limit": 5}).json()["hits"]
    assert len(diverse) == 5
    words = api.get("/search", params={"q": rows[0]["brand"], "vectors": "bm25"}).json()["hits"]
    assert words and all("text->bm25" in h["vector_scores"] for h in words)
    assert api.get("/search", params=[("q", "bag"), ("boost", "price=cheap")]).status_code == 400
