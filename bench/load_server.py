"""``shelfsight serve`` for bench/load.py, with two signals that say what the server's memory is.

RSS alone cannot tell a leak from an allocator that keeps freed memory for later, so the load
benchmark starts the server through this file, which adds:

- SIGUSR1: write one JSON line to ``$SHELFSIGHT_LOAD_STATS``: glibc's ``mallinfo2`` (bytes malloc
  took from the system, bytes in use, bytes freed but kept), CPython's live block count
  (``sys.getallocatedblocks``: Python objects), the thread count and VmRSS. Reading these
  allocates next to nothing, so asking does not move what is measured.
- SIGUSR2: call ``malloc_trim(0)`` and write VmRSS before and after it. What it gives back was
  freed memory glibc kept, not data the server still holds.

Everything else is the plain ``shelfsight serve`` (its malloc arena cap included).

Run: SHELFSIGHT_LOAD_STATS=/tmp/stats.jsonl python bench/load_server.py serve --db DIR --port N
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

MB = 2**20


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


LIBC = _libc()


def _status() -> dict[str, float]:
    """VmRSS, RssAnon (MB) and Threads of this process, from /proc/self/status."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            out[name] = int(value.split()[0]) / 1024
        elif name == "Threads":
            out[name] = int(value)
    return out


def memory_stats() -> dict[str, Any]:
    """What the allocators hold now (MB), with the Python block count and the thread count."""
    stats: dict[str, Any] = {**_status(), "py_blocks": sys.getallocatedblocks(), "py_threads": threading.active_count()}
    if LIBC is not None:
        info = LIBC.mallinfo2()
        # arena: the main heap and the thread arenas; hblkhd: chunks malloc mapped on their own.
        stats["malloc_system"] = (info.arena + info.hblkhd) / MB
        stats["malloc_in_use"] = (info.uordblks + info.hblkhd) / MB
        stats["malloc_free"] = info.fordblks / MB
    return stats


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get("SHELFSIGHT_LOAD_STATS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(record) + "\n")


def _on_stats(signum: int, frame: object) -> None:
    _write({"kind": "stats", **memory_stats()})


def _on_trim(signum: int, frame: object) -> None:
    before = _status()
    trimmed = bool(LIBC.malloc_trim(0)) if LIBC is not None else False
    _write({"kind": "trim", "trimmed": trimmed, "rss_before": before["VmRSS"], "rss_after": _status()["VmRSS"]})


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _on_stats)
    signal.signal(signal.SIGUSR2, _on_trim)
    from shelfsight.cli import main

    raise SystemExit(main(sys.argv[1:]))
