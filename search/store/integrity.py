"""A startup check of an embedded (qdrant-edge) collection, so damage is named instead of served.

qdrant-edge loads a damaged shard without complaint and then answers from what is left: a
truncated id tracker silently drops points from every count (2,000 became 1,016), a damaged
vector file passes ``count`` and fails every search. So after loading a shard the store checks:

1. every segment's id tracker knows every vector its storage holds (``mutable_id_tracker.mappings``
   against ``vectors/status.dat``), and has no half-written entry at its end;
2. a sample of stored vectors reads back, finite, of the collection's dimension, of unit length.

Before loading, ``check_files`` refuses a shard whose segments folder is gone (the engine would
start an empty one).

Each problem becomes one ``StoreUnavailableError`` line naming the damage and the fix.

Example::

    check_shard(shard, Path("db/products/shard"), meta, where="collection 'products' in db")
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import qdrant_edge as qe
from shelfsight.search.errors import StoreUnavailableError
from shelfsight.search.store.base import CollectionMeta

# Entries of qdrant-edge 0.9.0's mutable id tracker: a tag byte, then the point id, then (for an
# insert) the 4-byte internal offset. Our ids are UUIDs (tags 2 and 4); numeric ids use 1 and 3.
_ENTRY_SIZES = {1: 12, 2: 20, 3: 8, 4: 16}
_INSERTS = {1: 8, 2: 16}  # tag -> where the offset starts after the tag byte
# Points whose vectors are read back at startup: enough to meet a damaged region of a vector file
# (ids come back in id order, so the sample is spread over the file), cheap at 100k points.
VECTOR_SAMPLE = 512
FIX = (
    "restore a snapshot (`shelfsight restore FILE --db DIR --force`) or rebuild it: "
    "`shelfsight ingest CATALOG --db DIR --reindex`"
)


def damaged(where: str, what: str, fix: str = FIX) -> StoreUnavailableError:
    return StoreUnavailableError(f"{where} is damaged: {what}; {fix}")


def check_files(shard_dir: Path, where: str) -> None:
    """Before loading: a shard whose segments are gone would load as an empty collection."""
    segments = shard_dir / "segments"
    if shard_dir.is_dir() and not (segments.is_dir() and any(segments.iterdir())):
        raise damaged(where, f"its segments are gone ({segments} is missing or empty)")


def check_shard(shard: qe.EdgeShard, shard_dir: Path, meta: CollectionMeta, where: str) -> None:
    """Raise one-line ``StoreUnavailableError`` if the loaded shard's files disagree or its vectors
    do not read back."""
    shard.flush()  # what the WAL replayed at load reaches the files the check reads
    for segment in sorted((shard_dir / "segments").glob("*")):
        _check_id_tracker(segment, where)
    _check_vectors(shard, meta, where)


def _tracker_slots(data: bytes) -> tuple[int, bool] | None:
    """(internal offsets the tracker has handed out, whether its last entry is cut short), or
    None for an entry this reader does not know (then the check is skipped, never guessed)."""
    pos, slots = 0, 0
    while pos < len(data):
        tag = data[pos]
        size = _ENTRY_SIZES.get(tag)
        if size is None:
            return None
        if pos + 1 + size > len(data):
            return slots, True
        if tag in _INSERTS:
            start = pos + 1 + _INSERTS[tag]
            slots = max(slots, struct.unpack_from("<I", data, start)[0] + 1)
        pos += 1 + size
    return slots, False


def _check_id_tracker(segment: Path, where: str) -> None:
    mappings = segment / "mutable_id_tracker.mappings"
    if not mappings.is_file():
        return  # an optimized (immutable) segment keeps its ids another way
    parsed = _tracker_slots(mappings.read_bytes())
    if parsed is None:
        return
    slots, cut = parsed
    stored = 0
    for status in segment.glob("vector_storage-*/vectors/status.dat"):
        raw = status.read_bytes()
        if len(raw) >= 8:
            stored = max(stored, struct.unpack_from("<Q", raw)[0])
    if cut or stored > slots:
        raise damaged(
            where,
            f"the id tracker of segment {segment.name} knows {slots} of the {stored} stored points"
            + (" and ends in a half-written entry" if cut else ""),
        )


def _check_vectors(shard: qe.EdgeShard, meta: CollectionMeta, where: str) -> None:
    try:
        points, _ = shard.scroll(
            qe.ScrollRequest(limit=VECTOR_SAMPLE, offset=None, with_payload=False, with_vector=True)
        )
    except Exception as exc:  # the engine raises plain Exception for unreadable files
        raise damaged(where, f"its vectors do not read back ({str(exc)[:160]})") from exc
    for point in points:
        vectors = point.vector if isinstance(point.vector, dict) else {}
        for name, vector in vectors.items():
            if not isinstance(vector, list) or (vector and not isinstance(vector[0], float)):
                continue  # multi-vectors and sparse vectors: not ours
            values = np.asarray(vector, dtype=np.float64)  # numpy: 1,536 vectors of 512 in ~20 ms, not ~300
            norm = float(np.sqrt(values @ values)) if np.isfinite(values).all() else math.nan
            if len(values) != meta.dimension or not (abs(norm - 1.0) < 1e-3 or norm == 0.0):
                raise damaged(where, f"the {name!r} vector of point {point.id} reads back wrong (norm {norm:.3g})")
