"""The ingest's store writes in a process of their own, for the embedded store.

qdrant-edge holds the GIL for the whole of every call, and turning a product into its point (three
512-d vectors and a payload) costs about as much again in Python. In the process that runs the
model, writing 5,000 products a second would leave it no time to feed the GPU. So for the length of
the embedding loop, the embedded collection is handed to a child process: the parent releases its
shard, the child opens it, and the pipeline's reads and writes (``retrieve``, ``upsert``,
``set_payload``) travel to it over a pipe. A batch of points crosses as its ids, its payloads and
one block of vectors. When the loop ends the child flushes and closes the shard, and the parent's
store opens it again for the index build.

The child is a fresh interpreter, not a fork: a fork would inherit the engine's
thread pools in whatever state the parent's threads left them. It dies with its parent
(``die_with_parent``), so a killed ingest never leaves the store locked; what it wrote is in the
store's write-ahead log, and the next run resumes from it.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from shelfsight.search.errors import ShelfsightError
from shelfsight.search.parent_death import die_with_parent
from shelfsight.search.store.base import PointRecord, StoredPoint, WithVectors
from shelfsight.search.store.edge import EdgeStore

START_TIMEOUT_S = 120.0


class WriteProcessError(ShelfsightError):
    """The write process could not start or went away; the message says why."""


class PointStore(Protocol):
    """What the ingest loop asks of a store: a ``VectorStore`` or a ``WriteProcess``."""

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[StoredPoint]: ...

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None: ...

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None: ...


class WriteProcess:
    """One collection of an embedded store, served by a child process for the ingest loop. The
    caller releases the collection in its own process first (``EdgeStore.release``); calls are one
    at a time (the pipeline's store lock)."""

    def __init__(self, root: Path, name: str):
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        # Python's -m and -c put the working directory first on the path, where a checkout's own
        # shelfsight/ folder would shadow the installed package: the child gets this process's path.
        boot = f"import sys; sys.path[:] = {sys.path!r}; from {__name__} import main; main(sys.argv[1:])"
        args = [str(Path(root).resolve()), name, str(os.getpid()), str(from_parent), str(to_parent)]
        command = [sys.executable, "-c", boot, *args]
        self._child = subprocess.Popen(command, pass_fds=(from_parent, to_parent), stdin=subprocess.DEVNULL)
        os.close(from_parent)
        os.close(to_parent)
        self._send = Connection(to_child, readable=False)
        self._recv = Connection(from_child, writable=False)
        try:
            self._answer(START_TIMEOUT_S)  # the shard is open in the child
        except WriteProcessError as exc:
            self._stop()
            raise WriteProcessError(f"the ingest's write process did not start: {exc}; its error is above") from exc
        except BaseException:
            self._stop()
            raise

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: WithVectors = False) -> list[StoredPoint]:
        return self._call("retrieve", name, list(ids), with_vectors)  # type: ignore[no-any-return]

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        self._call("upsert", name, *pack_points(points))

    def set_payload(self, name: str, payloads: dict[str, dict[str, Any]], overwrite: bool = False) -> None:
        self._call("set_payload", name, payloads, overwrite)

    def close(self) -> None:
        """Flush and close the child's shard and wait for it to exit."""
        try:
            if self._child.poll() is None:
                self._call("close")
        finally:
            self._stop()

    def _call(self, op: str, *args: Any) -> Any:
        try:
            self._send.send_bytes(pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            raise self._gone() from exc
        return self._answer(None)

    def _answer(self, timeout: float | None) -> Any:
        try:
            if timeout is not None and not self._recv.poll(timeout):
                raise WriteProcessError(f"the ingest's write process did not start within {timeout:.0f} s")
            ok, value = pickle.loads(self._recv.recv_bytes())
        except (EOFError, OSError) as exc:
            raise self._gone() from exc
        if not ok:
            raise value
        return value

    def _gone(self) -> WriteProcessError:
        try:
            code: int | str = self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = "none: it stopped answering"
        return WriteProcessError(
            f"the ingest's write process exited (code {code}); what it wrote so far is stored, "
            "and running the ingest again resumes from there"
        )

    def _stop(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()

    def __enter__(self) -> WriteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pack_points(points: Sequence[PointRecord]) -> tuple[list[str], list[dict[str, Any]], tuple[str, ...], Any]:
    """Points as ids, payloads, vector names and one (points, names, dim) float32 block: pickling
    one block is a copy, pickling a thousand small arrays is a thousand objects."""
    names = tuple(points[0].vectors) if points else ()
    if all(tuple(p.vectors) == names for p in points):
        block = np.stack([np.stack([p.vectors[n] for n in names]) for p in points]).astype(np.float32, copy=False)
        return [p.id for p in points], [p.payload for p in points], names, block
    return [p.id for p in points], [p.payload for p in points], (), [p.vectors for p in points]


def unpack_points(
    ids: list[str], payloads: list[dict[str, Any]], names: tuple[str, ...], vectors: Any
) -> list[PointRecord]:
    if names:
        return [PointRecord(i, dict(zip(names, block)), p) for i, p, block in zip(ids, payloads, vectors)]
    return [PointRecord(i, v, p) for i, p, v in zip(ids, payloads, vectors)]


# --- the child ---------------------------------------------------------------------------------


def _serve(store: EdgeStore, recv: Connection, send: Connection) -> None:
    """Answer calls until ``close`` or until the parent's end of the pipe closes."""
    calls = {
        "retrieve": store.retrieve,
        "upsert": lambda name, *packed: store.upsert(name, unpack_points(*packed)),
        "set_payload": store.set_payload,
    }
    while True:
        try:
            op, args = pickle.loads(recv.recv_bytes())
        except EOFError:
            return
        if op == "close":
            store.close()
            send.send_bytes(pickle.dumps((True, None)))
            return
        try:
            answer = (True, calls[op](*args))
        except Exception as exc:  # the parent raises it as if the store had been called there
            answer = (False, exc)
        send.send_bytes(_dumps(answer))


def _dumps(answer: tuple[bool, Any]) -> bytes:
    try:
        return pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle: its text still gets there
        return pickle.dumps((False, WriteProcessError(f"{type(answer[1]).__name__}: {answer[1]}")))


def main(argv: list[str]) -> None:
    root, name, parent, from_parent, to_parent = argv
    die_with_parent(parent=int(parent))  # it owns the store: it must not outlive the ingest
    recv = Connection(int(from_parent), writable=False)
    send = Connection(int(to_parent), readable=False)
    store = EdgeStore(root)
    try:
        store.count(name)  # opens the shard: a store another process holds fails here, clearly
    except Exception as exc:
        store.close()
        send.send_bytes(_dumps((False, exc)))
        return
    send.send_bytes(pickle.dumps((True, None)))
    try:
        _serve(store, recv, send)
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
