"""Query text syntax and payload filters, parsed into typed parts.

Query syntax (after rclip): parts joined by ``+``; a part that names an image file or URL is an
image; ``N:part`` weights a part; ``-word`` pushes results away from a word; a ``"quoted
phrase"`` must appear, word for word, in the product's title or description. Examples::

    parse_query("red dress + ./photo.jpg")    # a text part and an image part
    parse_query("2:leather bag -striped")     # weighted text, negative term
    parse_query('"red leather" bag')          # only products whose text says "red leather"
Filters: ``category=shoe``, ``category=shoe,bag``, ``color!=red``, ``price<=40``, ``price>10``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shelfsight.search.errors import BadInputError
from shelfsight.search.images import is_url
from shelfsight.search.store.base import CollectionMeta, Condition, Filter, Match, Phrase, Range

_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(.+)$")
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")
_PHRASE = re.compile(r'"([^"]+)"')
_PATH_STARTS = ("./", "../", "/", "~/")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# How hard "-word" pushes away, relative to the positive text. Measured on the demo catalog (24
# queries like "yellow umbrella -striped"): at 1.0 only 39% of the top 10 kept the asked kind and
# colour (72% without the negative term); at 0.5, 64%, while 87% lacked the pattern (92% at 1.0).
NEGATIVE_WEIGHT = 0.5
# What one query may cost: every part (and every negative term) is one text to embed, about 20 ms
# each for ViT-B/32 on 2 cores, so 16 parts bound a query near a third of a second. 1,000
# characters hold any query a shopper types (CLIP reads only 77 tokens of each part anyway).
MAX_QUERY_PARTS = 16
MAX_QUERY_CHARS = 1000


@dataclass(frozen=True)
class ParsedQuery:
    """Weighted positive texts and image references, and negative texts."""

    texts: tuple[tuple[str, float], ...] = ()
    images: tuple[tuple[str, float], ...] = ()
    negatives: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    phrases: tuple[str, ...] = ()  # "quoted phrases" that must appear in the product's text

    @property
    def empty(self) -> bool:
        return not (self.texts or self.images)


def _names_image(part: str) -> bool:
    """Whether a part is written like an image reference: a URL, or one word that has an image
    suffix or starts like a path (``./``, ``../``, ``/``, ``~/``). "black/white" stays text."""
    word = part.strip()
    if is_url(word):
        return True
    return " " not in word and (word.lower().endswith(_IMAGE_SUFFIXES) or word.startswith(_PATH_STARTS))


def _looks_like_image(part: str, allow_paths: bool) -> bool:
    if is_url(part):
        return True
    if not _names_image(part):
        return False
    if not allow_paths:
        # Refused whether or not the file exists, so the answer reveals nothing about the disk.
        raise BadInputError(
            f"query part {part!r} names a local file, and this server does not read its own files; "
            "upload the image (POST /search/upload or image_base64) or give a public http(s) URL"
        )
    return True  # a path that does not exist is the engine's clear error, never silently text


def parse_query(text: str, *, allow_paths: bool = True) -> ParsedQuery:
    """Split rclip-style query text into weighted text parts, image parts and negative terms.

    ``allow_paths=False`` (the HTTP API) refuses parts that name local files instead of reading them.
    At most ``MAX_QUERY_CHARS`` characters and ``MAX_QUERY_PARTS`` parts and negative terms.
    """
    if len(text or "") > MAX_QUERY_CHARS:
        raise BadInputError(f"query is {len(text)} characters, over the {MAX_QUERY_CHARS}-character cap; shorten it")
    texts: list[tuple[str, float]] = []
    images: list[tuple[str, float]] = []
    negatives: list[tuple[str, float]] = []
    phrases: list[str] = []
    for raw in re.split(r"\s\+\s|^\+\s|\s\+$", text or ""):
        part = raw.strip()
        if not part:
            continue
        weight = 1.0
        m = _WEIGHT.match(part)
        if m:
            weight, part = _finite_weight(m.group(1), part), m.group(2).strip()
        if _looks_like_image(part, allow_paths):
            images.append((part, weight))
            continue
        phrases.extend(p.strip() for p in _PHRASE.findall(part) if p.strip())
        words = []
        for token in part.replace('"', " ").split():
            if token.startswith("-") and len(token) > 1:
                negatives.append((token[1:], NEGATIVE_WEIGHT))
            else:
                words.append(token)
        if words:
            texts.append((" ".join(words), weight))
    if len(texts) + len(images) + len(negatives) > MAX_QUERY_PARTS:
        raise BadInputError(
            f"query has {len(texts) + len(images) + len(negatives)} parts and negative terms, over the "
            f"cap of {MAX_QUERY_PARTS}; join words into fewer ' + ' parts"
        )
    return ParsedQuery(tuple(texts), tuple(images), tuple(negatives), tuple(phrases))


def _finite_weight(value: str, part: str) -> float:
    weight = float(value)
    if not math.isfinite(weight) or weight > 1000:
        raise BadInputError(f"weight in {part!r} must be a number from 0 to 1000")
    return weight


FilterSpec = str | Mapping[str, Any] | Condition
Filters = Sequence[FilterSpec] | Mapping[str, Any] | str | None


def parse_filters(filters: Filters, meta: CollectionMeta) -> Filter:
    """Typed, validated conditions from expressions (``price<=40``) or a mapping.

    Mapping form: ``{"category": "shoe", "color": ["red", "blue"], "price": {"lte": 40}}``.
    Unknown fields and wrong value types are errors that name the known fields.
    """
    if not filters:
        return ()
    items: list[Any]
    if isinstance(filters, str):
        items = [filters]
    elif isinstance(filters, Mapping):
        items = [{k: v} for k, v in filters.items()]
    else:
        items = list(filters)
    out: list[Match | Range | Phrase] = []
    for item in items:
        if isinstance(item, Match | Range):
            out.append(item)
        elif isinstance(item, str):
            out.append(_parse_expression(item))
        elif isinstance(item, Mapping):
            out.extend(_from_mapping(k, v) for k, v in item.items())
        else:
            raise BadInputError(f"cannot read filter {item!r}; write it like 'category=shoe' or 'price<=40'")
    return tuple(_check(c, meta) for c in out)


def _parse_expression(expr: str) -> Match | Range:
    m = _FILTER.match(expr)
    if not m or not m.group(3):
        raise BadInputError(
            f"cannot read filter {expr!r}; write it like 'category=shoe', 'category=shoe,bag' or 'price<=40'"
        )
    key, op, value = m.groups()
    if op in ("=", "!="):
        values = tuple(v.strip() for v in value.split(",") if v.strip())
        return Match(key, values, exclude=op == "!=")
    number = _number(key, value)
    bound = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[op]
    return Range(key, **{bound: number})


def _from_mapping(key: str, value: Any) -> Match | Range:
    if isinstance(value, Mapping):
        unknown = set(value) - {"gt", "gte", "lt", "lte"}
        if unknown:
            raise BadInputError(f"filter on {key!r}: unknown bounds {sorted(unknown)}; use gt, gte, lt, lte")
        return Range(key, **{k: _number(key, v) for k, v in value.items()})
    if isinstance(value, list | tuple | set):
        return Match(key, tuple(value))
    return Match(key, (value,))


def _number(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"filter on {key!r} needs a number, got {value!r}") from None
    if not math.isfinite(number):  # a NaN bound panics inside qdrant-edge
        raise BadInputError(f"filter on {key!r} needs a finite number, got {value!r}")
    return number


def _check(c: Match | Range | Phrase, meta: CollectionMeta) -> Condition:
    if isinstance(c, Phrase):
        unknown = [f for f in c.fields if f not in meta.text_fields]
        if unknown or not c.fields:
            indexed = ", ".join(meta.text_fields) or "none (rebuild with `shelfsight ingest CATALOG --reindex`)"
            raise BadInputError(f"phrase search needs full-text fields; this collection has: {indexed}")
        return c
    kind = meta.fields.get(c.field)
    if kind is None:
        known = ", ".join(sorted(meta.fields)) or "none"
        raise BadInputError(f"unknown filter field {c.field!r}; filterable fields: {known}")
    if isinstance(c, Range) and kind != "float":
        raise BadInputError(f"{c.field!r} holds text; filter it with = or != (e.g. {c.field}=value)")
    if isinstance(c, Range):
        for bound in (c.gt, c.gte, c.lt, c.lte):
            if bound is not None:
                _number(c.field, bound)
    if isinstance(c, Match):
        if not c.values:
            raise BadInputError(f"filter on {c.field!r} has no value")
        if kind == "float":
            if c.exclude or len(c.values) != 1:
                raise BadInputError(f"{c.field!r} is numeric; filter it with one '=' value or with <, <=, >, >=")
            v = _number(c.field, c.values[0])
            return Range(c.field, gte=v, lte=v)
        return Match(c.field, tuple(str(v) for v in c.values), c.exclude)
    return c
