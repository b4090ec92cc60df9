"""Updating the catalog while serving: ``PUT`` and ``DELETE /products/{id}`` against a real
``shelfsight serve`` with read and admin keys; what searches find before and after, the keys, and
bad bodies refused with a 4xx ``{"error", "detail"}``.

A product found by its own exact text (``vectors=text``) or image (``vectors=image``) has cosine 1
to the query, so it ranks first whatever the tiny random model makes of the words.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import shutil
import threading

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from shelfsight.search.http import create_app
from shelfsight.search.settings import Settings

from tests.e2e.proctree import stopped_tree
from tests.e2e.test_http_fuzz import CHECKS, EXAMPLES, HANG

READ_KEY, ADMIN_KEY = "read-key-writes", "admin-key-writes"
ADMIN = {"X-API-Key": ADMIN_KEY}
READ = {"X-API-Key": READ_KEY}


@pytest.fixture(scope="module")
def api(built_db, tmp_path_factory):
    db = tmp_path_factory.mktemp("writes") / "db"
    shutil.copytree(built_db, db)  # this module's writes stay in its own copy
    keys = {"SHELFSIGHT_API_KEY": READ_KEY, "SHELFSIGHT_ADMIN_KEY": ADMIN_KEY}
    with stopped_tree("serve", "--db", db, health="/openapi.json", env=keys) as (base, _):
        with httpx.Client(base_url=base, timeout=120, headers=READ) as client:
            yield client


@pytest.fixture(scope="module")
def catalog_row(catalog_dir):
    return next(csv.DictReader((catalog_dir / "catalog.csv").open()))


def picture(seed: int) -> bytes:
    """A PNG of noise no catalog image resembles."""
    rng = random.Random(seed)
    image = Image.new("RGB", (48, 48))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(48 * 48)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def ids_for(api: httpx.Client, text: str, **params: str) -> list[str]:
    answer = api.get("/search", params={"q": text, "vectors": "text", "limit": "5", **params})
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["hits"]]


def ids_for_image(api: httpx.Client, data: bytes) -> list[str]:
    answer = api.post("/search/upload", files={"image": ("q.png", data)}, data={"vectors": "image", "limit": "5"})
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["hits"]]


def put(api: httpx.Client, product_id: str, **kwargs) -> dict:
    answer = api.put(f"/products/{product_id}", headers=ADMIN, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


def count(api: httpx.Client) -> int:
    return api.get("/health").json()["count"]


def test_a_product_put_then_deleted_appears_in_and_leaves_search(api, catalog_row):
    title, renamed = "quilted marigold weekender duffel", "quilted marigold weekender duffel with brass zips"
    before = count(api)
    assert "W-1" not in ids_for(api, title)
    fields = {"category": catalog_row["category"], "price": 31.5}
    created = {"id": "W-1", "created": True, "embedded": True, "changed": True, "truncated": False}
    assert put(api, "W-1", json={"title": title, **fields}) == created
    assert ids_for(api, title)[0] == "W-1"
    assert ids_for(api, title, fusion="early")[0] == "W-1"  # the early-fused vector was written too
    assert ids_for(api, title, filter="price<=32")[0] == "W-1"
    assert count(api) == before + 1

    assert put(api, "W-1", json={"title": renamed, **fields})["embedded"] is True
    assert ids_for(api, renamed)[0] == "W-1"
    assert put(api, "W-1", json={"title": renamed, **fields})["changed"] is False  # already so: nothing written
    assert put(api, "W-1", json={"title": renamed, **fields, "price": 45.0})["embedded"] is False
    assert "W-1" not in ids_for(api, renamed, filter="price<=32")
    product = api.get("/products/W-1").json()
    assert (product["title"], product["price"], product["image"]) == (renamed, 45.0, None)

    assert api.delete("/products/W-1", headers=ADMIN).json() == {"id": "W-1", "deleted": True}
    assert "W-1" not in ids_for(api, renamed)
    assert api.get("/products/W-1").status_code == 404
    assert api.delete("/products/W-1", headers=ADMIN).status_code == 404
    assert count(api) == before


def test_an_uploaded_image_is_searched_served_kept_and_removed(api):
    first, second = picture(1), picture(2)
    put(api, "W-2", json={"title": "noise print tote", "image_base64": base64.b64encode(first).decode()})
    assert ids_for_image(api, first)[0] == "W-2"
    assert api.get("/products/W-2/image").content == first

    product = json.dumps({"title": "noise print tote"})
    put(api, "W-2", files={"product": (None, product), "image": ("w2.png", second, "image/png")})
    assert ids_for_image(api, second)[0] == "W-2"
    assert api.get("/products/W-2/image").content == second

    # Left out, the stored image stays: only the fields change, the vectors are kept.
    assert put(api, "W-2", json={"title": "noise print tote", "price": 12.0})["embedded"] is False
    assert api.get("/products/W-2/image").content == second
    assert ids_for_image(api, second)[0] == "W-2"

    assert put(api, "W-2", json={"title": "noise print tote", "image": None})["embedded"] is True
    assert api.get("/products/W-2/image").status_code == 404
    assert "W-2" not in ids_for_image(api, second)
    api.delete("/products/W-2", headers=ADMIN)


def test_a_put_of_a_catalog_row_as_ingested_keeps_its_vectors(api, catalog_row, catalog_dir):
    """The same text, fields and image bytes give ingest's content hash, so nothing is embedded again."""
    row = dict(catalog_row)
    image = (catalog_dir / row.pop("image")).read_bytes()
    product_id = row.pop("id")
    row["price"] = float(row["price"])
    body = {**row, "image_base64": base64.b64encode(image).decode()}
    answer = put(api, product_id, json=body)
    assert (answer["created"], answer["embedded"]) == (False, False)
    assert answer["changed"] is True  # the image is now the upload the server keeps, not the catalog's file
    stored = api.get(f"/products/{product_id}").json()
    assert {k: stored[k] for k in row} == row
    assert api.get(f"/products/{product_id}/image").content == image


def test_queries_never_fail_while_products_change(api):
    """Eight clients search while products are created, updated and deleted through the API."""
    stop = threading.Event()
    failures: list[str] = []
    answered: list[int] = []

    def query(seed: int) -> None:
        rng, done = random.Random(seed), 0
        with httpx.Client(base_url=api.base_url, headers=READ, timeout=120) as client:
            while True:  # at least one query each, then until the writes are over
                params = {"q": rng.choice(["red bag", "blue mug", "noise print", "green shoe -striped"])}
                answer = client.get("/search", params=params)
                failures.extend([answer.text] if answer.status_code != 200 else [])
                done += 1
                if stop.is_set():
                    break
        answered.append(done)

    clients = [threading.Thread(target=query, args=(seed,)) for seed in range(8)]
    for client in clients:
        client.start()
    try:
        for i in range(6):
            image = base64.b64encode(picture(100 + i)).decode()
            put(api, f"W-load-{i}", json={"title": f"noise print {i}", "image_base64": image})
            put(api, f"W-load-{i}", json={"title": f"noise print {i}", "price": 5.0 + i})
            assert api.delete(f"/products/W-load-{i}", headers=ADMIN).status_code == 200
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert not failures, failures[:3]
    assert len(answered) == 8 and min(answered) >= 1


def test_writes_need_the_admin_key(api):
    body = {"json": {"title": "keyless"}}
    for headers in ({"X-API-Key": ""}, READ, {"X-API-Key": ADMIN_KEY + "x"}, {"Authorization": f"Bearer {READ_KEY}"}):
        for answer in (api.put("/products/W-3", headers=headers, **body), api.delete("/products/W-3", headers=headers)):
            assert answer.status_code == 401, answer.text
            assert set(answer.json()) == {"error", "detail"}
    assert api.get("/products/W-3").status_code == 404
    bearer = {"X-API-Key": "", "Authorization": f"Bearer {ADMIN_KEY}"}
    assert api.put("/products/W-3", headers=bearer, **body).status_code == 200
    assert api.delete("/products/W-3", headers=ADMIN).status_code == 200


BAD_BODIES = [
    ("not an object", {"content": b"[1,", "headers": {"content-type": "application/json"}}, 422),
    ("a field of the wrong type", {"json": {"title": "x", "price": "cheap"}}, 400),
    (
        "an infinite price",
        {"content": b'{"title": "x", "price": 1e999}', "headers": {"content-type": "application/json"}},
        400,
    ),
    ("an unknown field", {"json": {"title": "x", "colour_code": "r"}}, 400),
    ("a field Shelfsight owns", {"json": {"title": "x", "content_hash": "0"}}, 400),
    ("a title over the cap", {"json": {"title": "x" * 20_000}}, 422),
    ("nothing to embed", {"json": {"price": 3.0}}, 400),
    ("another id in the body", {"json": {"id": "other", "title": "x"}}, 400),
    ("two images", {"json": {"title": "x", "image": "https://shop.example/a.jpg", "image_base64": "AAAA"}}, 400),
    ("broken base64", {"json": {"title": "x", "image_base64": "***"}}, 400),
    ("base64 of no image", {"json": {"title": "x", "image_base64": base64.b64encode(b"plain text").decode()}}, 400),
    ("a server path", {"json": {"title": "x", "image": "/etc/hostname"}}, 400),
    ("a loopback URL", {"json": {"title": "x", "image": "http://127.0.0.1:9/a.jpg"}}, 400),
    ("plain text", {"content": b"title=x", "headers": {"content-type": "text/plain"}}, 415),
    ("multipart without the product", {"files": {"image": ("a.png", picture(3), "image/png")}}, 400),
    ("multipart with a broken product", {"files": {"product": (None, "{"), "image": ("a.png", b"x")}}, 422),
]


@pytest.mark.parametrize("name, kwargs, status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_bad_body_is_refused_with_an_error_body(api, name, kwargs, status):
    kwargs = {**kwargs, "headers": {**ADMIN, **kwargs.get("headers", {})}}
    answer = api.put("/products/W-bad", **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    assert api.get("/products/W-bad").status_code == 404


# The write operations fuzzed with the admin key, so their bodies reach validation and the store
# (test_http_fuzz.py sends them without it: all 403, as documented).
writes = schemathesis.openapi.from_dict(create_app(Settings(db="unused")).openapi()).include(method=["PUT", "DELETE"])


@writes.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_writes_with_the_admin_key_conform_to_the_schema(case, api):
    case.call_and_validate(base_url=str(api.base_url).rstrip("/"), headers=ADMIN, timeout=HANG, checks=CHECKS)
