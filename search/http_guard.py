"""What stands in front of the HTTP API's routes: the body-size limit, API keys, secret redaction.

Both guards are plain ASGI middleware, so they act before FastAPI reads a byte of the body:
a request whose ``Content-Length`` is over the limit is answered 413 at once, and a chunked
one is cut off (413) as soon as the bytes received pass it, before multipart spooling or JSON
parsing gets the rest. Keys are compared in constant time (``hmac.compare_digest``).

Example::

    options = ServeOptions.from_env()            # SHELFSIGHT_API_KEY, SHELFSIGHT_ADMIN_KEY, ...
    app = BodyLimit(ApiKeyGuard(app, options), options.max_body_bytes)
"""

from __future__ import annotations

import ctypes
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from shelfsight.search.http_docs import ASSET_PATHS
from shelfsight.search.redaction import redact
from shelfsight.search.settings import MAX_UPLOAD_BYTES
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The largest body a request may carry: a 10 MB image as base64 in JSON (4/3 of it) and room for
# the other fields or the multipart framing.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 2**20
# Paths any client may read without a key: the API's own description and its pages' scripts.
OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", *ASSET_PATHS)
# POST routes that only read; any other POST, PUT, PATCH or DELETE is a write and needs the admin key.
READ_POSTS = ("/search", "/search/upload")


class ErrorBody(BaseModel):
    """Every error the API returns: the kind of error and what to do about it."""

    error: str
    detail: str


@dataclass(frozen=True)
class ServeOptions:
    """How ``shelfsight serve`` exposes the engine.

    ``read_key`` (env ``SHELFSIGHT_API_KEY``) guards every route but the API description;
    ``admin_key`` (env ``SHELFSIGHT_ADMIN_KEY``) guards writes and also opens reads.
    ``cors_origins`` (env ``SHELFSIGHT_CORS_ORIGINS``, comma-separated) turns CORS on for them.
    ``allow_local_paths`` lets query parts name files on the server's disk (off: never over HTTP).
    ``int8_queries`` embeds query texts with an int8 text tower where it keeps fp32's vectors;
    ``text_process`` embeds them in a child process beside the server's (``text_process``).
    """

    read_key: str | None = None
    admin_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    allow_local_paths: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    int8_queries: bool = True
    text_process: bool = False

    @classmethod
    def from_env(
        cls, allow_local_paths: bool = False, int8_queries: bool = True, text_process: bool = False
    ) -> ServeOptions:
        origins = tuple(o.strip() for o in os.environ.get("SHELFSIGHT_CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            read_key=os.environ.get("SHELFSIGHT_API_KEY") or None,
            admin_key=os.environ.get("SHELFSIGHT_ADMIN_KEY") or None,
            cors_origins=origins,
            allow_local_paths=allow_local_paths,
            int8_queries=int8_queries,
            text_process=text_process,
        )


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a log record's message and traceback before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


async def send_error(send: Send, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class BodyLimit:
    """Refuse bodies over ``max_bytes`` while they stream, before anything spools or parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body is over the {self.max_bytes}-byte limit; send a smaller image"
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await send_error(send, 413, "PayloadTooLarge", detail, {"connection": "close"})
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException raised while it reads the body on to its handler.
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)


class ApiKeyGuard:
    """Reads need the read or admin key when either is set. Writes always need the admin key: a
    server without one takes no writes (403), so they are never open."""

    def __init__(self, app: ASGIApp, options: ServeOptions):
        self.app = app
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        write = scope["method"] not in ("GET", "HEAD") and not (
            scope["method"] == "POST" and scope["path"] in READ_POSTS
        )
        if write and not self.options.admin_key:
            detail = "this server takes no writes; start it with SHELFSIGHT_ADMIN_KEY set and send that key"
            await send_error(send, 403, "Forbidden", detail)
            return
        accepted = [self.options.admin_key] if write else [self.options.read_key, self.options.admin_key]
        if not any(accepted):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-api-key") or (_header(scope, b"authorization") or "").removeprefix("Bearer ")
        if any(key and hmac.compare_digest(given.encode(), key.encode()) for key in accepted):
            await self.app(scope, receive, send)
            return
        what = "the admin key (SHELFSIGHT_ADMIN_KEY)" if write else "an API key"
        await send_error(
            send,
            401,
            "Unauthorized",
            f"this server needs {what}; send it in the X-API-Key header",
            {"www-authenticate": "ApiKey"},
        )


def json_h11_protocol() -> type:
    """uvicorn's h11 protocol, except that a request it cannot even parse (a malformed request line
    or headers, answered before the app sees it) gets the API's JSON error body, not plain text."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": "BadRequest", "detail": f"{msg} (not a valid HTTP/1.1 request)"}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            headers.append((b"content-length", str(len(body)).encode()))
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonErrorH11Protocol


# glibc gives threads their own malloc arenas (up to 8 per core) and returns little of their freed
# memory, so a server answering from many threads grew a few MB a minute under steady load
# (bench/load.py, 32 clients: +5 to 9 MB a run). With 2 arenas the growth stops within the first
# minute after the warm-up (five 60 s runs: +2.4, +0.3, 0, -3.3, 0 MB): what is left is glibc's
# high-water mark, not live data (README, "Load"). An operator's MALLOC_ARENA_MAX wins.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; False where there is no glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
