"""Shop boosts: business signals added to relevance, written as short specs.

Each spec names a payload field and a weight; the store's formula scores a hit
``relevance * (1 + sum(weight * signal))`` with every signal in [0, 1], so a boost lifts a result
in proportion to how relevant it already is and never drags an unrelated product to the top.

=====================  ==================================================================
``stock=in:0.5``       in stock first: signal 1 when the keyword field equals the value
``price~40:0.3``       a price preference: 1 at 40, 0.5 at 40 ± 20 (``price~40/10`` sets the 10)
``popularity^100:0.2`` more is better: ``x / (x + 100)`` of the number in the field
``added@30:0.3``       recency: 1 for a date of now, 0.5 for one 30 days old (ISO dates)
=====================  ==================================================================

The weight after ``:`` is optional (1). ``signal`` recomputes a boost's signal from a payload, so
explanations show each boost's share of the score exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from shelfsight.search.errors import BadInputError
from shelfsight.search.store.base import Boost, CollectionMeta

MAX_BOOSTS = 8
_SPEC = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(=|~|\^|@)\s*([^:]+?)\s*(?::\s*([0-9.]+))?\s*$")
_DAY = 86_400.0
EXAMPLES = "stock=in:0.5, price~40:0.3, popularity^100:0.2, added@30:0.3"


def parse_boosts(specs: Sequence[str], meta: CollectionMeta, now: datetime | None = None) -> tuple[Boost, ...]:
    """Typed boosts from specs, checked against the collection's fields."""
    if len(specs) > MAX_BOOSTS:
        raise BadInputError(f"at most {MAX_BOOSTS} boosts, got {len(specs)}")
    now = now or datetime.now(timezone.utc)
    return tuple(_parse(spec, meta, now) for spec in specs)


def _parse(spec: str, meta: CollectionMeta, now: datetime) -> Boost:
    m = _SPEC.match(spec or "")
    if not m:
        raise BadInputError(
            f"bad boost {spec!r}; write FIELD=VALUE, FIELD~TARGET, FIELD^SCALE or FIELD@DAYS, e.g. {EXAMPLES}"
        )
    field, op, arg, weight_text = m.groups()
    weight = _number(weight_text or "1", spec)
    if not 0 < weight <= 100:
        raise BadInputError(f"boost {spec!r}: the weight after ':' must be above 0 and at most 100")
    if op == "@":
        return Boost("recent", field, weight, now.strftime("%Y-%m-%dT%H:%M:%SZ"), _positive(arg, spec) * _DAY)
    kind = meta.fields.get(field)
    if op == "=":
        if kind != "keyword":
            raise BadInputError(f"boost {spec!r}: {field!r} is not a keyword field ({_fields(meta, 'keyword')})")
        return Boost("match", field, weight, arg)
    if kind != "float":
        raise BadInputError(f"boost {spec!r}: {field!r} is not a numeric field ({_fields(meta, 'float')})")
    if op == "^":
        return Boost("more", field, weight, None, _positive(arg, spec))
    target, _, scale = arg.partition("/")
    value = _number(target, spec)
    return Boost("near", field, weight, value, _positive(scale, spec) if scale else max(abs(value) / 2, 1.0))


def _fields(meta: CollectionMeta, kind: str) -> str:
    names = sorted(f for f, k in meta.fields.items() if k == kind)
    return f"{kind} fields: {', '.join(names) or 'none'}"


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(f"boost {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadInputError(f"boost {spec!r}: {text!r} is not a finite number")
    return value


def _positive(text: str, spec: str) -> float:
    value = _number(text, spec)
    if value <= 0:
        raise BadInputError(f"boost {spec!r}: the scale must be above 0")
    return value


def label(boost: Boost) -> str:
    return f"boost:{boost.field}"


def signal(boost: Boost, payload: Mapping[str, Any]) -> float:
    """The boost's signal for one product, as the store's formula computes it."""
    value = payload.get(boost.field)
    if boost.kind == "match":
        values = value if isinstance(value, list) else [value]
        return float(boost.value in values)
    if boost.kind == "recent":
        return _recency(value, str(boost.value), boost.scale)
    x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
    if boost.kind == "more":
        return x / (x + boost.scale) if x + boost.scale else 0.0
    return math.exp(math.log(0.5) * ((x - float(boost.value)) / boost.scale) ** 2)


def _recency(value: Any, now: str, scale: float) -> float:
    try:
        then = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    age = abs((datetime.fromisoformat(now.replace("Z", "+00:00")) - then).total_seconds())
    return math.exp(math.log(0.5) * age / scale)
