"""bench/load_server.py: the memory figures the load benchmark reads from the server are glibc's
and CPython's own, and a signal brings them as one JSON line."""

import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_server():
    spec = importlib.util.spec_from_file_location("load_server", BENCH / "load_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_malloc_in_use_counts_a_fresh_allocation():
    probe = _load_server()
    if probe.LIBC is None:
        pytest.skip("no glibc here")
    before = probe.memory_stats()
    block = bytearray(64 * 2**20)  # mapped by malloc on its own: counted as in use, not free
    after = probe.memory_stats()
    assert 63 <= after["malloc_in_use"] - before["malloc_in_use"] <= 66
    assert after["malloc_system"] >= after["malloc_in_use"] > 0 and after["malloc_free"] >= 0
    assert after["VmRSS"] > 0 and after["Threads"] >= 1 and after["py_blocks"] > 0
    del block


def test_sigusr1_writes_one_json_line(tmp_path, monkeypatch):
    probe = _load_server()
    stats = tmp_path / "stats.jsonl"
    monkeypatch.setenv("SHELFSIGHT_LOAD_STATS", str(stats))
    previous = signal.signal(signal.SIGUSR1, probe._on_stats)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    lines = stats.read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["kind"] == "stats" and record["VmRSS"] > 0
