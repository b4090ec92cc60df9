"""Safe image loading: local paths and guarded http(s) URLs, byte and pixel caps, any mode to RGB.

Reading (bytes, for the content hash) and decoding (pixels, for the model) are separate steps so
an unchanged product is recognised without decoding its image.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

from search.images import ImageError, ImagePolicy, decode_image

__all__ = ["ImageError", "ImagePolicy", "decode_image", "load_image", "read_image_bytes", "check_url", "is_url"]


def is_url(ref: str) -> bool:
    return "://" in ref or ref.lower().startswith(("http:", "https:", "file:", "ftp:", "data:"))


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


def _public_addresses(host: str, port: int, url: str) -> list[tuple]:
    """Resolve ``host``; every address must be public, else the URL is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageError(f"cannot resolve host {host!r}: {exc}", "check the URL's host name") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise ImageError(
                f"refused URL to a non-public address ({address}): {url}",
                "host the image publicly, or pass --allow-private-urls for a trusted network",
            )
    return infos


def _pinned_connect(address: tuple[str, int], timeout=None, source_address=None) -> socket.socket:
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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _pinned_connect


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _pinned_connect  # TLS still verifies the URL's host name


class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PinnedHTTPConnection, req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PinnedHTTPSConnection, req, context=self._context)


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: ImagePolicy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
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
    handlers: list = [_GuardedRedirects(policy)]
    if not policy.allow_private and not _through_proxy(url):
        handlers += [_PinnedHTTPHandler(), _PinnedHTTPSHandler()]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "shelfsight-ingest"})
    try:
        with opener.open(request, timeout=policy.timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise ImageError(
                    f"image at {url} is {declared} bytes, over the {policy.max_bytes}-byte cap",
                    "shrink it or raise --max-image-bytes",
                )
            data = response.read(policy.max_bytes + 1)
    except ImageError:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageError(f"HTTP {exc.code} fetching {url}", "check that the URL serves the image") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(f"cannot fetch {url}: {reason}", "check the URL and the network; slow hosts time out") from exc
    if len(data) > policy.max_bytes:
        raise ImageError(
            f"image at {url} is over the {policy.max_bytes}-byte cap", "shrink it or raise --max-image-bytes"
        )
    if not data:
        raise ImageError(f"empty response from {url}", "check that the URL serves the image")
    return data


def load_image(ref: str, base_dir: Path = Path("."), policy: ImagePolicy = ImagePolicy()) -> Image.Image:
    """Read and decode in one step (queries, uploads)."""
    return decode_image(read_image_bytes(ref, base_dir, policy), policy, name=ref)
