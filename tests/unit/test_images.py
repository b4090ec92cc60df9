"""Every kind of bad image is refused with a reason and a hint; odd but valid images decode to RGB."""

import io
from pathlib import Path

import pytest
from PIL import Image
from shelfsight.search.images import ImageError, ImagePolicy, check_url, decode_image, read_image_bytes


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_missing_empty_and_directory(tmp_path: Path):
    with pytest.raises(ImageError, match="not found"):
        read_image_bytes("nope.jpg", tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image_bytes("empty.jpg", tmp_path)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="not a file"):
        read_image_bytes("dir.jpg", tmp_path)


def test_byte_cap(tmp_path: Path):
    (tmp_path / "big.png").write_bytes(_bytes(Image.new("RGB", (64, 64)), "PNG"))
    with pytest.raises(ImageError, match="cap") as err:
        read_image_bytes("big.png", tmp_path, ImagePolicy(max_bytes=50))
    assert "--max-image-bytes" in err.value.hint


def test_pixel_cap_checked_before_decoding():
    data = _bytes(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageError, match="300x200 pixels"):
        decode_image(data, ImagePolicy(max_pixels=10_000))


def test_not_an_image_and_truncated():
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"id,title\n1,shoe\n")
    data = _bytes(Image.effect_noise((128, 128), 40).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="broken or truncated"):
        decode_image(data[: len(data) // 2])
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
    with pytest.raises(ImageError):
        decode_image(pdf)


def test_type_by_content_not_extension(tmp_path: Path):
    (tmp_path / "photo.jpg").write_bytes(_bytes(Image.new("RGB", (8, 8), "red"), "PNG"))
    image = decode_image(read_image_bytes("photo.jpg", tmp_path))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    "make, fmt, expected",
    [
        (lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent -> white
        (lambda: Image.new("LA", (4, 4), (0, 255)), "PNG", (0, 0, 0)),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (lambda: Image.new("L", (4, 4), 128), "PNG", (128, 128, 128)),
        (lambda: Image.new("1", (4, 4), 1), "PNG", (255, 255, 255)),
    ],
)
def test_modes_become_rgb(make, fmt, expected):
    image = decode_image(_bytes(make(), fmt))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == pytest.approx(expected, abs=3)


def test_palette_with_transparency_on_white():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    image = decode_image(_bytes(p, "PNG", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_scaled_not_clipped():
    image16 = Image.new("I;16", (2, 1))
    image16.putpixel((0, 0), 1000)
    image16.putpixel((1, 0), 3000)
    image = decode_image(_bytes(image16, "PNG"))
    assert image.getpixel((0, 0))[0] == 0 and image.getpixel((1, 0))[0] == 255


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((0, 0)) == pytest.approx((255, 0, 0), abs=3)


def test_exif_orientation_applied():
    image = Image.new("RGB", (40, 20), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    decoded = decode_image(_bytes(image, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/a.jpg", "scheme"),
        ("http://127.0.0.1/a.jpg", "non-public"),
        ("http://localhost:8000/a.jpg", "non-public"),
        ("http://10.1.2.3/a.jpg", "non-public"),
        ("http://192.168.0.4/a.jpg", "non-public"),
        ("http://169.254.169.254/latest/meta-data", "non-public"),
        ("http://[::1]/a.jpg", "non-public"),
    ],
)
def test_url_guard(url, reason):
    with pytest.raises(ImageError, match=reason):
        check_url(url, ImagePolicy())


def test_private_urls_allowed_by_flag():
    check_url("http://127.0.0.1/a.jpg", ImagePolicy(allow_private=True))


def test_url_fetch_through_a_real_loopback_server(tmp_path: Path):
    import http.server
    import threading

    (tmp_path / "p.png").write_bytes(_bytes(Image.new("RGB", (5, 5), "blue"), "PNG"))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ImageError, match="non-public"):
            read_image_bytes(f"{base}/p.png", tmp_path)
        data = read_image_bytes(f"{base}/p.png", tmp_path, ImagePolicy(allow_private=True))
        assert decode_image(data).getpixel((0, 0)) == (0, 0, 255)
        with pytest.raises(ImageError, match="HTTP 404"):
            read_image_bytes(f"{base}/missing.png", tmp_path, ImagePolicy(allow_private=True))
        with pytest.raises(ImageError, match="cap"):
            read_image_bytes(f"{base}/p.png", tmp_path, ImagePolicy(allow_private=True, max_bytes=10))
    finally:
        server.shutdown()


def test_host_that_rebinds_to_a_private_address_is_refused_at_connect(tmp_path: Path, monkeypatch):
    """DNS rebinding: public when checked, loopback when fetched. The fetch must not reach it."""
    import http.server
    import socket
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    real = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        if host != "shop.example":
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    try:
        with pytest.raises(ImageError, match="non-public address \\(127.0.0.1\\)"):
            read_image_bytes(f"http://shop.example:{port}/p.png", tmp_path)
        assert hits == []
    finally:
        server.shutdown()
