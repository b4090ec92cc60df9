"""``PUT /products/{id}`` builds the point ``ingest`` builds: the same payload (content hash
included) and the same named vectors, the early-fused one too, on every store backend. The app
runs in-process over the engine fixture's store (ingested with ``--fused-weight``)."""

from __future__ import annotations

import csv

import numpy as np
from fastapi.testclient import TestClient
from shelfsight.search.http import create_app
from shelfsight.search.http_guard import ServeOptions
from shelfsight.search.records import point_id


def _assert_same_vector(got: np.ndarray, expected: np.ndarray, precision: str) -> None:
    """The same vector up to the model's precision: equal in fp32; in half precision a text alone
    and the same text in a batch of ingest's round differently (measured: cosine 0.99997, at most
    0.004 apart per element with the tiny model in bf16), so there the cosine decides."""
    if precision == "fp32":
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:
        assert float(np.dot(got, expected)) > 0.9995


def test_a_put_product_is_the_point_ingest_made_of_the_same_row(engine, catalog_dir):
    row = next(csv.DictReader((catalog_dir / "catalog.csv").open()))
    body = {k: v for k, v in row.items() if k not in ("id", "image")}
    body |= {"price": float(row["price"]), "image": str(catalog_dir / row["image"])}
    options = ServeOptions(admin_key="admin", allow_local_paths=True)  # the image as a path, as ingest reads it
    copy = f"copy-of-{row['id']}"
    try:
        with TestClient(create_app(engine=engine, options=options)) as client:
            answer = client.put(f"/products/{copy}", json=body, headers={"X-API-Key": "admin"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": copy, "created": True, "embedded": True, "changed": True, "truncated": False}
        ingested, put = sorted(
            engine.store.retrieve(engine.collection, [point_id(row["id"]), point_id(copy)], with_vectors=True),
            key=lambda p: p.payload["product_id"] != row["id"],
        )
        assert put.payload == {**ingested.payload, "product_id": copy}
        assert sorted(put.vectors) == sorted(ingested.vectors) == ["fused", "image", "text"]
        for name, vector in ingested.vectors.items():
            _assert_same_vector(put.vectors[name], vector, engine.embedder.precision)
    finally:
        engine.store.delete(engine.collection, [point_id(copy)])
