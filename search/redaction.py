"""Secrets out of every message a client or a log sees: URL credentials and the keys we are given.

Example::

    redact("cannot reach http://user:pw@db:6333")   # 'cannot reach http://***@db:6333'
"""

from __future__ import annotations

import os
import re

# Environment variables whose values are secrets (search/settings.py, search/http_guard.py).
SECRET_ENVIRONMENT = ("QDRANT_API_KEY", "SHELFSIGHT_API_KEY", "SHELFSIGHT_ADMIN_KEY")
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` without URL credentials (``https://user:pass@host`` -> ``https://***@host``) and
    without the values of the secret environment variables or ``secrets``."""
    out = _URL_CREDENTIALS.sub("***@", text)
    for secret in (*secrets, *(os.environ.get(name) for name in SECRET_ENVIRONMENT)):
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out
