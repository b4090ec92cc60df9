"""Snapshots of one collection: a consistent copy to keep, and its way back.

Embedded store: the collection's directory (qdrant-edge's shard with its write-ahead log, plus
``collection.json``) packed into a ``.tar.gz`` while this process holds the shard's lock, so no
other process writes meanwhile. WAL, segments and metadata are copied at one moment with no
writer, which is the state a crash would leave and the engine recovers (NOTES.md: ten kills
mid-upsert lost no returned write). A store another process has open (``shelfsight serve``) is
refused with that process named as the reason; stop it first.

Qdrant server: the server's own snapshot API (``create_snapshot``), downloaded to a local file;
restore uploads one (``POST /collections/NAME/snapshots/upload``).

Example::

    snapshot_edge("db", "products", Path("products.tar.gz"))
    restore_edge(Path("products.tar.gz"), "db2")
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from shelfsight.search.errors import BadInputError, StoreUnavailableError
from shelfsight.search.store.edge import EdgeStore
from shelfsight.search.store.generations import store_root
from shelfsight.search.store.server import ServerStore
from shelfsight.search.store.validate import check_collection_name

if TYPE_CHECKING:
    import httpx

_META_FILE = "collection.json"
_SKIPPED = ("temp_segments",)  # an optimize() killed mid-way leaves these; never reused


def _without_temp(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if any(part in _SKIPPED for part in Path(info.name).parts) else info


def snapshot_edge(db: str | Path, collection: str, out: Path) -> Path:
    """Pack ``db/collection`` into ``out`` (.tar.gz) while holding its lock; returns ``out``."""
    root = store_root(db, collection)  # the live generation
    store = EdgeStore(root)
    try:
        store.count(collection)  # loads the shard: takes its lock, or names the process that has it
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(root / collection, arcname=collection, filter=_without_temp)
        partial.replace(out)  # a killed snapshot never leaves a file that looks complete
    finally:
        store.close()
    return out


def _collection_in(tar: tarfile.TarFile, archive: Path) -> str:
    """The one collection an embedded-store snapshot holds; refuses anything else."""
    names = {Path(m.name).parts[0] for m in tar.getmembers() if m.name}
    metas = [m for m in tar.getmembers() if Path(m.name).name == _META_FILE and len(Path(m.name).parts) == 2]
    if len(names) != 1 or len(metas) != 1:
        raise BadInputError(
            f"{archive} is not a Shelfsight embedded-store snapshot (expected one COLLECTION/{_META_FILE}); "
            "a Qdrant server snapshot is restored with QDRANT_URL set"
        )
    return names.pop()


def restore_edge(archive: Path, db: str | Path, collection: str | None = None, force: bool = False) -> str:
    """Unpack a ``snapshot_edge`` archive into ``db`` (as ``collection``, default its own name).

    Refuses to replace an existing collection unless ``force``; returns the collection's name.
    """
    if not archive.is_file():
        raise BadInputError(f"snapshot {archive} does not exist")
    with tarfile.open(archive, "r:gz") as tar:
        source_name = _collection_in(tar, archive)
        name = collection or source_name
        check_collection_name(name)
        db = store_root(db, name)  # into the live generation (generations.py)
        store = EdgeStore(db)
        try:
            if store.collection_exists(name):
                if not force:
                    raise BadInputError(f"collection {name!r} already exists in {db}: pass --force to replace it")
                store.drop_collection(name)  # refuses when another process has it open
        finally:
            store.close()
        db.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=db, prefix=".restore-") as tmp:
            tar.extractall(tmp, filter="data")  # no absolute paths, links out or devices
            (Path(tmp) / source_name).rename(db / name)
    _check_restored(db, name)
    return name


def _check_restored(db: Path, name: str) -> None:
    json.loads((db / name / _META_FILE).read_text())
    store = EdgeStore(db)
    try:
        store.count(name)  # the shard loads and passes the store's own checks
    finally:
        store.close()


def snapshot_server(store: ServerStore, collection: str, out: Path) -> Path:
    """Ask the server for a snapshot of ``collection`` and download it to ``out``."""
    store.get_meta(collection)
    try:
        description = store.client.create_snapshot(collection, wait=True)
    except NotImplementedError as exc:  # qdrant-client's local mode has no snapshots
        raise StoreUnavailableError(
            "this Qdrant backend has no snapshot API (qdrant-client's local mode); snapshot a server"
        ) from exc
    if description is None:
        raise StoreUnavailableError(f"the server made no snapshot of {collection!r}")
    url = f"/collections/{collection}/snapshots/{description.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with _http(store) as http, http.stream("GET", url) as response, partial.open("wb") as fh:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            fh.write(chunk)
    partial.replace(out)
    return out


def restore_server(store: ServerStore, archive: Path, collection: str, force: bool = False) -> None:
    """Upload a server snapshot file into ``collection``; replaces an existing one only if ``force``."""
    if not archive.is_file():
        raise BadInputError(f"snapshot {archive} does not exist")
    if store.collection_exists(collection) and not force:
        raise BadInputError(f"collection {collection!r} already exists on the server: pass --force to replace it")
    with _http(store) as http, archive.open("rb") as fh:
        response = http.post(
            f"/collections/{collection}/snapshots/upload",
            params={"priority": "snapshot", "wait": "true"},
            files={"snapshot": (archive.name, fh)},
        )
    if response.status_code >= 400:
        raise StoreUnavailableError(
            f"the server refused snapshot {archive}: {response.status_code} {response.text[:200]}"
        )


def _http(store: ServerStore) -> httpx.Client:
    """An HTTP client for the server's REST API, at the address and key the store connected with."""
    import httpx

    init = store.client.init_options
    if not init.get("url"):
        raise StoreUnavailableError("snapshots over HTTP need a server URL (QDRANT_URL)")
    url = urlparse(str(init["url"]))
    base = f"{url.scheme}://{url.hostname}:{url.port or init.get('port') or 6333}{url.path.rstrip('/')}"
    headers = {"api-key": str(init["api_key"])} if init.get("api_key") else {}
    return httpx.Client(base_url=base, headers=headers, timeout=600)


__all__ = ["restore_edge", "restore_server", "snapshot_edge", "snapshot_server"]
