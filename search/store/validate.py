"""Checks every backend runs before it calls its engine, which accepts some bad input silently."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from shelfsight.search.errors import BadInputError
from shelfsight.search.store.base import CollectionMeta

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_collection_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise BadInputError(
            f"bad collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )


def check_vectors(item: str, vectors: Mapping[str, np.ndarray], meta: CollectionMeta) -> None:
    """Known names, the collection's dimension, finite values: the engine checks none of these."""
    for name, vector in vectors.items():
        if name not in meta.vectors:
            raise BadInputError(f"{item}: the collection has no vector {name!r} (it has {', '.join(meta.vectors)})")
        arr = np.asarray(vector)
        if arr.shape != (meta.dimension,):
            raise BadInputError(
                f"{item}: vector {name!r} has shape {arr.shape}, the collection holds {meta.dimension}-d vectors"
            )
        if not np.isfinite(arr).all():
            raise BadInputError(f"{item}: vector {name!r} has NaN or infinite values")
