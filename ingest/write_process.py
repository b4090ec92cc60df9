"""An ingest's embedded collection held in a process of its own, from the first write to the
end of the ingest.

qdrant-edge holds the GIL for the whole of every call, and turning a product into its point (three
512-d vectors and a payload) costs about as much again in Python. In the process that runs the
model, writing 5,000 products a second would leave it no time to feed the GPU. And the engine
keeps what it holds in the process that opened it, growing with the catalog (and about doubling
while ``optimize`` builds the index), where the ingest's own memory stays flat as rows stream.
So for the rest of the ingest the embedded collection is handed to a child process: the parent
releases its shard, the child opens it, and the pipeline's calls travel to it over a pipe: the
loop's reads and writes (``retrieve``, ``upsert``, ``set_payload``), then pruning, the index build
and calibration (``ids``, ``delete``, ``optimize``, ``vocabulary``, ``query``, ``facet``, the
metadata). A batch
of points crosses as its ids, its payloads and one block of vectors. When the ingest ends the
child flushes and closes the shard; the parent's store opens it again on its next use.

The child is a fresh interpreter, not a fork: a fork would inherit the engine's
thread pools in whatever state the parent's threads left them. It dies with its parent
(``die_with_parent``), so a killed ingest never leaves the store locked; what it wrote is in the
store's write-ahead log, and the next run resumes from it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from shelfsight.search.child_process import ChildProcess, connect, fail, greet, serve_calls
from shelfsight.search.errors import ShelfsightError
from shelfsight.search.relevance import CalibratedStore, collection_vocabulary
from shelfsight.search.store.base import CollectionMeta, Filter, NearestQuery, PointRecord, Sparse, StoredPoint
from shelfsight.search.store.core import follow_pages
from shelfsight.search.store.edge import EdgeStore

log = logging.getLogger(__name__)


class WriteProcessError(ShelfsightError):
    """The write process could not start or went away; the message says why."""


class PointStore(CalibratedStore, Protocol):
    """What an ingest asks of a store once its collection exists: a ``VectorStore`` or a
    ``WriteProcess``."""

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]: ...

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None: ...

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None: ...

    def ids(self, name: str) -> list[str]: ...

    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    def optimize(self, name: str) -> None: ...


class WriteProcess:
    """One collection of an embedded store, served by a child process for the rest of an ingest. The
    caller releases the collection in its own process first (``EdgeStore.release``); calls are one
    at a time (the pipeline's store lock).

    Upserts are pipelined: ``upsert`` sends its points and returns once the child has answered the
    upsert before it, so this process packs and pickles the next batch while the child writes one
    (a batch bigger than the pipe's buffer is then sent as the child takes it). At most one upsert
    is unanswered (``unanswered``); its error, if it fails, is raised by the next call, by
    ``settle`` or by ``close``. Every other call settles first and waits for its own answer.

    The child starts in the background (an interpreter, its imports and the shard: about 0.15 s
    here) while the ingest reads and embeds its first batch; one that cannot start, such as for a
    collection another process holds, says so at the first call."""

    def __init__(self, root: Path, name: str):
        self._child = ChildProcess(
            __name__,
            [str(Path(root).resolve()), name],
            WriteProcessError,
            "the ingest's write process",
            "; what it wrote so far is stored, and running the ingest again resumes from there",
        )
        self.unanswered = 0

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        return self._call("retrieve", name, list(ids), with_vectors)  # type: ignore[no-any-return]

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        if not points:
            return
        self._child.send("upsert", name, *pack_points(points))
        self.unanswered += 1
        while self.unanswered > 1:
            self._receive()

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None:
        self._call("set_payload", name, payloads, overwrite)

    # -- the end of the ingest (prune, index build, calibration), on the store the child holds --

    def count(self, name: str, filter: Filter = ()) -> int:
        return self._call("count", name, filter)  # type: ignore[no-any-return]

    def get_meta(self, name: str) -> CollectionMeta:
        return self._call("get_meta", name)  # type: ignore[no-any-return]

    def set_meta(self, name: str, meta: CollectionMeta) -> None:
        self._call("set_meta", name, meta)

    def scroll(
        self, name: str, filter: Filter = (), batch_size: int = 256, with_vectors: bool = False
    ) -> Iterator[StoredPoint]:
        """The collection's points, a page per call to the child."""
        yield from follow_pages(
            lambda offset: self._call("scroll_page", name, filter, batch_size, offset, with_vectors)
        )

    def ids(self, name: str) -> list[str]:
        """Every point's id, gathered in the child: only the ids cross the pipe."""
        return self._call("ids", name)  # type: ignore[no-any-return]

    def vocabulary(self, name: str) -> dict[str, int]:
        """``relevance.collection_vocabulary``, made in the child: only the words cross the pipe, not
        every payload (100,000 products: 1.6-3.2 s to bring their payloads across here, 0.8-1.1 s
        to read them where the store is; counting their words takes 1.2-1.4 s either way). An
        ingest of 50,000 text-only rows calibrated in 1.21-1.38 s so, against 1.55-1.64 s."""
        return self._call("vocabulary", name)  # type: ignore[no-any-return]

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._call("delete", name, list(ids))

    def optimize(self, name: str) -> None:
        self._call("optimize", name)

    def query(
        self, name: str, lists: Sequence[NearestQuery], filter: Filter = ()
    ) -> tuple[list[list[StoredPoint]], list[StoredPoint] | None]:
        return self._call("query", name, list(lists), filter)  # type: ignore[no-any-return]

    def facet(self, name: str, field: str, filter: Filter = (), limit: int = 50) -> list[tuple[Any, int]]:
        return self._call("facet", name, field, filter, limit)  # type: ignore[no-any-return]

    def _call(self, op: str, *args: Any) -> Any:
        self.settle()
        return self._child.call(op, *args)

    def settle(self) -> None:
        """Wait until every upsert sent has landed; raises the error of one that failed."""
        while self.unanswered:
            self._receive()

    def _receive(self) -> None:
        self.unanswered -= 1
        self._child.receive()

    def close(self) -> None:
        """Flush and close the child's shard and wait for it to exit; an unanswered upsert's error
        is raised once the child has closed."""
        try:
            if not self._child.broken:  # after an interrupt the answers are out of step: just stop it
                self.settle()
        finally:
            self._child.close()

    def __enter__(self) -> WriteProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the error on its way out is the one to report, not what closing then ran into
            self.close()
        except Exception as close_error:
            log.warning("%s while closing the write process after an earlier error", close_error)


Packed = tuple[list[str], list[dict[str, Any]], list[Sparse | None], tuple[str, ...], Any]


def pack_points(points: Sequence[PointRecord]) -> Packed:
    """Points as ids, payloads, BM25 words, vector names and one (points, names, dim) float32
    block: pickling one block is a copy, pickling a thousand small arrays is a thousand objects."""
    ids, payloads, words = [p.id for p in points], [p.payload for p in points], [p.words for p in points]
    names = tuple(points[0].vectors)  # at least one point: WriteProcess.upsert sends none otherwise
    if all(tuple(p.vectors) == names for p in points):
        block = np.stack([np.stack([p.vectors[n] for n in names]) for p in points]).astype(np.float32, copy=False)
        return ids, payloads, words, names, block
    return ids, payloads, words, (), [p.vectors for p in points]


def unpack_points(
    ids: list[str], payloads: list[dict[str, Any]], words: list[Sparse | None], names: tuple[str, ...], vectors: Any
) -> list[PointRecord]:
    if names:
        vectors = [dict(zip(names, block)) for block in vectors]
    return [PointRecord(i, v, p, w) for i, p, w, v in zip(ids, payloads, words, vectors)]


# --- the child ---------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    recv, send, (root, name) = connect(argv)  # it owns the store: it must not outlive the ingest
    store = EdgeStore(root)
    try:
        store.count(name)  # opens the shard: a store another process holds fails here, clearly
    except Exception as exc:
        store.close()
        fail(send, exc)
        return
    greet(send)
    calls = {
        "retrieve": store.retrieve,
        "upsert": lambda name, *packed: store.upsert(name, unpack_points(*packed)),
        "set_payload": store.set_payload,
        "count": store.count,
        "get_meta": store.get_meta,
        "set_meta": store.set_meta,
        "scroll_page": store.scroll_page,
        "ids": store.ids,
        "vocabulary": lambda name: collection_vocabulary(store, name),
        "delete": store.delete,
        "optimize": store.optimize,
        "query": store.query,
        "facet": store.facet,
        "close": store.close,
    }
    try:
        serve_calls(calls, recv, send)
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
