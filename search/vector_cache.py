"""A bounded LRU of query-part vectors.

Shoppers page, refine filters and reopen the same query; the storefront asks for facets and hits
of one query on every rerun. Each of those would embed the same text or image again.

Example::

    cache = VectorCache(256)
    vectors = cache.get_many(["red bag", "blue shoe"], embedder.encode_texts)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from PIL import Image


def image_key(image: Image.Image) -> str:
    """Content key of a decoded image: its size, mode and pixel digest."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    return f"{image.mode}:{image.size[0]}x{image.size[1]}:{digest}"


class VectorCache:
    """Thread-safe LRU from a key (query text, image key) to its vector."""

    def __init__(self, size: int = 512):
        self.size = size
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_many(
        self, keys: Sequence[Hashable], compute: Callable[[list[Any]], np.ndarray], items: Sequence[Any] | None = None
    ) -> np.ndarray:
        """Vectors for ``keys``; the missing ones come from ``compute(items of the missing keys)``
        in one batch. ``items`` defaults to the keys themselves (texts)."""
        items = list(keys) if items is None else list(items)
        found: dict[int, np.ndarray] = {}
        with self._lock:
            for i, key in enumerate(keys):
                if key in self._items:
                    self._items.move_to_end(key)
                    found[i] = self._items[key]
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        missing = [i for i in range(len(keys)) if i not in found]
        if missing:
            fresh = compute([items[i] for i in missing])
            with self._lock:
                for i, vector in zip(missing, fresh):
                    found[i] = vector
                    if self.size > 0:
                        self._items[keys[i]] = vector
                        self._items.move_to_end(keys[i])
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return np.stack([found[i] for i in range(len(keys))]) if keys else np.zeros((0, 0), np.float32)
