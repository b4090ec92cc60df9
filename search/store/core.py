"""The request logic both Qdrant backends share, written once.

qdrant-edge-py and qdrant-client speak one query model through different classes, so
``QdrantStore`` builds every filter, query, scroll and upsert here and asks a backend only for
what differs (the shape of qdrant-client's ``QdrantBase``, one interface over a local and a remote
implementation): a ``Dialect`` that spells the parts of a request in the client's types, and the
calls that move points (``_write_points``, ``_query_batch``, ``_scroll_page``).

Example, a backend::

    class MyStore(QdrantStore):
        dialect = Dialect(match_value=..., ..., dbsf=...)

        def get_meta(self, name): ...
        def _write_points(self, name, points): ...
        def _query_batch(self, name, requests): ...
        def _scroll_page(self, name, filter, limit, offset, with_vectors, with_payload=True): ...
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar, TypeVar

import numpy as np
from shelfsight.search.errors import BadInputError
from shelfsight.search.fusion import RRF_K
from shelfsight.search.lexical import BM25, bm25_document, product_words
from shelfsight.search.store.base import (
    Boost,
    CollectionMeta,
    CollectionOptions,
    Diversity,
    Filter,
    HasId,
    Match,
    NearestQuery,
    Phrase,
    PointRecord,
    Range,
    Sparse,
    StoredPoint,
)
from shelfsight.search.store.options import EXACT_FILTER_MAX_POINTS, EXACT_FILTER_MAX_SHARE
from shelfsight.search.store.validate import check_vectors

# How long a collection's point count (for the default search width) is taken as it was.
SIZE_TTL_S = 30.0
# Ids a page when only ids are read (``ids``): no payloads, so a page costs little memory.
IDS_PAGE = 4096
T = TypeVar("T")


@dataclass(frozen=True)
class Dialect:
    """How one client library spells each part of a request (its types take these keywords)."""

    match_value: Callable[[Any], Any]
    match_any: Callable[[list[Any]], Any]
    range: Callable[..., Any]  # gt=, gte=, lt=, lte=
    field_condition: Callable[..., Any]  # key=, and match= or range=
    filter: Callable[..., Any]  # must=, must_not=
    point: Callable[..., Any]  # id=, vector=, payload=
    nearest: Callable[[list[float], str], dict[str, Any]]  # the request keywords naming a nearest query
    request: Callable[..., Any]  # a query request
    prefetch: Callable[..., Any]  # one prefetch of a fused request
    prefetches: str  # the request keyword that takes the prefetches
    rrf: Callable[[int, list[float]], Any]  # (k, weights)
    dbsf: Callable[[], Any]
    sparse: Callable[[list[int], list[float]], Any]  # (indices, values)
    match_phrase: Callable[[str], Any]
    has_id: Callable[[list[str]], Any]  # the point is one of these ids
    formula: Callable[[list[Boost]], Any]  # score * (1 + sum of weighted signals)
    mmr: Callable[[list[float], str, float, int], dict[str, Any]]  # (vector, using, diversity, candidates)


def follow_pages(page: Callable[[Any], tuple[list[T], Any]]) -> Iterator[T]:
    """Every item of a scroll, page by page: ``page(offset)`` returns a page's items (points, or
    ids) and the next page's offset (None after the last), as ``QdrantStore.scroll_page`` does."""
    offset = None
    while True:
        items, offset = page(offset)
        yield from items
        if offset is None:
            return


def to_stored(point: Any, with_vectors: bool) -> StoredPoint:
    """A client's record or scored point as ours; ids become strings (qdrant-edge returns UUIDs)."""
    vectors = {}
    if with_vectors and isinstance(point.vector, dict):  # dense vectors only: sparse ones are words
        vectors = {k: np.asarray(v, dtype=np.float32) for k, v in point.vector.items() if isinstance(v, list)}
    return StoredPoint(
        id=str(point.id),
        payload=dict(point.payload or {}),
        score=float(getattr(point, "score", 0.0) or 0.0),
        vectors=vectors,
    )


def _as_lists(vectors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v, dtype=np.float32).tolist() for k, v in vectors.items()}


class QdrantStore(ABC):
    """Filters, queries, scrolls and upserts built once; subclasses supply the client's calls."""

    dialect: ClassVar[Dialect]
    # Options for collections this store creates when their metadata brings none (set by the CLI).
    default_options: CollectionOptions = CollectionOptions()

    def with_options(self, meta: CollectionMeta) -> CollectionMeta:
        """``meta`` with this store's default options when it carries none of its own."""
        return meta if meta.options != CollectionOptions() else replace(meta, options=self.default_options)

    # Whether other processes may change a collection's metadata: engines then read it again now
    # and then (``SearchEngine.meta``). One process owns an embedded store; a server has many clients.
    shared_meta: ClassVar[bool] = False
    _metas: dict[str, CollectionMeta]
    _sizes: dict[str, tuple[int, float]]  # collection -> (points, when counted), for ``_size``

    @abstractmethod
    def get_meta(self, name: str) -> CollectionMeta:
        """Raises CollectionNotFoundError when the collection does not exist."""

    def reread_meta(self, name: str) -> CollectionMeta:
        self._metas.pop(name, None)
        return self.get_meta(name)

    @abstractmethod
    def _write_points(self, name: str, points: list[Any]) -> None:
        """Upsert points made by ``dialect.point``."""

    @abstractmethod
    def _query_batch(self, name: str, requests: list[Any]) -> list[list[Any]]:
        """Run the requests in one round trip: one list of scored points per request."""

    @abstractmethod
    def _scroll_page(
        self, name: str, filter: Any, limit: int, offset: Any, with_vectors: bool, with_payload: bool = True
    ) -> tuple[list[Any], Any]:
        """The records from ``offset`` on, and the next page's offset (None after the last)."""

    def _search_params(self, filter: Filter, options: CollectionOptions, points: Callable[[], int]) -> Any:
        """Search parameters of the nearest lists under ``filter`` in a collection laid out with
        ``options`` that holds ``points()`` points (asked only when the width depends on it); None
        keeps the engine's defaults."""
        return None

    def _scan_limit(self, name: str) -> int:
        """The most points a filter may pass for its lists to scan them exactly, not search HNSW."""
        return max(EXACT_FILTER_MAX_POINTS, int(EXACT_FILTER_MAX_SHARE * self._size(name)))

    def _size(self, name: str) -> int:
        """About how many points the collection holds (the index's estimate), asked again after
        ``SIZE_TTL_S``: the default search width grows with it."""
        now = time.monotonic()
        if name not in self._sizes or now - self._sizes[name][1] > SIZE_TTL_S:
            self._sizes[name] = (self._estimate(name, None), now)
        return self._sizes[name][0]

    @abstractmethod
    def _exact_params(self) -> Any:
        """Search parameters for an exact (brute-force) search over the original vectors, which
        neither an index nor quantization approximates."""

    def _filter(self, conditions: Filter) -> Any:
        """Our conditions in the client's filter type; None when there are none."""
        if not conditions:
            return None
        d = self.dialect
        must: list[Any] = []
        must_not: list[Any] = []
        for c in conditions:
            if isinstance(c, Match):
                values = list(c.values)
                match = d.match_value(values[0]) if len(values) == 1 else d.match_any(values)
                (must_not if c.exclude else must).append(d.field_condition(key=c.field, match=match))
            elif isinstance(c, Range):
                rng = d.range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)
                must.append(d.field_condition(key=c.field, range=rng))
            elif isinstance(c, HasId):
                must.append(d.has_id(list(c.ids)))
            elif isinstance(c, Phrase):  # in any of the fields: a nested filter of alternatives
                either = [d.field_condition(key=f, match=d.match_phrase(c.phrase)) for f in c.fields]
                must.append(d.filter(should=either))
            else:
                raise BadInputError(f"unsupported filter condition {c!r}")
        return d.filter(must=must or None, must_not=must_not or None)

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        meta = self.get_meta(name)
        for p in points:  # all checked before any is written: the engine would write up to a bad one
            check_vectors(p.id, p.vectors, meta)
        made = [self.dialect.point(id=p.id, vector=self._vectors(p, meta), payload=p.payload) for p in points]
        self._write_points(name, made)

    def _vectors(self, point: PointRecord, meta: CollectionMeta) -> dict[str, Any]:
        """The point's dense vectors, and its BM25 words when the collection has them."""
        vectors = _as_lists(point.vectors)
        if BM25 in meta.sparse_vectors:
            words = point.words
            if words is None:
                words = bm25_document(product_words(point.payload, meta), meta.bm25)
            vectors[BM25] = self.dialect.sparse(list(words.indices), list(words.values))
        return vectors

    def _query_vector(self, query: NearestQuery, meta: CollectionMeta) -> Any:
        if isinstance(query.vector, Sparse):
            if query.using not in meta.sparse_vectors:
                raise BadInputError(f"the collection has no sparse vector {query.using!r}")
            return self.dialect.sparse(list(query.vector.indices), list(query.vector.values))
        check_vectors("query", {query.using: query.vector}, meta)
        return np.asarray(query.vector, dtype=np.float32).tolist()

    def scroll(
        self, name: str, filter: Filter = (), batch_size: int = 256, with_vectors: bool = False
    ) -> Iterator[StoredPoint]:
        yield from follow_pages(lambda offset: self.scroll_page(name, filter, batch_size, offset, with_vectors))

    def ids(self, name: str) -> list[str]:
        """Every point's id (what an ingest's pruning compares with its catalog), read in large
        pages without payloads: 100,000 products in 0.21 s on 2 cores, against 0.63-1.27 s
        through ``scroll`` (payloads, pages of 256)."""
        self.get_meta(name)

        def page(offset: Any) -> tuple[list[str], Any]:  # ids as they come: no StoredPoint (twice the time)
            records, after = self._scroll_page(name, None, IDS_PAGE, offset, False, with_payload=False)
            return [str(r.id) for r in records], (after if records else None)

        return list(follow_pages(page))

    def scroll_page(
        self, name: str, filter: Filter = (), limit: int = 256, offset: Any = None, with_vectors: bool = False
    ) -> tuple[list[StoredPoint], Any]:
        """One page of ``scroll``: up to ``limit`` points from ``offset`` (None: the first), and
        the offset of the next page (None after the last)."""
        self.get_meta(name)
        records, after = self._scroll_page(name, self._filter(filter), limit, offset, with_vectors)
        return [to_stored(r, with_vectors) for r in records], (after if records else None)

    def query(
        self,
        name: str,
        lists: Sequence[NearestQuery],
        filter: Filter = (),
        fusion: tuple[str, Sequence[float]] | None = None,
        limit: int = 10,
        offset: int = 0,
        exact: bool = False,
        boosts: Sequence[Boost] = (),
        diversity: Diversity | None = None,
        with_payload: bool = True,
    ) -> tuple[list[list[StoredPoint]], list[StoredPoint] | None]:
        """Each nearest list and, with ``fusion``, the engine's fusion of them, in one batch;
        ``boosts`` or ``diversity`` rescore that (or the one list) as a last stage; ``exact`` scans
        every point instead of asking an index (for checks, not for serving). ``with_payload=False``
        leaves payloads off the nearest lists (the final list always has them)."""
        meta = self.get_meta(name)
        nearest = self._nearest(name, lists, filter, meta, exact)
        d = self.dialect
        requests = [d.request(**n, with_vector=False, with_payload=with_payload) for n in nearest]
        page = {"limit": limit, "offset": offset or None, "filter": self._filter(filter)}
        final = None
        if fusion is not None:
            method, weights = fusion
            final = {d.prefetches: [d.prefetch(**n) for n in nearest]}
            final["query"] = d.rrf(RRF_K, list(weights)) if method == "rrf" else d.dbsf()
        if boosts or diversity is not None:
            depth = max(q.limit for q in lists)
            inner = d.prefetch(**final, limit=depth) if final else d.prefetch(**nearest[0])
            final = {d.prefetches: [inner], **self._last_stage(boosts, diversity)}
        if final is not None:
            requests.append(d.request(**final, **page, with_vector=False, with_payload=True))
        lean = not with_payload  # ids and scores only: the common case, kept cheap
        batch = self._query_batch(name, requests)
        results = [
            [
                StoredPoint(str(p.id), {}, float(p.score)) if lean and i < len(nearest) else to_stored(p, False)
                for p in r
            ]
            for i, r in enumerate(batch)
        ]
        if final is not None:
            return results[:-1], results[-1]
        return results, None

    def _nearest(
        self, name: str, lists: Sequence[NearestQuery], filter: Filter, meta: CollectionMeta, exact: bool
    ) -> list[dict[str, Any]]:
        """Each list's request keywords: its vector, depth, floor, filter and search parameters."""
        vectors = [self._query_vector(q, meta) for q in lists]
        converted: dict[Filter, Any] = {}  # each distinct filter converted and decided once
        params: dict[Filter, Any] = {}
        for q in lists:
            f = filter + q.filter
            if f not in params:
                converted[f] = self._filter(f)
                scan = exact or (bool(f) and self._estimate(name, converted[f]) <= self._scan_limit(name))
                params[f] = (
                    self._exact_params() if scan else self._search_params(f, meta.options, partial(self._size, name))
                )
        return [
            self.dialect.nearest(vector, q.using)
            | {
                "limit": q.limit,
                "score_threshold": q.score_threshold,
                "filter": converted[filter + q.filter],
                "params": params[filter + q.filter],
            }
            for q, vector in zip(lists, vectors)
        ]

    @abstractmethod
    def _estimate(self, name: str, client_filter: Any) -> int:
        """About how many points pass ``client_filter`` (already in the client's type; the payload
        indexes' estimate)."""

    def _last_stage(self, boosts: Sequence[Boost], diversity: Diversity | None) -> dict[str, Any]:
        if boosts and diversity is not None:
            raise BadInputError("boost and diversity together are not supported; choose one")
        if diversity is not None:
            vector = np.asarray(diversity.vector, dtype=np.float32).tolist()
            return self.dialect.mmr(vector, diversity.using, diversity.diversity, diversity.candidates)
        return {"query": self.dialect.formula(list(boosts))}
