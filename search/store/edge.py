"""The embedded backend: qdrant-edge-py, Qdrant's own engine running in this process.

Layout on disk: ``DB/COLLECTION/shard/`` (the engine's files) and ``DB/COLLECTION/collection.json``
(our metadata). The engine locks a shard directory for one process at a time and holds the GIL
during every call; it builds HNSW indexes only on ``optimize()``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import qdrant_edge as qe
from shelfsight.search.errors import BadInputError, CollectionNotFoundError, StoreUnavailableError
from shelfsight.search.store.base import Boost, CollectionMeta, CollectionOptions, Filter, StoredPoint
from shelfsight.search.store.core import Dialect, QdrantStore, to_stored
from shelfsight.search.store.integrity import check_files, check_shard, damaged
from shelfsight.search.store.options import check_options, edge_applicable, edge_config, exact_params, search_params
from shelfsight.search.store.validate import check_collection_name

_META_FILE = "collection.json"
_INDEX_TYPES = {"keyword": qe.PayloadSchemaType.Keyword, "float": qe.PayloadSchemaType.Float}
# Full-text indexes for quoted phrases: words in order, case-insensitive.
_TEXT_INDEX = qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True, phrase_matching=True)


def _signal(b: Boost) -> qe.Expression:
    """One boost's signal in [0, 1] as qdrant-edge's expression."""
    E = qe.Expression
    if b.kind == "match":
        return E.Condition(qe.FieldCondition(key=b.field, match=qe.MatchValue(b.value)))
    if b.kind == "near":
        return E.Decay(
            qe.DecayKind.Gauss, E.Variable(b.field), target=E.Constant(float(b.value)), midpoint=0.5, scale=b.scale
        )
    if b.kind == "more":
        return E.Div(E.Variable(b.field), E.Sum([E.Variable(b.field), E.Constant(b.scale)]), by_zero_default=0.0)
    return E.Decay(
        qe.DecayKind.Exp, E.DatetimeKey(b.field), target=E.Datetime(str(b.value)), midpoint=0.5, scale=b.scale
    )


def _formula(boosts: list[Boost]) -> qe.Formula:
    E = qe.Expression
    signals = [E.Mult([E.Constant(b.weight), _signal(b)]) for b in boosts]
    defaults = {b.field: 0.0 for b in boosts if b.kind in ("near", "more")}
    return qe.Formula(E.Mult([E.Variable("$score"), E.Sum([E.Constant(1.0), *signals])]), defaults=defaults)


class EdgeStore(QdrantStore):
    """Collections as qdrant-edge shards under one directory, owned by this process."""

    dialect = Dialect(
        match_value=qe.MatchValue,
        match_any=qe.MatchAny,
        range=qe.RangeFloat,
        field_condition=qe.FieldCondition,
        filter=qe.Filter,
        point=qe.Point,
        nearest=lambda vector, using: {"query": qe.Query.Nearest(vector, using=using)},
        request=qe.QueryRequest,
        prefetch=qe.Prefetch,
        prefetches="prefetches",
        rrf=lambda k, weights: qe.Fusion.Rrf(k=k, weights=weights),
        dbsf=qe.Fusion.Dbsf,
        sparse=qe.SparseVector,
        match_phrase=qe.MatchPhrase,
        has_id=lambda ids: qe.HasIdCondition(set(ids)),
        formula=lambda boosts: _formula(boosts),
        mmr=lambda vector, using, diversity, candidates: {
            "query": qe.Mmr(vector, lambda_=1.0 - diversity, candidates_limit=candidates, using=using)
        },
    )

    def __init__(self, db: str | os.PathLike[str]):
        self.root = Path(db)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._metas: dict[str, CollectionMeta] = {}
        self._sizes: dict[str, tuple[int, float]] = {}

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.root)!r})"

    # -- collections ---------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        check_collection_name(name)
        return self.root / name

    def collection_exists(self, name: str) -> bool:
        return (self._dir(name) / _META_FILE).is_file()

    def create_collection(self, name: str, meta: CollectionMeta) -> None:
        directory = self._dir(name)
        if self.collection_exists(name):
            raise BadInputError(f"collection {name!r} already exists in {self.root}")
        shard_dir = directory / "shard"
        if shard_dir.exists():  # left over from a create that died before writing the metadata
            shutil.rmtree(shard_dir)
        shard_dir.mkdir(parents=True)
        # One local shard: the cluster-only options are dropped (the CLI says so), the rest applied.
        meta = replace(meta, options=edge_applicable(self.with_options(meta).options))
        check_options(meta.options)
        try:
            shard = qe.EdgeShard.create(str(shard_dir), edge_config(meta))
        except Exception as exc:
            raise StoreUnavailableError(f"cannot create collection {name!r} in {self.root}: {exc}") from exc
        self._shards[name] = shard
        for field, kind in meta.fields.items():
            shard.update(qe.UpdateOperation.create_field_index(field, _INDEX_TYPES[kind]))
        for field in meta.text_fields:
            shard.update(qe.UpdateOperation.create_field_index(field, _TEXT_INDEX))
        self._write_meta(name, meta)

    def drop_collection(self, name: str) -> None:
        self._take_ownership(name)  # never delete a store that another process has open
        shard = self._shards.pop(name, None)
        self._metas.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def _write_meta(self, name: str, meta: CollectionMeta) -> None:
        path = self._dir(name) / _META_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta.to_dict(), indent=2))
        os.replace(tmp, path)  # atomic: a crash never leaves half a metadata file
        self._metas[name] = meta

    def get_meta(self, name: str) -> CollectionMeta:
        if name in self._metas:
            return self._metas[name]
        path = self._dir(name) / _META_FILE
        if not path.is_file():
            known = (
                sorted(p.name for p in self.root.iterdir() if (p / _META_FILE).is_file()) if self.root.is_dir() else []
            )
            raise CollectionNotFoundError(
                f"no collection {name!r} in {self.root}"
                + (f" (it has: {', '.join(known)})" if known else " (it is empty)")
                + "; run `shelfsight ingest CATALOG --db DIR` first"
            )
        try:
            meta = CollectionMeta.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise damaged(
                f"collection {name!r} in {self.root}",
                f"{_META_FILE} does not parse ({type(exc).__name__}: {str(exc)[:120]})",
                f"restore it from a snapshot, or delete {path.parent} and run `shelfsight ingest CATALOG` again",
            ) from exc
        self._metas[name] = meta
        return meta

    def set_meta(self, name: str, meta: CollectionMeta) -> None:
        old = self.get_meta(name)
        meta = replace(meta, options=old.options)  # the layout is fixed when the collection is made
        shard = self._shard(name)
        for field, kind in meta.fields.items():
            if old.fields.get(field) != kind:
                shard.update(qe.UpdateOperation.create_field_index(field, _INDEX_TYPES[kind]))
        self._write_meta(name, meta)

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        self.get_meta(name)  # raises a clear error when the collection is missing
        shard_dir = self._dir(name) / "shard"
        # An optimize() killed mid-way leaves segment builders behind; they are never reused.
        for stale in shard_dir.glob("temp_segments/segment_builder_*"):
            shutil.rmtree(stale, ignore_errors=True)
        check_files(shard_dir, f"collection {name!r} in {self.root}")
        try:
            shard = qe.EdgeShard.load(str(shard_dir))
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise StoreUnavailableError(
                    f"collection {name!r} in {self.root} is open in another process (or already in "
                    "this one). One process owns an embedded store: reach it through that process's "
                    "HTTP API (`shelfsight serve`), stop it, or use a Qdrant server (QDRANT_URL)."
                ) from exc
            raise damaged(f"collection {name!r} in {self.root}", f"its shard does not load ({exc})") from exc
        try:
            check_shard(shard, shard_dir, self.get_meta(name), f"collection {name!r} in {self.root}")
        except StoreUnavailableError:
            shard.close()
            raise
        self._shards[name] = shard
        return shard

    def _take_ownership(self, name: str) -> None:
        """Hold the shard's lock (or fail as ``_shard`` does when another process holds it); a
        damaged shard may still be dropped, since rebuilding is its fix."""
        shard_dir = self._dir(name) / "shard"
        if name in self._shards or not shard_dir.is_dir():
            return
        try:
            self._shards[name] = qe.EdgeShard.load(str(shard_dir))
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise StoreUnavailableError(
                    f"collection {name!r} in {self.root} is open in another process (or already in "
                    "this one). One process owns an embedded store: stop that process before you "
                    "rebuild or prune it, or reach it through its HTTP API (`shelfsight serve`)."
                ) from exc

    # -- points --------------------------------------------------------------------------------
    def _write_points(self, name: str, points: list[Any]) -> None:
        self._shard(name).update(qe.UpdateOperation.upsert_points(points))

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None:
        shard = self._shard(name)
        make = qe.UpdateOperation.overwrite_payload if overwrite else qe.UpdateOperation.set_payload
        for point, payload in payloads.items():
            shard.update(make([point], payload))

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._shard(name).retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [to_stored(r, with_vectors) for r in records]

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._shard(name).update(qe.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))

    def count(self, name: str, filter: Filter = ()) -> int:
        return int(self._shard(name).count(qe.CountRequest(filter=self._filter(filter), exact=True)))

    def _estimate(self, name: str, client_filter: Any) -> int:
        return int(self._shard(name).count(qe.CountRequest(filter=client_filter, exact=False)))

    def _scroll_page(
        self, name: str, filter: Any, limit: int, offset: Any, with_vectors: bool, with_payload: bool = True
    ) -> tuple[list[Any], Any]:
        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=filter, with_payload=with_payload, with_vector=with_vectors
        )
        return self._shard(name).scroll(request)

    # -- search --------------------------------------------------------------------------------
    def _search_params(self, filter: Filter, options: CollectionOptions, points: Callable[[], int]) -> Any:
        return search_params(qe, bool(filter), options, points)

    def _exact_params(self) -> Any:
        return exact_params(qe)

    def _query_batch(self, name: str, requests: list[Any]) -> list[list[Any]]:
        return self._shard(name).query_batch(qe.QueryBatchRequest(requests))

    def facet(self, name: str, field: str, filter: Filter = (), limit: int = 50) -> list[tuple[Any, int]]:
        response = self._shard(name).facet(
            qe.FacetRequest(key=field, limit=limit, exact=True, filter=self._filter(filter))
        )
        return [(h.value, int(h.count)) for h in response.hits]

    def optimize(self, name: str) -> None:
        shard = self._shard(name)
        shard.optimize()
        shard.flush()

    def release(self, name: str) -> None:
        """Flush and close one collection's shard, so that another process may open it (and change
        its metadata); this store opens it and reads its metadata again on its next use."""
        self._metas.pop(name, None)
        self._sizes.pop(name, None)
        shard = self._shards.pop(name, None)
        if shard is not None:
            try:
                shard.flush()
            finally:
                shard.close()

    def close(self) -> None:
        for shard in self._shards.values():
            try:
                shard.flush()
            finally:
                shard.close()
        self._shards.clear()
