"""The VectorStore protocol every backend implements, and the typed records it speaks.

A store holds collections of points: named float32 vectors (cosine) plus a payload. Filters are
our own small typed model (``Match``, ``Range``) that each backend translates, so the engine never
touches a backend's types. Every backend passes ``tests/unit/test_store_conformance.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SCHEMA_VERSION = 1
# Qdrant's BM25 as every collection made here uses it, for documents and queries alike. Product
# texts are short (a title, a sentence or two, a few fields): about 30 words, not BM25's 256.
BM25_SETTINGS: dict[str, Any] = {"language": "english", "avg_len": 32.0}


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: term ids and their weights (BM25 words)."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Match:
    """``field`` equals one of ``values`` (or none of them when ``exclude``)."""

    field: str
    values: tuple[Any, ...]
    exclude: bool = False


@dataclass(frozen=True)
class Range:
    """A numeric range on ``field``; unset bounds are open."""

    field: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Phrase:
    """The words of ``phrase``, in order, in at least one of ``fields`` (full-text indexed)."""

    phrase: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class HasId:
    """The point is one of ``ids`` (the engine's own lists: the cosines of a page's products)."""

    ids: tuple[str, ...]


Condition = Match | Range | Phrase | HasId
Filter = tuple[Condition, ...]  # all conditions must hold


BOOST_KINDS = ("match", "near", "more", "recent")


@dataclass(frozen=True)
class Boost:
    """A business signal added to relevance in the store's own formula: a boosted search scores
    ``score * (1 + sum(weight * signal))`` with each signal in [0, 1]. ``match``: 1 when ``field``
    equals ``value`` (in stock). ``near``: 1 when the number in ``field`` equals ``value``, 0.5 at
    ``scale`` from it (a price preference). ``more``: ``x / (x + scale)`` of the number in
    ``field`` (popularity). ``recent``: 1 for the date in ``field`` at ``value`` (ISO, now), 0.5
    ``scale`` seconds before it (recency decay)."""

    kind: str
    field: str
    weight: float
    value: Any = None
    scale: float = 1.0


@dataclass(frozen=True)
class Diversity:
    """Maximal marginal relevance over the candidates: each next result is the one most relevant
    to ``vector`` (in the product vector ``using``) and least like those already picked;
    ``diversity`` 0 keeps relevance order, 1 spreads results as far as they go."""

    vector: np.ndarray
    using: str
    diversity: float
    candidates: int


@dataclass(frozen=True)
class CollectionOptions:
    """How a collection is laid out, fixed when it is created and recorded in its metadata.

    ``shards``, ``replication_factor`` and ``write_consistency`` matter on a Qdrant cluster only;
    the embedded store has one local shard and says it ignores them (``ignored_by_edge``).
    ``on_disk_vectors``/``on_disk_payload`` keep originals on disk (memory-mapped);
    ``quantization="int8"`` adds scalar int8 copies searched first, then ``rescore`` re-ranks the
    candidates with the original vectors, ``oversampling`` times as many as asked for. ``hnsw_m``
    and ``hnsw_ef_construct`` shape the HNSW graph, ``hnsw_payload_m`` the links it adds for the
    points of each indexed payload value; ``hnsw_ef`` is how wide each search looks. None or False
    leaves the default (the engine's; ``hnsw_ef``'s is measured, in ``options``).
    """

    shards: int | None = None
    replication_factor: int | None = None
    write_consistency: int | None = None
    on_disk_vectors: bool = False
    on_disk_payload: bool = False
    quantization: str | None = None
    rescore: bool = True
    hnsw_m: int | None = None  # graph links per point (engine default 16)
    hnsw_ef_construct: int | None = None  # candidates weighed while building the graph (default 100)
    hnsw_payload_m: int | None = None  # links per point among those sharing a payload value (default m)
    hnsw_ef: int | None = None  # candidates weighed per search (default options.DEFAULT_HNSW_EF)
    oversampling: float | None = None  # with quantization: candidates rescored per result wanted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


CLUSTER_ONLY_OPTIONS = ("shards", "replication_factor", "write_consistency")


def ignored_by_edge(options: CollectionOptions) -> list[str]:
    """The options set here that the embedded store (one local shard) cannot apply."""
    return [name for name in CLUSTER_ONLY_OPTIONS if getattr(options, name) is not None]


@dataclass(frozen=True)
class CollectionMeta:
    """What a collection records about itself, so it is never searched in another space.

    ``fields`` maps each filterable payload field to ``"keyword"`` or ``"float"``.
    ``fused_weight`` is the image share A of the early-fused vector, None when absent.
    ``derived`` names payload fields computed from the vectors (zero-shot tags): a re-ingest of an
    unchanged product keeps them, where it replaces the fields the catalog owns.
    ``sparse_vectors`` names the sparse vectors (``bm25``, the product's words, made with
    ``bm25``'s settings); ``text_fields`` have full-text indexes for quoted phrases;
    ``vocabulary`` counts the products holding each word (typo correction); ``field_values`` lists
    the values of keyword fields with few of them (brands, colours), which a query can name;
    ``relevance_floor`` is
    the best-hit cosine below which a text query has no close match. Collections made before
    these existed read as empty values here, and searches that need them say to ``--reindex``.
    """

    model: str
    dimension: int
    model_source: str = ""  # the name or directory to load the model from
    vectors: tuple[str, ...] = ("image", "text")
    fields: dict[str, str] = field(default_factory=dict)
    fused_weight: float | None = None
    schema_version: int = SCHEMA_VERSION
    derived: tuple[str, ...] = ()
    options: CollectionOptions = field(default_factory=CollectionOptions)
    sparse_vectors: tuple[str, ...] = ("bm25",)
    bm25: dict[str, Any] = field(default_factory=lambda: dict(BM25_SETTINGS))
    text_fields: tuple[str, ...] = ("title", "description")
    vocabulary: dict[str, int] = field(default_factory=dict)
    field_values: dict[str, list[str]] = field(default_factory=dict)
    relevance_floor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dimension": self.dimension,
            "model_source": self.model_source,
            "vectors": list(self.vectors),
            "fields": dict(self.fields),
            "fused_weight": self.fused_weight,
            "schema_version": self.schema_version,
            "derived": list(self.derived),
            "options": self.options.to_dict(),
            "sparse_vectors": list(self.sparse_vectors),
            "bm25": dict(self.bm25),
            "text_fields": list(self.text_fields),
            "vocabulary": dict(self.vocabulary),
            "field_values": {k: list(v) for k, v in self.field_values.items()},
            "relevance_floor": self.relevance_floor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionMeta:
        return cls(
            model=data["model"],
            dimension=int(data["dimension"]),
            model_source=data.get("model_source", ""),
            vectors=tuple(data.get("vectors", ("image", "text"))),
            fields=dict(data.get("fields", {})),
            fused_weight=data.get("fused_weight"),
            schema_version=int(data.get("schema_version", 0)),
            derived=tuple(data.get("derived", ())),
            options=CollectionOptions.from_dict(data.get("options") or {}),
            sparse_vectors=tuple(data.get("sparse_vectors", ())),
            bm25=dict(data.get("bm25") or BM25_SETTINGS),
            text_fields=tuple(data.get("text_fields", ())),
            vocabulary=dict(data.get("vocabulary") or {}),
            field_values={k: list(v) for k, v in (data.get("field_values") or {}).items()},
            relevance_floor=data.get("relevance_floor"),
        )


@dataclass(frozen=True)
class PointRecord:
    """A point to write: its id (UUID string), named vectors and payload; ``words``, its BM25
    words when they were made already (the ingest's read workers make them), else the store makes
    them from the payload."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]
    words: Sparse | None = None


@dataclass(frozen=True)
class StoredPoint:
    """A point read back; ``score`` is set for query results, ``vectors`` only when asked for."""

    id: str
    payload: dict[str, Any]
    score: float = 0.0
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class NearestQuery:
    """One ranked list: the points nearest to ``vector`` in the named vector ``using`` (a dense
    vector, or a ``Sparse`` one for a sparse vector such as ``bm25``)."""

    vector: np.ndarray | Sparse
    using: str
    limit: int
    score_threshold: float | None = None
    filter: Filter = ()  # this list's own conditions, on top of the request's


class VectorStore(Protocol):
    """What the engine and the ingest pipeline need from a vector database."""

    def collection_exists(self, name: str) -> bool: ...

    def create_collection(self, name: str, meta: CollectionMeta) -> None: ...

    def drop_collection(self, name: str) -> None: ...

    @property
    def shared_meta(self) -> bool:
        """Whether other processes may change a collection's metadata (a server's clients rebuilding it)."""
        ...

    def get_meta(self, name: str) -> CollectionMeta:
        """Raises CollectionNotFoundError when the collection does not exist."""
        ...

    def reread_meta(self, name: str) -> CollectionMeta:
        """The metadata as stored now, not as this store last read it."""
        ...

    def set_meta(self, name: str, meta: CollectionMeta) -> None:
        """Replace the metadata, creating payload indexes for fields new to it."""
        ...

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None: ...

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None:
        """Set payload fields of existing points: ``payloads`` maps a point id to its fields.

        Merges into each point's payload, or replaces it whole when ``overwrite``; vectors stay.
        ``store.set_payload("products", {pid: {"tags": ["red"]}})``
        """
        ...

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]: ...

    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    def count(self, name: str, filter: Filter = ()) -> int: ...

    def scroll(
        self, name: str, filter: Filter = (), batch_size: int = 256, with_vectors: bool = False
    ) -> Iterator[StoredPoint]: ...

    def ids(self, name: str) -> list[str]:
        """Every point's id."""
        ...

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
        """Run each nearest list and, when ``fusion`` = (``"rrf"`` | ``"dbsf"``, weights) is
        given, the engine's fusion of them (``limit``/``offset`` apply to it) in one round trip.
        ``boosts`` rescore the fused list (or the one list) with the store's formula; ``diversity``
        reorders it by maximal marginal relevance (one or the other).
        ``exact`` scans every point instead of asking the index (verification, not serving).
        ``with_payload=False`` returns the nearest lists as ids and scores only (the final list
        always carries payloads). Returns (one result list per query, final list or None)."""
        ...

    def facet(self, name: str, field: str, filter: Filter = (), limit: int = 50) -> list[tuple[Any, int]]:
        """(value, count) pairs of a keyword field among the points matching ``filter``."""
        ...

    def optimize(self, name: str) -> None:
        """Build indexes; belongs at the end of an ingest, never on a request path."""
        ...

    def close(self) -> None: ...
