"""Finding the process that owns an embedded store, so other commands can ask it.

One process owns an embedded store (the engine locks it). While ``shelfsight serve --db DB``
serves, it keeps a small private record, ``DB/.shelfsight-server.json`` (``{"pid", "url",
"collection"}``, mode 0600), beside the store and removes it when it stops. Read commands
(``search``, ``stats``) that find a live record answer through that server's HTTP API instead of
failing on the lock. A record whose process is gone is stale: ignored and removed.

Example::

    record = find_server("db")
    if record:
        print(f"served by pid {record.pid} at {record.url}")
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD_NAME = ".shelfsight-server.json"


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    url: str  # base URL, e.g. http://127.0.0.1:8000
    collection: str


def write_record(db: str | os.PathLike[str], record: ServerRecord) -> Path:
    """Publish ``record`` for ``db``; readable by its owner only (the URL is all it holds, but a
    shared machine's other users have no business with it)."""
    path = Path(db) / RECORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(record), fh)
    os.replace(tmp, path)
    return path


def remove_record(db: str | os.PathLike[str], pid: int) -> None:
    """Remove the record if it is ``pid``'s (a newer server's record stays)."""
    found = _read(Path(db) / RECORD_NAME)
    if found is not None and found.pid == pid:
        (Path(db) / RECORD_NAME).unlink(missing_ok=True)


def find_server(db: str | os.PathLike[str] | None) -> ServerRecord | None:
    """The live server that owns ``db``, or None; a stale record is removed on the way."""
    if not db:
        return None
    path = Path(db) / RECORD_NAME
    record = _read(path)
    if record is None:
        return None
    if not process_alive(record.pid):
        path.unlink(missing_ok=True)
        return None
    return record


def _read(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text())
        return ServerRecord(int(data["pid"]), str(data["url"]), str(data["collection"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: as good as no record


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True
