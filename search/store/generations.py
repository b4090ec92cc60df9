"""Store generations of an embedded collection: blue/green rebuilds beside a serving process.

A collection's points live in one generation at a time. Generation 0 is the layout every store
had before generations, ``DB/COLLECTION/``; generation N >= 1 is a store root of its own,
``DB/.generations/COLLECTION/N/`` (holding ``COLLECTION/shard`` and ``collection.json`` as
``DB`` does for generation 0). Beside them, in ``DB/.generations/COLLECTION/``:

- ``live.json`` (``{"generation": N}``, written atomically) names the live one; without it, 0.
  Stores made before generations have none and read as before, so nothing is migrated.
- ``build.lock``: the ``ingest --reindex`` building the next generation holds it (``flock``),
  so two rebuilds never race; the store's own shard lock keeps two writers off one generation.
- ``served.json`` (``{"pid", "generation", "error"}``): the serving process's answer after it
  switched to the live generation (or why it could not).

``ingest --reindex`` while ``serve`` owns the store (``ingest/bluegreen.py``) builds generation
N+1, optimizes it (the HNSW build runs in the ingest's write process), points ``live.json`` at it and
waits for ``served.json``; the server (``search/http_swap.py``) opens the new generation, swaps
its engine, drains the requests that still use the old one and closes it; the ingest process
then removes the old generation. The dot keeps ``.generations`` out of every collection name.

Example::

    store = EdgeStore(store_root("db", "products"))  # the live generation, old layout or new
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from shelfsight.search.errors import StoreUnavailableError
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.validate import check_collection_name

GENERATIONS = ".generations"


@dataclass(frozen=True)
class Served:
    """What the serving process did about the live generation."""

    pid: int
    generation: int
    error: str | None = None


def _home(db: str | os.PathLike[str], collection: str) -> Path:
    check_collection_name(collection)
    return Path(db) / GENERATIONS / collection


def generation_root(db: str | os.PathLike[str], collection: str, generation: int) -> Path:
    """The store root holding ``generation`` of ``collection`` (``db`` itself for generation 0)."""
    return Path(db) if generation == 0 else _home(db, collection) / str(generation)


def live_generation(db: str | os.PathLike[str], collection: str) -> int:
    """The generation ``live.json`` names; 0 without one (a store from before generations)."""
    try:
        return int(json.loads((_home(db, collection) / "live.json").read_text())["generation"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreUnavailableError(
            f"{_home(db, collection) / 'live.json'} does not name a generation ({exc}); write "
            '{"generation": N} with the number of the folder beside it to serve, or run `ingest --reindex`'
        ) from exc


def store_root(db: str | os.PathLike[str], collection: str) -> Path:
    """The store root of ``collection``'s live generation."""
    return generation_root(db, collection, live_generation(db, collection))


def generation_of(db: str | os.PathLike[str], collection: str, root: str | os.PathLike[str]) -> int:
    """Which generation a store ``root`` is (0: ``db`` itself)."""
    root = Path(root)
    return int(root.name) if root.parent == _home(db, collection) and root.name.isdigit() else 0


def set_live(db: str | os.PathLike[str], collection: str, generation: int) -> None:
    """Point ``live.json`` at ``generation``: one rename, so a reader sees the old or the new."""
    _write_json(_home(db, collection) / "live.json", {"generation": generation})


def generations(db: str | os.PathLike[str], collection: str) -> list[int]:
    """Every generation on disk, oldest first (0 when the old layout's folder is there)."""
    home = _home(db, collection)
    found = [int(p.name) for p in home.iterdir() if p.is_dir() and p.name.isdigit()] if home.is_dir() else []
    return sorted(found + ([0] if (Path(db) / collection).is_dir() else []))


def next_generation(db: str | os.PathLike[str], collection: str) -> int:
    return max([live_generation(db, collection), *generations(db, collection)]) + 1


def remove_generation(db: str | os.PathLike[str], collection: str, generation: int) -> None:
    """Delete a generation no process has open (the store takes its lock first, and refuses
    with ``StoreUnavailableError`` when another process holds it)."""
    root = generation_root(db, collection, generation)
    store = EdgeStore(root)
    try:
        store.drop_collection(collection)
    finally:
        store.close()
    if generation:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def building(db: str | os.PathLike[str], collection: str) -> Iterator[None]:
    """Hold ``build.lock`` while a new generation is built; refuse when another build holds it."""
    home = _home(db, collection)
    home.mkdir(parents=True, exist_ok=True)
    with (home / "build.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreUnavailableError(
                f"another `ingest --reindex` is building a new generation of {collection!r} in {db}; "
                "wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def rebuilding(db: str | os.PathLike[str], collection: str) -> bool:
    """Whether an ``ingest --reindex`` is building a new generation now (it holds ``build.lock``)."""
    try:
        with (_home(db, collection) / "build.lock").open("r") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def write_served(db: str | os.PathLike[str], collection: str, served: Served) -> None:
    _write_json(_home(db, collection) / "served.json", asdict(served))


def read_served(db: str | os.PathLike[str], collection: str) -> Served | None:
    try:
        data = json.loads((_home(db, collection) / "served.json").read_text())
        return Served(int(data["pid"]), int(data["generation"]), data.get("error"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or half a file from a writer that died: as good as no answer


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
