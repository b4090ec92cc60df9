"""Process trees for the hardening tests: start a command in its own session, stop all of it.

A test that starts ``shelfsight serve`` or ``ui`` owns everything that process starts (Streamlit,
model workers); ``stopped_tree`` ends the whole session, pass or fail, and ``rss_bytes`` and
``tree`` read /proc (Linux) so a test can measure memory or look for leftovers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.helpers import (  # noqa: F401 (re-exported for the hardening tests)
    cli_args,
    cli_env,
    free_port,
    run_cli,
    server_process,
    stop_session,
    wait_for_http,
)


def children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    kids = children_of()
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def with_marker(marker: str) -> list[int]:
    """Every live process whose environment holds ``SHELFSIGHT_TEST_MARK=marker``."""
    needle = f"SHELFSIGHT_TEST_MARK={marker}".encode()
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in env.read_bytes().split(b"\0") and alive(int(env.parent.name)):
                found.append(int(env.parent.name))
        except OSError:
            continue
    return found


@contextmanager
def stopped_tree(
    *args: object, health: str = "/health", env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``shelfsight ARGS --port P`` in its own session until ``health`` answers; yields (base URL,
    process). The whole session is stopped on the way out, also when the test fails."""
    with server_process(*args, health=health, env=env, new_session=True) as started:
        yield started
