"""What a storefront needs to know about a collection before its first query.

The filter controls come from here: which payload fields are keywords (multi-selects) or numbers
(ranges), each number field's lowest and highest value in the catalog (the price range a shopper
picks within), the vectors the collection has (early fusion needs ``fused``) and the engine's
default fusion. The same summary comes from an engine in this process (``summarize``) or from a
running server (``GET /catalog``, read by ``remote.remote_summary``).

The ranges take one scroll over the payloads (about a second per 100k products); a summary is
reused while the product count is unchanged and it is younger than ``RANGES_MAX_AGE_S``.

Example::

    summary = summarize(engine)
    low, high = summary.ranges["price"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shelfsight.search.engine import SearchEngine

# A price edited in place (same count) shows in the range after at most this long.
RANGES_MAX_AGE_S = 300.0


@dataclass(frozen=True)
class CatalogSummary:
    collection: str
    count: int
    model: str
    vectors: tuple[str, ...]
    fields: dict[str, str]  # filterable payload field -> "keyword" | "float"
    fusion: str  # the engine's default late fusion
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # float field -> (lowest, highest)
    measured_at: float = 0.0  # time.time() when the ranges were read
    # The vectors a search uses when it names none (the engine's default: both CLIP vectors and the
    # words). A client that names them gets the same lists from an engine in its own process and
    # from the HTTP API, whatever either's default becomes.
    search_vectors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "count": self.count,
            "model": self.model,
            "vectors": list(self.vectors),
            "fields": dict(self.fields),
            "fusion": self.fusion,
            "ranges": {name: {"min": low, "max": high} for name, (low, high) in self.ranges.items()},
            "measured_at": self.measured_at,
            "search_vectors": list(self.search_vectors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CatalogSummary:
        return cls(
            collection=str(data["collection"]),
            count=int(data["count"]),
            model=str(data["model"]),
            vectors=tuple(str(v) for v in data["vectors"]),
            fields={str(k): str(v) for k, v in data["fields"].items()},
            fusion=str(data["fusion"]),
            ranges={str(k): (float(v["min"]), float(v["max"])) for k, v in data.get("ranges", {}).items()},
            measured_at=float(data.get("measured_at", 0.0)),
            search_vectors=tuple(str(v) for v in data.get("search_vectors", ())),
        )


def number_ranges(payloads: Iterable[Mapping[str, Any]], names: Iterable[str]) -> dict[str, tuple[float, float]]:
    """The lowest and highest finite value of each field in ``names``; fields with none are left out."""
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    wanted = tuple(names)
    for payload in payloads:
        for name in wanted:
            value = payload.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                low[name] = min(low.get(name, value), value)
                high[name] = max(high.get(name, value), value)
    return {name: (float(low[name]), float(high[name])) for name in wanted if name in low}


def summarize(engine: SearchEngine, previous: CatalogSummary | None = None) -> CatalogSummary:
    """The collection's summary; ``previous``'s ranges are kept while still good (see the module)."""
    count = engine.count()
    fields = engine.filterable_fields
    fresh = (
        previous is not None
        and previous.collection == engine.collection
        and previous.count == count
        and time.time() - previous.measured_at < RANGES_MAX_AGE_S
    )
    if previous is not None and fresh:
        ranges, measured_at = previous.ranges, previous.measured_at
    else:
        numbers = [name for name, kind in fields.items() if kind == "float"]
        points = engine.store.scroll(engine.collection) if numbers else iter(())
        ranges, measured_at = number_ranges((p.payload for p in points), numbers), time.time()
    return CatalogSummary(
        collection=engine.collection,
        count=count,
        model=engine.meta.model,
        vectors=tuple(engine.meta.vectors),
        fields=fields,
        fusion=engine.settings.fusion,
        ranges=ranges,
        measured_at=measured_at,
        search_vectors=(*(v for v in ("image", "text") if v in engine.meta.vectors), *engine.meta.sparse_vectors),
    )
