"""Typed records shared by every layer: products going in, hits coming out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

# Fixed namespace so the same product id maps to the same point id in every store.
_POINT_NAMESPACE = uuid.UUID("5b0c5f7e-3d55-4a59-9a40-6f1c2a8e4d11")

# Payload keys the library owns; catalog columns may not use them.
RESERVED_FIELDS = ("product_id", "content_hash", "has_image", "image")


def point_id(product_id: str) -> str:
    """The store's point id for a catalog product id (UUIDv5), so re-ingesting updates in place."""
    return str(uuid.uuid5(_POINT_NAMESPACE, str(product_id)))


@dataclass(frozen=True)
class Product:
    """One catalog row after validation.

    ``fields`` holds every other catalog column (category, price, brand, ...) and becomes the
    point's payload; ``image`` is a local path or an http(s) URL, or None for a text-only product.
    """

    id: str
    title: str
    description: str = ""
    image: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The text that gets embedded: title and description."""
        return ". ".join(part for part in (self.title.strip(), self.description.strip()) if part)


@dataclass(frozen=True)
class VectorScore:
    """How one named vector ranked a hit: cosine similarity and 1-based rank (None: not retrieved)."""

    score: float
    rank: int | None


@dataclass(frozen=True)
class Hit:
    """One search result with its explanation.

    ``vector_scores`` maps each named vector searched (``image``, ``text``, ``fused``) to that
    list's score and rank; ``contributions`` maps each fused list to its share of ``score``.
    """

    id: str
    score: float
    payload: dict[str, Any]
    vector_scores: dict[str, VectorScore] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return str(self.payload.get("title", ""))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hit:
        """The inverse of ``to_dict`` (hits read back from the HTTP API)."""
        return cls(
            id=str(data["id"]),
            score=float(data["score"]),
            payload=dict(data.get("payload") or {}),
            vector_scores={k: VectorScore(float(v["score"]), v.get("rank")) for k, v in data["vector_scores"].items()},
            contributions={k: float(v) for k, v in data.get("contributions", {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "title": self.title,
            "payload": self.payload,
            "vector_scores": {name: {"score": vs.score, "rank": vs.rank} for name, vs in self.vector_scores.items()},
            "contributions": self.contributions,
        }


@dataclass(frozen=True)
class Answer:
    """A search's hits and what a shop tells the shopper about them.

    ``showing_results_for`` is the query as searched when words in it were corrected ("showing
    results for red mug"); ``no_close_matches`` is True when nothing passed the collection's
    relevance floor, and then ``hits`` is empty; ``exact_match`` is True when the query named a
    product (its id or SKU) and that product leads the hits.
    """

    hits: list[Hit]
    showing_results_for: str | None = None
    no_close_matches: bool = False
    exact_match: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": [h.to_dict() for h in self.hits],
            "showing_results_for": self.showing_results_for,
            "no_close_matches": self.no_close_matches,
            "exact_match": self.exact_match,
        }
