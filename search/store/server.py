"""The scale-out backend: qdrant-client talking to a Qdrant server or cluster.

Also runs against qdrant-client's local mode (``QdrantClient(path=...)``), which is how the
conformance tests exercise it where no server runs. Collection metadata lives in the
collection's own ``metadata`` so every client of the server sees the same model record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from shelfsight.search.errors import BadInputError, CollectionNotFoundError, StoreUnavailableError
from shelfsight.search.store.base import Boost, CollectionMeta, CollectionOptions, Filter, StoredPoint
from shelfsight.search.store.core import Dialect, QdrantStore, to_stored
from shelfsight.search.store.options import (
    EXACT_FILTER_MAX_POINTS,
    check_options,
    exact_params,
    search_params,
    server_collection_kwargs,
)
from shelfsight.search.store.validate import check_collection_name

_INDEX_TYPES = {"keyword": qm.PayloadSchemaType.KEYWORD, "float": qm.PayloadSchemaType.FLOAT}
_META_KEY = "shelfsight"
# Full-text indexes for quoted phrases: words in order, case-insensitive.
_TEXT_INDEX = qm.TextIndexParams(
    type=qm.TextIndexType.TEXT, tokenizer=qm.TokenizerType.WORD, lowercase=True, phrase_matching=True
)


def _signal(b: Boost) -> Any:
    """One boost's signal in [0, 1] as a Qdrant formula expression."""
    if b.kind == "match":
        return qm.FieldCondition(key=b.field, match=qm.MatchValue(value=b.value))
    if b.kind == "near":
        params = qm.DecayParamsExpression(x=b.field, target=float(b.value), scale=b.scale)
        return qm.GaussDecayExpression(gauss_decay=params)
    if b.kind == "more":
        ratio = qm.DivParams(left=b.field, right=qm.SumExpression(sum=[b.field, b.scale]), by_zero_default=0.0)
        return qm.DivExpression(div=ratio)
    params = qm.DecayParamsExpression(
        x=qm.DatetimeKeyExpression(datetime_key=b.field),
        target=qm.DatetimeExpression(datetime=str(b.value)),
        scale=b.scale,
    )
    return qm.ExpDecayExpression(exp_decay=params)


def _formula(boosts: list[Boost]) -> qm.FormulaQuery:
    signals = [qm.MultExpression(mult=[b.weight, _signal(b)]) for b in boosts]
    defaults = {b.field: 0.0 for b in boosts if b.kind in ("near", "more")}
    score = qm.MultExpression(mult=["$score", qm.SumExpression(sum=[1.0, *signals])])
    return qm.FormulaQuery(formula=score, defaults=defaults)


class ServerStore(QdrantStore):
    """Collections on a Qdrant server (or in qdrant-client's local mode)."""

    dialect = Dialect(
        match_value=lambda value: qm.MatchValue(value=value),
        match_any=lambda values: qm.MatchAny(any=values),
        range=qm.Range,
        field_condition=qm.FieldCondition,
        filter=qm.Filter,
        point=qm.PointStruct,
        nearest=lambda vector, using: {"query": vector, "using": using},
        request=qm.QueryRequest,
        prefetch=qm.Prefetch,
        prefetches="prefetch",
        rrf=lambda k, weights: qm.RrfQuery(rrf=qm.Rrf(k=k, weights=weights)),
        dbsf=lambda: qm.FusionQuery(fusion=qm.Fusion.DBSF),
        sparse=lambda indices, values: qm.SparseVector(indices=indices, values=values),
        match_phrase=lambda phrase: qm.MatchPhrase(phrase=phrase),
        has_id=lambda ids: qm.HasIdCondition(has_id=ids),
        formula=lambda boosts: _formula(boosts),
        mmr=lambda vector, using, diversity, candidates: {
            "query": qm.NearestQuery(nearest=vector, mmr=qm.Mmr(diversity=diversity, candidates_limit=candidates)),
            "using": using,
        },
    )

    shared_meta = True

    def __init__(self, client: QdrantClient):
        self.client = client
        self._metas: dict[str, CollectionMeta] = {}
        self._sizes: dict[str, tuple[int, float]] = {}
        # Local mode searches exactly and warns on every search parameter, so it is sent none.
        self.searches_exactly = (
            client.init_options.get("path") is not None or client.init_options.get("location") == ":memory:"
        )

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
        return self.client.collection_exists(name) or self.alias_target(name) is not None

    # -- aliases: blue/green rebuilds (``ingest/bluegreen.py``) --------------------------------
    def alias_target(self, name: str) -> str | None:
        """The collection the alias ``name`` points at; None when ``name`` is no alias."""
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == name:
                return str(alias.collection_name)
        return None

    def switch_alias(self, name: str, target: str) -> str | None:
        """Point ``name`` at the collection ``target``, in one atomic step when ``name`` is already
        an alias, and return the collection it named before (None: it named none). A plain
        collection called ``name`` (made before aliases) must go first, since an alias cannot share
        its name: between that delete and the alias, requests for ``name`` find nothing."""
        check_collection_name(target)
        previous = self.alias_target(name)
        ops: list[Any] = []
        if previous is not None:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=name)))
        elif self.client.collection_exists(name):
            self.client.delete_collection(name)
        ops.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target, alias_name=name)))
        self.client.update_collection_aliases(change_aliases_operations=ops)
        self._metas.pop(name, None)
        return previous

    def create_collection(self, name: str, meta: CollectionMeta) -> None:
        if self.collection_exists(name):
            raise BadInputError(f"collection {name!r} already exists")
        meta = self.with_options(meta)
        check_options(meta.options)
        self.client.create_collection(name, **server_collection_kwargs(meta), metadata={_META_KEY: meta.to_dict()})
        for field, kind in meta.fields.items():
            self.client.create_payload_index(name, field, _INDEX_TYPES[kind])
        for field in meta.text_fields:
            self.client.create_payload_index(name, field, _TEXT_INDEX)
        self._metas[name] = meta

    def drop_collection(self, name: str) -> None:
        """Drop ``name``; for an alias, the alias and the collection it points at."""
        self._metas.pop(name, None)
        target = self.alias_target(name)
        if target is not None:
            delete = qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=name))
            self.client.update_collection_aliases(change_aliases_operations=[delete])
            self._metas.pop(target, None)
            self.client.delete_collection(target)
        elif self.client.collection_exists(name):
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
        meta = replace(meta, options=old.options)  # the layout is fixed when the collection is made
        for field, kind in meta.fields.items():
            if old.fields.get(field) != kind:
                self.client.create_payload_index(name, field, _INDEX_TYPES[kind])
        self.client.update_collection(name, metadata={_META_KEY: meta.to_dict()})
        self._metas[name] = meta

    def _write_points(self, name: str, points: list[Any]) -> None:
        self.client.upsert(name, points, wait=True)

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
        return [to_stored(r, with_vectors) for r in records]

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(name, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def count(self, name: str, filter: Filter = ()) -> int:
        self.get_meta(name)
        return self.client.count(name, count_filter=self._filter(filter), exact=True).count

    def _estimate(self, name: str, client_filter: Any) -> int:
        if self.searches_exactly:  # local mode scans every search anyway
            return EXACT_FILTER_MAX_POINTS + 1
        return self.client.count(name, count_filter=client_filter, exact=False).count

    def _scroll_page(
        self, name: str, filter: Any, limit: int, offset: Any, with_vectors: bool, with_payload: bool = True
    ) -> tuple[list[Any], Any]:
        return self.client.scroll(
            name, scroll_filter=filter, limit=limit, offset=offset, with_payload=with_payload, with_vectors=with_vectors
        )

    def _search_params(self, filter: Filter, options: CollectionOptions, points: Callable[[], int]) -> Any:
        return None if self.searches_exactly else search_params(qm, bool(filter), options, points)

    def _exact_params(self) -> Any:
        return None if self.searches_exactly else exact_params(qm)

    def _query_batch(self, name: str, requests: list[Any]) -> list[list[Any]]:
        return [r.points for r in self.client.query_batch_points(name, requests)]

    def facet(self, name: str, field: str, filter: Filter = (), limit: int = 50) -> list[tuple[Any, int]]:
        self.get_meta(name)
        response = self.client.facet(name, field, facet_filter=self._filter(filter), limit=limit, exact=True)
        return [(h.value, int(h.count)) for h in response.hits]

    def optimize(self, name: str) -> None:
        """A server indexes in the background; nothing to do."""

    def close(self) -> None:
        self.client.close()


def local_store(path: str) -> ServerStore:
    """qdrant-client's local mode at ``path``: the server backend's code, no server."""
    return ServerStore(QdrantClient(path=path))


__all__ = ["ServerStore", "local_store"]
