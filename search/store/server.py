"""The scale-out backend: qdrant-client talking to a Qdrant server or cluster.

Also runs against qdrant-client's local mode (``QdrantClient(path=...)``), which is how the
conformance tests exercise it where no server runs. Collection metadata lives in the
collection's own ``metadata`` so every client of the server sees the same model record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from shelfsight.search.errors import BadInputError, CollectionNotFoundError, StoreUnavailableError
from shelfsight.search.fusion import RRF_K
from shelfsight.search.store.base import (
    CollectionMeta,
    Filter,
    Match,
    NearestQuery,
    PointRecord,
    Range,
    StoredPoint,
)
from shelfsight.search.store.validate import check_collection_name, check_vectors

_INDEX_TYPES = {"keyword": qm.PayloadSchemaType.KEYWORD, "float": qm.PayloadSchemaType.FLOAT}
_META_KEY = "shelfsight"


def _server_filter(conditions: Filter) -> qm.Filter | None:
    if not conditions:
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for c in conditions:
        if isinstance(c, Match):
            values = list(c.values)
            match = qm.MatchValue(value=values[0]) if len(values) == 1 else qm.MatchAny(any=values)
            (must_not if c.exclude else must).append(qm.FieldCondition(key=c.field, match=match))
        elif isinstance(c, Range):
            must.append(qm.FieldCondition(key=c.field, range=qm.Range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)))
        else:
            raise BadInputError(f"unsupported filter condition {c!r}")
    return qm.Filter(must=must or None, must_not=must_not or None)


def _to_stored(point: Any, with_vectors: bool) -> StoredPoint:
    vectors = {}
    if with_vectors and isinstance(point.vector, dict):
        vectors = {k: np.asarray(v, dtype=np.float32) for k, v in point.vector.items()}
    return StoredPoint(
        id=str(point.id),
        payload=dict(point.payload or {}),
        score=float(getattr(point, "score", 0.0) or 0.0),
        vectors=vectors,
    )


class ServerStore:
    """Collections on a Qdrant server (or in qdrant-client's local mode)."""

    def __init__(self, client: QdrantClient):
        self.client = client
        self._metas: dict[str, CollectionMeta] = {}

    @classmethod
    def connect(cls, url: str, api_key: str | None = None) -> ServerStore:
        try:
            client = QdrantClient(url=url, api_key=api_key, timeout=30)
            client.get_collections()
        except Exception as exc:
            raise StoreUnavailableError(f"cannot reach the Qdrant server at {url}: {exc}; is it running?") from exc
        return cls(client)

    def collection_exists(self, name: str) -> bool:
        check_collection_name(name)
        return self.client.collection_exists(name)

    def create_collection(self, name: str, meta: CollectionMeta) -> None:
        if self.collection_exists(name):
            raise BadInputError(f"collection {name!r} already exists")
        params = {v: qm.VectorParams(size=meta.dimension, distance=qm.Distance.COSINE) for v in meta.vectors}
        self.client.create_collection(name, vectors_config=params, metadata={_META_KEY: meta.to_dict()})
        for field, kind in meta.fields.items():
            self.client.create_payload_index(name, field, _INDEX_TYPES[kind])
        self._metas[name] = meta

    def drop_collection(self, name: str) -> None:
        self._metas.pop(name, None)
        if self.collection_exists(name):
            self.client.delete_collection(name)

    def get_meta(self, name: str) -> CollectionMeta:
        if name in self._metas:
            return self._metas[name]
        if not self.collection_exists(name):
            raise CollectionNotFoundError(
                f"no collection {name!r} on the server; run `shelfsight ingest CATALOG` first"
            )
        data = (self.client.get_collection(name).config.metadata or {}).get(_META_KEY)
        if not data:
            raise CollectionNotFoundError(f"collection {name!r} was not made by Shelfsight (no metadata)")
        meta = CollectionMeta.from_dict(data)
        self._metas[name] = meta
        return meta

    def set_meta(self, name: str, meta: CollectionMeta) -> None:
        old = self.get_meta(name)
        for field, kind in meta.fields.items():
            if old.fields.get(field) != kind:
                self.client.create_payload_index(name, field, _INDEX_TYPES[kind])
        self.client.update_collection(name, metadata={_META_KEY: meta.to_dict()})
        self._metas[name] = meta

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        meta = self.get_meta(name)
        structs = []
        for p in points:
            check_vectors(p.id, p.vectors, meta)
            vector = {k: np.asarray(v, dtype=np.float32).tolist() for k, v in p.vectors.items()}
            structs.append(qm.PointStruct(id=p.id, vector=vector, payload=p.payload))
        self.client.upsert(name, structs, wait=True)

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None:
        for point, payload in payloads.items():
            if overwrite:
                self.client.overwrite_payload(name, payload=payload, points=[point], wait=True)
            else:
                self.client.set_payload(name, payload=payload, points=[point], wait=True)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        self.get_meta(name)
        records = self.client.retrieve(name, list(ids), with_payload=True, with_vectors=with_vectors)
        return [_to_stored(r, with_vectors) for r in records]

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(name, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def count(self, name: str, filter: Filter = ()) -> int:
        self.get_meta(name)
        return self.client.count(name, count_filter=_server_filter(filter), exact=True).count

    def scroll(
        self, name: str, filter: Filter = (), batch_size: int = 256, with_vectors: bool = False
    ) -> Iterator[StoredPoint]:
        self.get_meta(name)
        offset = None
        while True:
            records, offset = self.client.scroll(
                name,
                scroll_filter=_server_filter(filter),
                limit=batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for r in records:
                yield _to_stored(r, with_vectors)
            if offset is None or not records:
                return

    def query(
        self,
        name: str,
        lists: Sequence[NearestQuery],
        filter: Filter = (),
        with_vectors: bool = False,
        fusion: tuple[str, Sequence[float]] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> tuple[list[list[StoredPoint]], list[StoredPoint] | None]:
        meta = self.get_meta(name)
        server_filter = _server_filter(filter)
        requests = []
        for q in lists:
            check_vectors("query", {q.using: q.vector}, meta)
            requests.append(
                qm.QueryRequest(
                    query=np.asarray(q.vector, dtype=np.float32).tolist(),
                    using=q.using,
                    limit=q.limit,
                    filter=server_filter,
                    score_threshold=q.score_threshold,
                    with_payload=True,
                    with_vector=with_vectors,
                )
            )
        if fusion is not None:
            method, weights = fusion
            prefetch = [
                qm.Prefetch(
                    query=np.asarray(q.vector, dtype=np.float32).tolist(),
                    using=q.using,
                    limit=q.limit,
                    filter=server_filter,
                    score_threshold=q.score_threshold,
                )
                for q in lists
            ]
            fuse = (
                qm.RrfQuery(rrf=qm.Rrf(k=RRF_K, weights=list(weights)))
                if method == "rrf"
                else qm.FusionQuery(fusion=qm.Fusion.DBSF)
            )
            requests.append(
                qm.QueryRequest(
                    prefetch=prefetch,
                    query=fuse,
                    limit=limit,
                    offset=offset or None,
                    filter=server_filter,
                    with_payload=True,
                    with_vector=with_vectors,
                )
            )
        responses = self.client.query_batch_points(name, requests)
        converted = [[_to_stored(p, with_vectors) for p in r.points] for r in responses]
        if fusion is not None:
            return converted[:-1], converted[-1]
        return converted, None

    def facet(self, name: str, field: str, filter: Filter = (), limit: int = 50) -> list[tuple[Any, int]]:
        self.get_meta(name)
        response = self.client.facet(name, field, facet_filter=_server_filter(filter), limit=limit, exact=True)
        return [(h.value, int(h.count)) for h in response.hits]

    def optimize(self, name: str) -> None:
        """A server indexes in the background; nothing to do."""

    def close(self) -> None:
        self.client.close()


def local_store(path: str) -> ServerStore:
    """qdrant-client's local mode at ``path``: the server backend's code, no server."""
    return ServerStore(QdrantClient(path=path))


__all__ = ["ServerStore", "local_store"]
