"""Pure fusion math: late fusion of ranked lists (RRF, DBSF, weighted sum) and early fusion.

Late fusion takes several ranked lists of (id, cosine score) and returns one score per id plus
each list's share of it; the same formulas as Qdrant's engine, so Python and engine agree.
Early fusion combines vectors before searching: ``normalize(a * image + (1 - a) * text)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

RRF_K = 60

K = TypeVar("K", bound=Hashable)  # what identifies an item: a point id, a product id
Ranked = Sequence[tuple[K, float]]  # one list: (id, score), best first


def fuse_rrf(
    lists: Sequence[Ranked[K]], weights: Sequence[float] | None = None, k: int = RRF_K
) -> dict[K, list[float]]:
    """Reciprocal rank fusion as Qdrant computes it: an item at 1-based rank ``r`` in a list of
    weight ``w`` gets ``1 / (k - 1 + r / w)``; with ``w = 1`` that is the classic ``1 / (k + r - 1)``.
    A weight stretches or shrinks the list's ranks rather than scaling its scores.

    Returns id -> per-list contributions (0 where the list did not retrieve the id);
    the fused score is their sum.
    """
    weights = _weights(weights, len(lists))
    if any(w <= 0 for w in weights):
        raise ValueError("RRF weights must be positive")
    out: dict[K, list[float]] = {}
    for i, ranked in enumerate(lists):
        for rank, (item, _score) in enumerate(ranked, start=1):
            out.setdefault(item, [0.0] * len(lists))[i] = 1.0 / (k - 1 + rank / weights[i])
    return out


def dbsf_normalize(scores: Sequence[float]) -> list[float]:
    """Distribution-based normalization: map [mean - 3 sd, mean + 3 sd] (sample sd) onto [0, 1]."""
    if not scores:
        return []
    if len(scores) == 1:
        return [0.5]
    mean = sum(scores) / len(scores)
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
    if sd == 0:
        return [0.5] * len(scores)
    low, high = mean - 3 * sd, mean + 3 * sd
    return [(s - low) / (high - low) for s in scores]


def fuse_dbsf(lists: Sequence[Ranked[K]], weights: Sequence[float] | None = None) -> dict[K, list[float]]:
    """Distribution-based score fusion: per-list normalized scores, weighted, summed."""
    weights = _weights(weights, len(lists))
    out: dict[K, list[float]] = {}
    for i, ranked in enumerate(lists):
        normalized = dbsf_normalize([s for _, s in ranked])
        for (item, _), value in zip(ranked, normalized, strict=False):
            out.setdefault(item, [0.0] * len(lists))[i] = weights[i] * value
    return out


def fuse_weighted(scores: Mapping[K, Sequence[float]], weights: Sequence[float] | None = None) -> dict[K, list[float]]:
    """Weighted sum of cosine scores: ``sum(w_i * s_i) / sum(w_i)``.

    ``scores`` must hold every list's score for every id (exact cosines, not only retrieved
    ones), so a product missing from one list is not unfairly scored 0.
    """
    if not scores:
        return {}
    n = len(next(iter(scores.values())))
    weights = _weights(weights, n)
    total = sum(abs(w) for w in weights) or 1.0
    return {item: [w * s / total for w, s in zip(weights, row, strict=False)] for item, row in scores.items()}


def rank_fused(contributions: Mapping[K, Sequence[float]]) -> list[tuple[K, float]]:
    """Ids by fused score (sum of contributions), best first; ties keep insertion order."""
    return sorted(((item, float(sum(c))) for item, c in contributions.items()), key=lambda t: -t[1])


def normalize(vector: np.ndarray) -> np.ndarray:
    """Unit-length copy of ``vector`` (zero stays zero)."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def early_fuse(image: np.ndarray | None, text: np.ndarray | None, image_share: float) -> np.ndarray:
    """The early-fused vector ``normalize(a * image + (1 - a) * text)``; a missing part drops out."""
    if not 0.0 <= image_share <= 1.0:
        raise ValueError(f"image share must lie in [0, 1], got {image_share}")
    if image is None and text is None:
        raise ValueError("early fusion needs an image or a text vector")
    if image is None:
        return normalize(text)  # type: ignore[arg-type]  # not both None: checked above
    if text is None:
        return normalize(image)
    return normalize(image_share * np.asarray(image) + (1.0 - image_share) * np.asarray(text))


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``normalize(sum(w_i * v_i))``: weighted query terms (negative weights push away)."""
    if not vectors:
        raise ValueError("nothing to combine")
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for v, w in zip(vectors, weights, strict=False):
        total += w * np.asarray(v, dtype=np.float32)
    return normalize(total)


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} lists")
    return [float(w) for w in weights]
