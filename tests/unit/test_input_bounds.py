"""What one query may cost, checked at the library: query caps, finite filter numbers, local paths
switched off, the decode-memory budget, decode slots and the URL fetch deadline."""

from __future__ import annotations

import http.server
import io
import threading
import time

import pytest
from PIL import Image
from shelfsight.search.errors import BadInputError
from shelfsight.search.images import QUERY_POLICY, ImageError, ImagePolicy, decode_cost, decode_image, read_image_bytes
from shelfsight.search.query import MAX_QUERY_CHARS, MAX_QUERY_PARTS, parse_filters, parse_query
from shelfsight.search.store.base import CollectionMeta, Range

META = CollectionMeta(
    model="m", dimension=4, vectors=("image", "text"), fields={"price": "float", "category": "keyword"}
)


@pytest.mark.parametrize("expr", ["price<nan", "price=nan", "price>=inf", "price<=-inf", "price>NaN"])
def test_filters_need_finite_numbers(expr):
    with pytest.raises(BadInputError, match="finite number"):
        parse_filters([expr], META)


def test_filter_objects_and_mappings_need_finite_numbers_too():
    with pytest.raises(BadInputError, match="finite number"):
        parse_filters([Range("price", lte=float("nan"))], META)
    with pytest.raises(BadInputError, match="finite number"):
        parse_filters({"price": {"lte": float("inf")}}, META)
    assert parse_filters(["price<=40"], META) == (Range("price", lte=40.0),)


def test_query_length_and_parts_are_capped():
    parse_query(" + ".join(f"w{i}" for i in range(MAX_QUERY_PARTS)))
    with pytest.raises(BadInputError, match="parts"):
        parse_query(" + ".join(f"w{i}" for i in range(MAX_QUERY_PARTS + 1)))
    with pytest.raises(BadInputError, match="parts"):
        parse_query("bag " + " ".join(f"-n{i}" for i in range(MAX_QUERY_PARTS)))
    with pytest.raises(BadInputError, match="character"):
        parse_query("a" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(BadInputError, match="weight"):
        parse_query("99999:bag")


def test_local_paths_are_refused_without_looking_at_the_disk(tmp_path):
    existing = tmp_path / "p.jpg"
    Image.new("RGB", (8, 8)).save(existing)
    assert parse_query(f"red + {existing}").images == ((str(existing), 1.0),)
    messages = set()
    for ref in (existing, tmp_path / "missing.jpg"):
        with pytest.raises(BadInputError) as err:
            parse_query(f"red + {ref}", allow_paths=False)
        messages.add(str(err.value).replace(str(ref), "REF"))
    assert len(messages) == 1  # the same answer whether or not the file exists


def _png(size, mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 100 if mode != "RGB" else (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


def _jpeg(size) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "JPEG")
    return out.getvalue()


def test_decode_budget_counts_memory_not_bytes_on_disk():
    assert decode_cost("RGB", (1000, 1000)) == 4_000_000
    assert decode_cost("I;16", (1000, 1000)) == 10_000_000  # 16-bit goes through a float image
    small_file = _png((6300, 6300))
    assert len(small_file) < 200_000
    with pytest.raises(ImageError, match="MB budget"):
        decode_image(small_file, QUERY_POLICY)
    with pytest.raises(ImageError, match="MB budget"):
        decode_image(_png((3000, 3000), "I;16"), QUERY_POLICY)
    assert decode_image(small_file).size == (6300, 6300)  # ingest's wider budget still takes it


def test_large_jpeg_decodes_at_reduced_scale():
    image = decode_image(_jpeg((6300, 4200)), QUERY_POLICY)
    assert max(image.size) == 1024 and image.mode == "RGB"
    # Over the memory budget with no side limit: decoded at a power-of-two reduction that fits.
    tight = ImagePolicy(max_decode_bytes=8 * 2**20)
    image = decode_image(_jpeg((4000, 4000)), tight)
    assert image.size[0] * image.size[1] * 4 <= tight.max_decode_bytes


def test_decode_slots_let_only_that_many_images_decode_at_once(monkeypatch):
    from shelfsight.search import images

    running, peak, lock = [0], [0], threading.Lock()
    real = images._decode

    def counting(data, policy, name, *rest):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.05)
            return real(data, policy, name, *rest)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "_decode", counting)
    data = _jpeg((64, 64))
    threads = [threading.Thread(target=decode_image, args=(data, QUERY_POLICY)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == QUERY_POLICY.decode_slots


class _Drip(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "400")
        self.end_headers()
        for _ in range(400):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.05)

    def log_message(self, *args):
        pass


def test_a_url_that_drips_bytes_is_cut_off_at_the_deadline(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/p.jpg"
        policy = ImagePolicy(allow_private=True, timeout=5, deadline=1.0)
        # Each read gets a byte well inside the per-read timeout; only the overall deadline stops it.
        with pytest.raises(ImageError, match="deadline"):
            read_image_bytes(url, tmp_path, policy)
    finally:
        server.shutdown()
        server.server_close()
