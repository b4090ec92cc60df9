"""The HTTP API as an attacker meets it: every bad input a 4xx ``{"error", "detail"}``, bodies cut off
while they stream, no server paths in or out, keys, CORS and secrets. A real ``shelfsight serve``."""

from __future__ import annotations

import base64
import csv
import select
import shutil
import socket

import httpx
import pytest

from tests.e2e.proctree import stopped_tree


@pytest.fixture(scope="module")
def own_db(built_db, tmp_path_factory):
    """A copy of the shared store, so this module's servers never contend for its lock."""
    db = tmp_path_factory.mktemp("hardening") / "db"
    shutil.copytree(built_db, db)
    return db


@pytest.fixture(scope="module")
def api(own_db):
    with stopped_tree("serve", "--db", own_db) as (base, _), httpx.Client(base_url=base, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def first(catalog_dir):
    return next(csv.DictReader((catalog_dir / "catalog.csv").open()))


def assert_error_body(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] and body["detail"], body
    return body


BAD_INPUTS = [
    ("nan upper bound", "get", "/search", {"params": {"q": "bag", "filter": "price<nan"}}, 400),
    ("nan equality", "get", "/search", {"params": {"q": "bag", "filter": "price=nan"}}, 400),
    ("infinite bound", "get", "/search", {"params": {"q": "bag", "filter": "price>=inf"}}, 400),
    ("nan in a json filter", "post", "/search", {"json": {"q": "bag", "filters": ["price<=NaN"]}}, 400),
    ("huge offset", "get", "/search", {"params": {"q": "bag", "offset": str(10**30)}}, 422),
    ("offset past the cap", "post", "/search", {"json": {"q": "bag", "offset": 10**6}}, 422),
    ("nan weight", "get", "/search", {"params": {"q": "bag", "text_weight": "nan"}}, 422),
    ("missing q", "get", "/search", {}, 422),
    ("query over the length cap", "get", "/search", {"params": {"q": "a" * 5000}}, 422),
    ("too many parts", "get", "/search", {"params": {"q": " + ".join(f"w{i}" for i in range(40))}}, 400),
    ("huge part weight", "get", "/search", {"params": {"q": "99999:bag"}}, 400),
    (
        "json not an object",
        "post",
        "/search",
        {"content": b"[1,", "headers": {"content-type": "application/json"}},
        422,
    ),
    ("limit 0 in a form", "post", "/search/upload", {"files": {"image": ("x.jpg", b"x")}, "data": {"limit": "0"}}, 422),
    (
        "limit huge in a form",
        "post",
        "/search/upload",
        {"files": {"image": ("x.jpg", b"x")}, "data": {"limit": "9999"}},
        422,
    ),
    (
        "limit text in a form",
        "post",
        "/search/upload",
        {"files": {"image": ("x.jpg", b"x")}, "data": {"limit": "many"}},
        422,
    ),
    ("form without the image", "post", "/search/upload", {"data": {"q": "bag"}}, 422),
    (
        "broken multipart",
        "post",
        "/search/upload",
        {"content": b"--zz\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=zz"}},
        422,
    ),
    (
        "multipart without a boundary",
        "post",
        "/search/upload",
        {"content": b"--zz\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
    ),
    ("unknown route", "get", "/nowhere", {}, 404),
    ("wrong method", "get", "/search/upload", {}, 405),
    ("a write on a server without an admin key", "put", "/products/x", {"json": {"title": "x"}}, 403),
    ("a delete on a server without an admin key", "delete", "/products/x", {}, 403),
    ("missing product image", "get", "/products/nope/image", {}, 404),
]


@pytest.mark.parametrize("name, method, path, kwargs, status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_every_bad_input_is_a_4xx_error_body(api, name, method, path, kwargs, status):
    assert_error_body(api.request(method.upper(), path, **kwargs), status)


def test_the_server_still_answers_after_the_bad_inputs(api):
    assert api.get("/health").json()["status"] == "ok"


# Operations that take no input, so no 400 or 422 (and /health no 404).
NO_INPUT = ("/health", "/catalog")


def test_every_operation_documents_its_errors(api):
    schema = api.get("/openapi.json").json()
    assert "ErrorBody" in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            documented = set(op["responses"])
            assert {"401", "405", "503"} <= documented, (method, path, documented)
            if path not in NO_INPUT:
                assert {"400", "404", "422"} <= documented, (method, path, documented)
            ref = op["responses"]["400" if path not in NO_INPUT else "503"]["content"]["application/json"]["schema"]
            assert ref["$ref"].endswith("/ErrorBody"), (method, path)


def _send_chunked(
    base: str, path: str, content_type: str, total: int, prefix: bytes = b"", chunk: int = 2**20
) -> tuple[int, bytes]:
    """POST ``prefix`` and then ``total`` bytes, chunked; stop as soon as the server answers.
    Returns (bytes sent, the answer)."""
    host, port = base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        if prefix:
            sock.sendall(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n")
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break  # the server stopped reading
            sent += chunk
        sock.settimeout(60)
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return sent, answer


def test_body_limit_is_enforced_while_the_body_streams(api):
    base = str(api.base_url).rstrip("/")
    declared = api.post("/search", content=b"x" * (20 * 2**20), headers={"content-type": "application/json"})
    assert_error_body(declared, 413)
    total = 200 * 2**20
    sent, answer = _send_chunked(base, "/search", "application/json", total)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total  # answered while the body was still coming, not after spooling all of it
    part = b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    sent, answer = _send_chunked(base, "/search/upload", "multipart/form-data; boundary=zz", total, part)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total


def test_http_queries_never_read_server_files(api, catalog_dir, first):
    local = str(catalog_dir / first["image"])
    for q in (f"red + {local}", f"red + {catalog_dir}/no-such-file.jpg", local):
        body = assert_error_body(api.get("/search", params={"q": q}), 400)
        assert "does not read its own files" in body["detail"]
    assert_error_body(api.post("/search", json={"q": f"bag + {local}"}), 400)
    # A URL to this machine is refused by the address guard, never fetched.
    assert_error_body(api.get("/search", params={"q": "bag + http://127.0.0.1:1/a.jpg"}), 400)
    assert_error_body(api.get("/search", params={"q": "bag + file:///etc/passwd"}), 400)


def test_products_carry_an_image_url_the_api_serves(api, catalog_dir, first):
    product = api.get(f"/products/{first['id']}").json()
    assert product["image"] == f"/products/{first['id']}/image"
    image = api.get(product["image"])
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    assert image.content == (catalog_dir / first["image"]).read_bytes()
    hits = api.get("/search", params={"q": first["title"], "limit": 5}).json()["hits"]
    assert hits and all(h["payload"]["image"] == f"/products/{h['id']}/image" for h in hits)
    assert str(catalog_dir) not in api.get("/search", params={"q": "bag", "limit": 50}).text


def test_an_upload_too_large_in_pixels_is_refused_and_a_large_jpeg_is_downscaled(api):
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (6300, 6300), (200, 30, 30)).save(png, "PNG")
    body = assert_error_body(api.post("/search/upload", files={"image": ("big.png", png.getvalue())}), 400)
    assert "MB budget" in body["detail"]
    jpeg = io.BytesIO()
    Image.new("RGB", (6300, 6300), (200, 30, 30)).save(jpeg, "JPEG")
    encoded = base64.b64encode(jpeg.getvalue()).decode()
    assert api.post("/search", json={"image_base64": encoded, "limit": 2}).status_code == 200


def test_api_keys_cors_and_no_secrets(built_db, tmp_path):
    own_db = tmp_path / "db"
    shutil.copytree(built_db, own_db)  # the module's server holds the other copy
    keys = {"SHELFSIGHT_API_KEY": "read-key-123", "SHELFSIGHT_ADMIN_KEY": "admin-key-456"}
    cors = {"SHELFSIGHT_CORS_ORIGINS": "http://shop.example"}
    with stopped_tree("serve", "--db", own_db, health="/openapi.json", env={**keys, **cors}) as (base, _):
        with httpx.Client(base_url=base, timeout=60) as client:
            assert_error_body(client.get("/search", params={"q": "bag"}), 401)
            assert_error_body(client.get("/health", headers={"X-API-Key": "read-key-12"}), 401)
            assert client.get("/health", headers={"X-API-Key": "read-key-123"}).status_code == 200
            assert client.get("/health", headers={"Authorization": "Bearer admin-key-456"}).status_code == 200
            # a write needs the admin key: with it the request reaches the router (no such write: 405)
            assert_error_body(client.delete("/search", headers={"X-API-Key": "read-key-123"}), 401)
            assert_error_body(client.delete("/search", headers={"X-API-Key": "admin-key-456"}), 405)
            preflight = {"Origin": "http://shop.example", "Access-Control-Request-Method": "GET"}
            allowed = client.options("/search", headers=preflight)
            assert allowed.headers.get("access-control-allow-origin") == "http://shop.example"
            page = client.get("/search", params={"q": "bag"}, headers={"X-API-Key": "read-key-123"})
            assert "read-key-123" not in page.text and "admin-key-456" not in page.text


def test_cors_is_off_unless_configured(api):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in api.options("/search", headers=preflight).headers
    assert "access-control-allow-origin" not in api.get("/health", headers={"Origin": "http://evil.example"}).headers


def test_url_credentials_never_reach_clients_or_logs(tmp_path):
    url = "http://shopper:hunter2-secret@127.0.0.1:9"
    with stopped_tree("serve", health="/openapi.json", env={"QDRANT_URL": url}) as (base, proc):
        answer = httpx.get(base + "/health", timeout=60)
        assert_error_body(answer, 503)
        assert "hunter2" not in answer.text and "***@127.0.0.1" in answer.text
        proc.terminate()
        proc.wait(timeout=60)
        log = proc.stderr.read() if proc.stderr else ""
    assert "127.0.0.1:9" in log and "hunter2" not in log, log


def test_binding_beyond_loopback_without_a_key_warns(own_db, tmp_path):
    import subprocess

    from tests.e2e.proctree import cli_args, cli_env, stop_session

    proc = subprocess.Popen(
        cli_args("serve", "--db", tmp_path / "missing", "--host", "0.0.0.0", "--port", "0"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        line = proc.stderr.readline() if proc.stderr else ""
    finally:
        stop_session(proc)
    assert "without an API key" in line and "SHELFSIGHT_API_KEY" in line, line


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /search?q=x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"])
def test_a_request_uvicorn_cannot_parse_still_gets_the_error_body(api, raw):
    import json

    host, port = str(api.base_url).rstrip("/").removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), head
    assert set(json.loads(body)) == {"error", "detail"}
