"""Image I/O for every layer: reading local paths, fetching URLs behind a guard, decoding.

Queries (uploads, query images) and ingest both come here, so there is one idea of what a URL is
and one set of caps. Reading (bytes, for the content hash) and decoding (pixels, for the model) are
separate steps so an unchanged product is recognised without decoding its image. Decoding treats
bytes as untrusted: type by content, pixel cap, EXIF orientation, any mode to RGB.

Example::

    image = load_image("https://shop.example/p/42.jpg")          # guarded fetch + decode
    data = read_image_bytes("images/42.jpg", Path("catalog_dir"))  # bytes only, for hashing
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageOps, UnidentifiedImageError
from shelfsight.search.errors import BadInputError
from shelfsight.search.settings import MAX_UPLOAD_BYTES

# Formats Pillow recognises by content that we accept; anything else is "not an image".
ALLOWED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}


# Bytes Pillow holds per pixel while decoding, by mode (RGB is stored as 4 bytes a pixel).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on what an image may cost. ``allow_private`` lets URLs reach loopback/LAN hosts.

    ``max_decode_bytes`` bounds the memory of decoding and converting one image to RGB (a
    128 KB single-colour 6300x6300 PNG decodes to 160 MB); JPEGs over it are decoded at a
    reduced scale instead (``Image.draft``), other formats are refused. ``max_side`` decodes and
    downscales to at most that many pixels a side (queries: CLIP sees 224 px). ``deadline`` bounds a
    whole URL fetch, while ``timeout`` bounds each read. ``decode_slots`` > 0 lets at most that
    many images decode at once in this process, so a burst of uploads queues instead of
    multiplying memory.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    timeout: float = 10.0
    allow_private: bool = False
    max_decode_bytes: int = 256 * 2**20
    max_side: int | None = None
    deadline: float = 30.0
    decode_slots: int = 0


# What the HTTP API accepts as a query image: 64 MB of decode memory (16 MP RGB, more for JPEGs
# decoded at reduced scale), 1024 px a side kept, two decodes at a time, 15 s per URL fetch.
QUERY_POLICY = ImagePolicy(
    max_bytes=10 * 1024 * 1024, max_decode_bytes=64 * 2**20, max_side=1024, deadline=15.0, decode_slots=2
)
_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _decode_slot(policy: ImagePolicy) -> threading.BoundedSemaphore | None:
    if policy.decode_slots <= 0:
        return None
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(policy.decode_slots, threading.BoundedSemaphore(policy.decode_slots))


def decode_cost(mode: str, size: tuple[int, int]) -> int:
    """Bytes that decoding an image of this mode and size and converting it to RGB holds at once."""
    stored = _STORED_BYTES.get(mode, 4)
    convert = 0 if mode == "RGB" else 4
    widen = 4 if mode in _WIDE_MODES else 0  # 16/32-bit greyscale goes through a float image
    return size[0] * size[1] * (stored + convert + widen)


class ImageError(BadInputError):
    """One image cannot be used; ``reason`` says why and ``hint`` how to fix it."""

    def __init__(self, reason: str, hint: str):
        super().__init__(f"{reason} ({hint})")
        self.reason = reason
        self.hint = hint


def decode_image(
    data: bytes, policy: ImagePolicy = ImagePolicy(), name: str = "image", min_side: int | None = None
) -> Image.Image:
    """Decode bytes into an RGB image: type by content, pixel and memory caps, EXIF orientation,
    first frame; at most ``policy.decode_slots`` at once when that is set.

    ``min_side``: the caller needs only this many pixels on the shortest side (a model's input), so a
    JPEG decodes at the smallest of 1/2, 1/4 or 1/8 scale that keeps it (Pillow's draft mode:
    a 1000-px photo for a 224-px model decodes at 250 px, several times faster)."""
    slot = _decode_slot(policy)
    if slot is None:
        return _decode(data, policy, name, min_side)
    with slot:
        return _decode(data, policy, name, min_side)


def _decode(data: bytes, policy: ImagePolicy, name: str, min_side: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            if opened.format not in ALLOWED_FORMATS:
                raise ImageError(
                    f"{name} is a {opened.format} file, not a supported image", "use JPEG, PNG, WebP, GIF, BMP or TIFF"
                )
            width, height = opened.size
            if width * height > policy.max_pixels:
                raise ImageError(
                    f"{name} is {width}x{height} pixels, over the {policy.max_pixels}-pixel cap",
                    "downscale the image or raise --max-image-pixels",
                )
            _fit_decode_budget(opened, policy, name, min_side)
            opened.seek(0)  # animated images: the first frame stands for the product
            opened.load()
            image = to_rgb(ImageOps.exif_transpose(opened) or opened)
            if policy.max_side:
                image.thumbnail((policy.max_side, policy.max_side))
            return image
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is a decompression bomb: {exc}", "downscale the image") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image Pillow can read", "replace it with a JPEG, PNG or WebP file") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is broken or truncated: {exc}", "re-export or replace the image") from exc


def _fit_decode_budget(opened: Image.Image, policy: ImagePolicy, name: str, min_side: int | None = None) -> None:
    """Before any pixel is decoded: JPEGs are set to decode at a reduced scale (1/2 to 1/8) that
    fits ``max_side``, ``min_side`` and the memory budget; other images over the budget are refused."""
    width, height = opened.size
    if opened.format in ("JPEG", "MPO"):
        want = max(width, height)
        if policy.max_side:
            want = min(want, policy.max_side)
        if min_side:
            want = min(want, -(-min_side * max(width, height) // max(1, min(width, height))))
        cost = decode_cost(opened.mode, opened.size)
        if cost > policy.max_decode_bytes:
            # Half the linear scale that would fit, so the power-of-two reduction lands inside the budget.
            want = min(want, int(max(width, height) * (policy.max_decode_bytes / cost) ** 0.5 / 2))
        if want < max(width, height):
            opened.draft(
                None, (max(1, want * width // max(width, height)), max(1, want * height // max(width, height)))
            )
    cost = decode_cost(opened.mode, opened.size)
    if cost > policy.max_decode_bytes:
        limit_mb = policy.max_decode_bytes // 2**20
        raise ImageError(
            f"{name} is {width}x{height} {opened.mode} pixels; decoding it takes {cost // 2**20} MB, over the "
            f"{limit_mb} MB budget",
            "send a smaller image (a JPEG, or fewer pixels)",
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency on white, CMYK and 16-bit scaled properly."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the actual range into 8 bits instead of clipping to white.
        image = image.convert("F")
        low, high = cast(tuple[float, float], image.getextrema())  # one band: (min, max)
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:", re.IGNORECASE)


def image_from_base64(data: str, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of an image a client sent as base64 (``image_base64`` in the HTTP API)."""
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInputError("image_base64 is not valid base64") from None
    if len(image) > max_bytes:
        raise BadInputError(f"image is over the {max_bytes}-byte upload cap")
    return image


def is_url(ref: str) -> bool:
    """Whether ``ref`` is a URL (any scheme) rather than a path; only http(s) ones are fetched."""
    return bool(_SCHEME.match(ref.strip()))


def read_image_bytes(ref: str, base_dir: Path, policy: ImagePolicy = ImagePolicy()) -> bytes:
    """The raw bytes of a local path (relative to ``base_dir``) or an http(s) URL."""
    if is_url(ref):
        return _fetch_url(ref, policy)
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise ImageError(f"image file not found: {path}", "fix the path; relative paths start at the catalog's folder")
    if not path.is_file():
        raise ImageError(f"image path is not a file: {path}", "point the image column at an image file")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"image file is empty: {path}", "re-export or replace the image")
    if size > policy.max_bytes:
        raise ImageError(
            f"image file is {size} bytes, over the {policy.max_bytes}-byte cap: {path}",
            "shrink the image or raise --max-image-bytes",
        )
    return path.read_bytes()


def check_url(url: str, policy: ImagePolicy) -> None:
    """Refuse schemes other than http(s) and, unless allowed, hosts on private networks."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https"):
        raise ImageError(f"refused URL scheme {parsed.scheme!r}: {url}", "only http and https image URLs are fetched")
    host = parsed.hostname
    if not host:
        raise ImageError(f"URL has no host: {url}", "use a full http(s)://host/path URL")
    if not policy.allow_private:
        _public_addresses(host, parsed.port or (443 if parsed.scheme == "https" else 80), url)


def _public_addresses(host: str, port: int, url: str) -> list[tuple[Any, ...]]:
    """Resolve ``host``; every address must be public, else the URL is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageError(f"cannot resolve host {host!r}: {exc}", "check the URL's host name") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise ImageError(
                f"refused URL to a non-public address ({address}): {url}",
                "host the image publicly, or pass --allow-private-urls for a trusted network",
            )
    return list(infos)


def _pinned_connect(
    address: tuple[str, int], timeout: float | None = None, source_address: tuple[str, int] | None = None
) -> socket.socket:
    """Connect only to an address checked at this moment, so a host that resolves to a public
    address for the check and a private one for the fetch (DNS rebinding) is still refused."""
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in _public_addresses(host, port, f"{host}:{port}"):
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address for {host}")


class _FetchClock:
    """One fetch's overall deadline. Every socket read waits at most the per-read timeout or the
    time left, whichever is less, and a watchdog shuts the connection when the time is up, so a
    host that drips bytes (in the headers, a chunk line or the body) cannot hold a fetch longer."""

    def __init__(self, policy: ImagePolicy):
        self.policy = policy
        self.ends = time.monotonic() + policy.deadline
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._watchdog = threading.Timer(policy.deadline, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def passed(self) -> bool:
        """Whether the deadline has passed (a read that timed out at it may beat the watchdog)."""
        return self.expired or time.monotonic() >= self.ends

    def read_timeout(self) -> float:
        """The socket timeout for the next read; raises once the deadline has passed."""
        left = self.ends - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("deadline")
        return min(self.policy.timeout, left)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown()

    def before_read(self) -> None:
        timeout = self.read_timeout()
        with self._lock:
            if self._sock is not None:
                self._sock.settimeout(timeout)

    def stop(self) -> None:
        self._watchdog.cancel()
        with self._lock:
            self._sock = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # a blocked read returns at once
            except OSError:
                pass  # already closed


def _connection(
    base: type[http.client.HTTPConnection], clock: _FetchClock, pinned: bool
) -> type[http.client.HTTPConnection]:
    """``base`` that connects within the fetch's deadline, hands its socket to ``clock`` and, when
    ``pinned``, connects only to addresses checked at that moment."""

    class Connection(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            if pinned:
                self._create_connection = _pinned_connect  # http.client's connect hook

        def connect(self) -> None:
            self.timeout = clock.read_timeout()
            super().connect()  # TLS still verifies the URL's host name
            clock.watch(self.sock)

    return Connection


class _ClockedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, clock: _FetchClock, pinned: bool):
        super().__init__()
        self.connection = _connection(http.client.HTTPConnection, clock, pinned)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _ClockedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, clock: _FetchClock, pinned: bool):
        super().__init__()
        self.connection = _connection(http.client.HTTPSConnection, clock, pinned)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = getattr(self, "_context", None)  # the handler's TLS context (urllib keeps it private)
        return self.do_open(self.connection, req, context=context)


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: ImagePolicy):
        self.policy = policy

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        check_url(newurl, self.policy)  # a public host must not bounce us onto a private one
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _through_proxy(url: str) -> bool:
    """Whether urllib sends this URL through a configured proxy (which then resolves the host)."""
    parsed = urllib.parse.urlsplit(url)
    return bool(urllib.request.getproxies().get(parsed.scheme)) and not urllib.request.proxy_bypass(
        parsed.hostname or ""
    )


def _fetch_url(url: str, policy: ImagePolicy) -> bytes:
    check_url(url, policy)
    clock = _FetchClock(policy)
    try:
        data = _fetch_within(url, policy, clock)
    except ImageError:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        if clock.passed:
            raise _past_deadline(url, policy) from exc
        if isinstance(exc, urllib.error.HTTPError):
            raise ImageError(f"HTTP {exc.code} fetching {url}", "check that the URL serves the image") from exc
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"cannot fetch {url}: {reason}", "check the URL and the network; slow hosts time out") from exc
    finally:
        clock.stop()
    if clock.expired:  # the watchdog shut the connection: what arrived is cut short
        raise _past_deadline(url, policy)
    if len(data) > policy.max_bytes:
        raise ImageError(
            f"image at {url} is over the {policy.max_bytes}-byte cap", "shrink it or raise --max-image-bytes"
        )
    if not data:
        raise ImageError(f"empty response from {url}", "check that the URL serves the image")
    return data


def _fetch_within(url: str, policy: ImagePolicy, clock: _FetchClock) -> bytes:
    pinned = not policy.allow_private and not _through_proxy(url)
    handlers = [_GuardedRedirects(policy), _ClockedHTTPHandler(clock, pinned), _ClockedHTTPSHandler(clock, pinned)]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "shelfsight-ingest"})
    with opener.open(request, timeout=clock.read_timeout()) as response:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
            raise ImageError(
                f"image at {url} is {declared} bytes, over the {policy.max_bytes}-byte cap",
                "shrink it or raise --max-image-bytes",
            )
        return _read_body(response, policy, clock)


def _read_body(response: Any, policy: ImagePolicy, clock: _FetchClock) -> bytes:
    """The body, at most ``max_bytes + 1`` of it, read in pieces, each within the time left."""
    chunks: list[bytes] = []
    size = 0
    while size <= policy.max_bytes:
        clock.before_read()
        chunk: bytes = response.read1(min(65536, policy.max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _past_deadline(url: str, policy: ImagePolicy) -> ImageError:
    return ImageError(
        f"fetching {url} took over the {policy.deadline:g}-second deadline", "serve the image from a faster host"
    )


def load_image(ref: str, base_dir: Path = Path("."), policy: ImagePolicy = ImagePolicy()) -> Image.Image:
    """Read and decode in one step (queries, uploads)."""
    return decode_image(read_image_bytes(ref, base_dir, policy), policy, name=ref)
