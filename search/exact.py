"""Exact matches: a query that is a product's id or SKU finds that product first.

Shoppers paste product numbers; CLIP reads them as noise. The id is looked up by its point id
(one retrieve), then the SKU-like keyword fields the catalog has (``sku``, ``gtin``, ...) by a
keyword filter. ``satisfies`` checks the request's filters against the product's payload, so an
exact match never shows a product the filters leave out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shelfsight.search.records import point_id
from shelfsight.search.store.base import CollectionMeta, Filter, Match, Range, StoredPoint, VectorStore

# Keyword fields whose value names one product, as shops call them.
SKU_FIELDS = ("sku", "gtin", "ean", "upc", "mpn", "isbn", "article_number", "item_number", "model_number")
# Longer queries are sentences, not identifiers.
_MAX_ID_CHARS = 100


def exact_product(
    store: VectorStore, collection: str, meta: CollectionMeta, text: str
) -> tuple[StoredPoint, str] | None:
    """The product whose id, or a SKU-like field, equals ``text`` (as typed, then upper-case), and
    the field that matched."""
    key = text.strip().strip('"').strip()
    if not key or len(key) > _MAX_ID_CHARS:
        return None
    for candidate in dict.fromkeys((key, key.upper())):
        found = store.retrieve(collection, [point_id(candidate)])
        if found:
            return found[0], "product_id"
    for field in (f for f in SKU_FIELDS if meta.fields.get(f) == "keyword"):
        for candidate in dict.fromkeys((key, key.upper())):
            point = next(store.scroll(collection, (Match(field, (candidate,)),), batch_size=1), None)
            if point is not None:
                return point, field
    return None


def satisfies(payload: Mapping[str, Any], condition: Filter) -> bool:
    """Whether a payload passes every condition (phrases and ids are checked by the store, not here)."""
    return all(_holds(payload, c) for c in condition if isinstance(c, Match | Range))


def _holds(payload: Mapping[str, Any], c: Match | Range) -> bool:
    value = payload.get(c.field)
    if isinstance(c, Match):
        values = value if isinstance(value, list) else [value]
        hit = any(v in c.values for v in values)
        return hit != c.exclude
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return all(
        bound is None or test
        for bound, test in (
            (c.gt, c.gt is not None and value > c.gt),
            (c.gte, c.gte is not None and value >= c.gte),
            (c.lt, c.lt is not None and value < c.lt),
            (c.lte, c.lte is not None and value <= c.lte),
        )
    )
