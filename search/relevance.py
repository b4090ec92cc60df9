"""Knowing when nothing matches, and the words typos are corrected to: both learnt at ingest.

CLIP ranks every product against any text, "zzzz qqq" included, so a search always has a best
hit. Two things tell a match from noise: whether any product shares a word with the query (BM25
finds something), and how close the best hit is. After an ingest this module asks the
collection made-up words (random letters, shuffled catalog words) and records the cosine that
99% of their best hits stay under as the collection's ``relevance_floor``. A text query that
shares no word with any product and whose best text cosine is under the floor gets "no close
matches" instead of noise. (Measured with the demo model, real queries' best cosines overlap
made-up ones', so the cosine alone could not decide: the words do most of the work.) The same
pass records the vocabulary that typo correction uses, and the values of keyword fields a query
can name ("Kestrel", "red").

Example::

    meta = calibrate(store, embedder, "products")
    print(meta.relevance_floor, len(meta.vocabulary))
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
from shelfsight.search.lexical import correct_words, product_words, vocabulary, word_fields
from shelfsight.search.store.base import CollectionMeta, Filter, NearestQuery, StoredPoint

# A keyword field with more values than this (ids, SKUs, free text) is not matched against queries.
MAX_NAMEABLE_VALUES = 200
# A field whose values, searched as text, find products with them less often than this is one the
# model cannot read. Measured on the demo model and catalog: category 1.00, colour 0.97, pattern
# 0.73, type 0.49 (a search for "mug" finds mugs and cups alike, which is right), brand 0.20.
UNREAD_PRECISION = 0.3
# Queries of each kind asked during calibration, and the seed that draws them.
CALIBRATION_QUERIES = 256
_SEED = 20261126
# The share of made-up queries the floor rejects. It decides only for queries that share no word
# with any product: a query with a catalog word (after typo correction) always gets its hits. At
# 64 queries and 95% the floor moved between demo models (30 made-up eval queries: 97% and 83%
# answered "no close matches"); 256 and 99% held the second model at 97%.
NONSENSE_REJECTED = 0.99


class TextEncoder(Protocol):
    """What embeds calibration's query texts: an ``Embedder``, or the int8 text tower
    (``text_int8.Int8TextEncoder``) that an ingest on a CPU ran its product texts through, as
    ``serve`` on such a CPU runs query texts (ViT-B/32 shape, 2 cores: 256 made-up queries 0.37 s
    in int8 against 0.61 s in bf16, and about 2 s in fp32 on a CPU without native bf16)."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class CalibratedStore(Protocol):
    """What calibration asks of a store: a ``VectorStore``, or the process an ingest's embedded
    collection is held in until the ingest ends (``ingest/write_process.py``)."""

    def get_meta(self, name: str) -> CollectionMeta: ...

    def set_meta(self, name: str, meta: CollectionMeta) -> None: ...

    def count(self, name: str, filter: Filter = ()) -> int: ...

    def scroll(
        self, name: str, filter: Filter = (), batch_size: int = 256, with_vectors: bool = False
    ) -> Iterator[StoredPoint]: ...

    def query(
        self, name: str, lists: Sequence[NearestQuery], filter: Filter = ()
    ) -> tuple[list[list[StoredPoint]], list[StoredPoint] | None]: ...

    def facet(self, name: str, field: str, filter: Filter = (), limit: int = 50) -> list[tuple[Any, int]]: ...


def calibrate(
    store: CalibratedStore, embedder: TextEncoder, collection: str, vocab: dict[str, int] | None = None
) -> CollectionMeta:
    """Record the collection's vocabulary and relevance floor in its metadata, and return it.
    ``vocab``: the collection's ``collection_vocabulary``, when the caller had it made where the
    store is (an ingest's write process); made here otherwise."""
    meta = store.get_meta(collection)
    if vocab is None:
        vocab = collection_vocabulary(store, collection)
    rng = random.Random(_SEED)
    floor = None
    if "text" in meta.vectors and store.count(collection):
        nonsense = made_up_queries(rng, vocab, CALIBRATION_QUERIES)
        floor = choose_floor(best_cosines(store, embedder, collection, meta, nonsense))
    meta = replace(
        meta, vocabulary=vocab, field_values=nameable_values(store, embedder, collection, meta), relevance_floor=floor
    )
    store.set_meta(collection, meta)
    return meta


def collection_vocabulary(store: CalibratedStore, collection: str) -> dict[str, int]:
    """The words of the collection's products (``lexical.vocabulary``), streamed: one page of
    payloads at a time, never every product's words at once."""
    meta = store.get_meta(collection)
    return vocabulary(product_words(p.payload, meta) for p in store.scroll(collection))


def nameable_values(
    store: CalibratedStore, embedder: TextEncoder, collection: str, meta: CollectionMeta
) -> dict[str, list[str]]:
    """Values of the keyword fields a query can name and the model cannot read: a query naming
    one ("Kestrel mug") is also searched among the products that have it. A field qualifies when
    it has few values (brands, not ids) and searching its values as text finds products with them
    less than ``UNREAD_PRECISION`` of the time (CLIP knows "red" and "mug", not a shop's brands)."""
    out = {}
    for name in word_fields(meta):
        counts = store.facet(collection, name, limit=MAX_NAMEABLE_VALUES + 1)
        values = sorted(str(v) for v, _ in counts if isinstance(v, str) and v.strip())
        if (
            values
            and len(counts) <= MAX_NAMEABLE_VALUES
            and _text_precision(store, embedder, collection, name, values) < UNREAD_PRECISION
        ):
            out[name] = values
    return out


def _text_precision(
    store: CalibratedStore, embedder: TextEncoder, collection: str, name: str, values: list[str]
) -> float:
    """How often a search for a value's text, by the text vector, returns products with that value
    (mean share of the top 10, over up to 20 values)."""
    sample = values[:: max(1, len(values) // 20)]
    results, _ = store.query(collection, [NearestQuery(v, "text", 10) for v in embedder.encode_texts(sample)])
    shares = [
        np.mean([p.payload.get(name) == value for p in hits]) if hits else 0.0 for value, hits in zip(sample, results)
    ]
    return float(np.mean(shares))


def made_up_queries(rng: random.Random, vocab: dict[str, int], n: int) -> list[str]:
    """Two-word queries of random letters or shuffled catalog words, none of which a typo
    correction would turn into a catalog word."""
    known = sorted(w for w in vocab if len(w) > 3 and w.isalpha())
    out: list[str] = []
    while len(out) < n:
        pair = [_made_up_word(rng, known) for _ in range(2)]
        query = " ".join(pair)
        if not any(w in vocab for w in pair) and correct_words(query, vocab) is None:
            out.append(query)
    return out


def _made_up_word(rng: random.Random, known: Sequence[str]) -> str:
    if known and rng.random() < 0.5:
        letters = list(rng.choice(known))
        rng.shuffle(letters)
        return "".join(letters)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 8)))


def best_cosines(
    store: CalibratedStore, embedder: TextEncoder, collection: str, meta: CollectionMeta, queries: Sequence[str]
) -> list[float]:
    """For each query, its best cosine against the products' text and image vectors."""
    if not queries:
        return []
    vectors = embedder.encode_texts(list(queries))
    using = [v for v in ("text", "image") if v in meta.vectors]
    results, _ = store.query(collection, [NearestQuery(vector, v, 1) for vector in vectors for v in using])
    per_query = [results[i : i + len(using)] for i in range(0, len(results), len(using))]
    return [max((r[0].score for r in lists if r), default=-1.0) for lists in per_query]


def choose_floor(nonsense: Sequence[float]) -> float | None:
    """The cosine that most made-up queries' best hits stay under."""
    if not nonsense:
        return None
    return round(float(np.quantile(nonsense, NONSENSE_REJECTED)), 4)
