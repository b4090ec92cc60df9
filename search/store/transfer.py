"""Moving a collection between stores without embedding anything again: ``migrate``.

Points go across in batches: each batch of source ids is looked up in the target first, and only
the points it lacks are read (with their vectors) and written. A run that was killed therefore
resumes where it stopped, and a finished one re-run copies nothing. The collection's metadata
(model, fields, fused weight, options) goes with it, so the target is searched with the same model.
At the end ``verify`` checks the counts and that an exact top-10 of a sample of stored vectors is
the same on both sides (exact, so an HNSW graph built differently cannot fake a mismatch).

Example::

    source, target = open_location("db"), open_location("http://127.0.0.1:6333")
    report = migrate(source, target, MigrateRequest("products"))
    print(report.to_dict())   # {"collection": "products", "total": 800, "copied": 800, ...}
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from shelfsight.search.errors import BadInputError, StoreUnavailableError
from shelfsight.search.store.base import CollectionMeta, NearestQuery, PointRecord, StoredPoint, VectorStore

# Queries of the final check: sampled points, each of their vectors searched, top TOP_K compared.
DEFAULT_SAMPLE = 20
TOP_K = 10
# Scores this close count as equal (float32 rounding differs between engines); tied points may
# come back in either order.
_TIE = 1e-5


@dataclass(frozen=True)
class MigrateRequest:
    """What to copy: ``collection`` from the source, into ``target_collection`` (default the same)."""

    collection: str
    target_collection: str | None = None
    batch_size: int = 256
    sample: int = DEFAULT_SAMPLE

    @property
    def target_name(self) -> str:
        return self.target_collection or self.collection


@dataclass(frozen=True)
class MigrateReport:
    collection: str
    target_collection: str
    total: int  # points in the source
    copied: int  # written by this run
    already_there: int  # found in the target (a resumed or repeated run)
    verified_queries: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_server(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def open_location(location: str, api_key: str | None = None) -> VectorStore:
    """A Qdrant server for an ``http(s)://`` URL, else an embedded store directory."""
    if is_server(location):
        from shelfsight.search.store.server import ServerStore

        return ServerStore.connect(location, api_key=api_key)
    from shelfsight.search.store.edge import EdgeStore

    return EdgeStore(location)


def _same_space(a: CollectionMeta, b: CollectionMeta) -> bool:
    return (a.model, a.dimension, tuple(a.vectors)) == (b.model, b.dimension, tuple(b.vectors))


def prepare_target(source: VectorStore, target: VectorStore, request: MigrateRequest) -> CollectionMeta:
    """Create the target collection with the source's metadata, or accept one a killed run left."""
    meta = source.get_meta(request.collection)
    name = request.target_name
    if not target.collection_exists(name):
        target.create_collection(name, meta)
        return meta
    existing = target.get_meta(name)
    if not _same_space(existing, meta):
        raise BadInputError(
            f"the target already has a collection {name!r} of another space (model {existing.model!r}, "
            f"{existing.dimension}-d) than the source's (model {meta.model!r}, {meta.dimension}-d): "
            "drop it, or pass --to-collection NAME to copy into a new one"
        )
    target.set_meta(name, meta)  # a resumed run: the fields and derived names of the source
    return meta


def _batches(points: Iterable[StoredPoint], size: int) -> Iterator[list[StoredPoint]]:
    batch: list[StoredPoint] = []
    for p in points:
        batch.append(p)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_points(
    source: VectorStore,
    target: VectorStore,
    request: MigrateRequest,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Copy the points the target lacks, batch by batch; returns (copied, already there).

    ``on_batch(done, copied)`` runs after each batch is written (the CLI prints progress there).
    """
    copied = present = 0
    name = request.target_name
    for batch in _batches(source.scroll(request.collection, batch_size=request.batch_size), request.batch_size):
        ids = [p.id for p in batch]
        there = {p.id for p in target.retrieve(name, ids)}
        missing = [i for i in ids if i not in there]
        if missing:
            full = source.retrieve(request.collection, missing, with_vectors=True)
            target.upsert(name, [PointRecord(p.id, p.vectors, p.payload) for p in full])
        copied += len(missing)
        present += len(ids) - len(missing)
        if on_batch is not None:
            on_batch(copied + present, copied)
    return copied, present


def same_ranking(a: list[StoredPoint], b: list[StoredPoint]) -> bool:
    """Two results of depth TOP_K + 1 agree on their top TOP_K: same ids in the same order, where
    a run of tied scores may come in either order, and the run that reaches past TOP_K may differ
    (which tied point falls inside is not defined)."""
    if [p.id for p in a] == [p.id for p in b]:
        return True
    if len(a) != len(b) or any(abs(x.score - y.score) > _TIE for x, y in zip(a, b)):
        return False
    start = 0
    for end in range(1, len(a) + 1):
        if end < len(a) and abs(a[end].score - a[start].score) <= _TIE:
            continue
        if end < len(a) and {p.id for p in a[start:end]} != {p.id for p in b[start:end]}:
            return False
        start = end
    return True


def verify(source: VectorStore, target: VectorStore, request: MigrateRequest) -> int:
    """Counts equal, and the exact top-10 of each sampled point's vectors equal; returns queries run."""
    total, there = source.count(request.collection), target.count(request.target_name)
    if total != there:
        raise StoreUnavailableError(
            f"the target collection {request.target_name!r} holds {there} points, the source {total}: "
            "run the same migrate again to copy the rest"
        )
    ids = [p.id for p in source.scroll(request.collection, batch_size=1024)]
    sample = random.Random(0).sample(ids, min(request.sample, len(ids)))
    queries = 0
    for point in source.retrieve(request.collection, sample, with_vectors=True):
        for using, vector in point.vectors.items():
            lists = [NearestQuery(vector, using, TOP_K + 1)]
            expected = source.query(request.collection, lists, exact=True)[0][0]
            found = target.query(request.target_name, lists, exact=True)[0][0]
            if not same_ranking(expected, found):
                raise StoreUnavailableError(
                    f"the top-{TOP_K} of point {point.id}'s {using!r} vector differs between source and "
                    f"target: {[p.id for p in expected[:TOP_K]]} vs {[p.id for p in found[:TOP_K]]}"
                )
            queries += 1
    return queries


def migrate(
    source: VectorStore,
    target: VectorStore,
    request: MigrateRequest,
    on_batch: Callable[[int, int], None] | None = None,
) -> MigrateReport:
    """Copy ``request.collection`` to the target (resuming a killed run), build its index, verify."""
    if request.batch_size < 1 or request.sample < 0:
        raise BadInputError("--batch-size must be at least 1 and --sample at least 0")
    started = time.perf_counter()
    prepare_target(source, target, request)
    copied, present = copy_points(source, target, request, on_batch)
    target.optimize(request.target_name)
    queries = verify(source, target, request)
    return MigrateReport(
        collection=request.collection,
        target_collection=request.target_name,
        total=copied + present,
        copied=copied,
        already_there=present,
        verified_queries=queries,
        seconds=round(time.perf_counter() - started, 3),
    )
