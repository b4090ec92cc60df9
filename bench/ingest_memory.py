"""Peak memory of an ingest as the catalog grows: text-only catalogs of each size, the tiny model,
each ingest in a fresh process; the peak RSS of the ingest's own process and of the write process
that holds the embedded collection from the first write to the end (``ingest/write_process.py``).

Rows stream through the pipeline, so the ingest's own process should hold about as much for any
catalog length. What grows with the row count is the store itself: the engine's appendable
segment while points are upserted, then the indexed segment that ``optimize()`` builds beside it,
all in the write process. The ingest's peaks are the kernel's high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs`` as a phase starts; Linux) for ``setup`` (the model loaded) and
``ingest`` (the catalog scanned and ingested); the write process's is its own ``VmHWM``, read
every 0.1 s while it runs (so what it adds in its last 0.1 s, closing, is missed).

    python bench/ingest_memory.py --sizes 20000,200000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shelfsight.ingest.pipeline import ingest_catalog
from shelfsight.search.embedder import Embedder
from shelfsight.search.store.edge import EdgeStore
from shelfsight.train.model_init import init_model

WORDS = "red blue green black white striped dotted leather canvas wool cotton bag shoe hat mug lamp shirt".split()


def write_text_catalog(path: Path, n: int, seed: int) -> None:
    """``n`` distinct text-only products (title, description, category, price, brand)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "description", "category", "price", "brand"])
        for i in range(n):
            title = " ".join(rng.choice(WORDS) for _ in range(4))
            description = f"{title} no {i}, " + " ".join(rng.choice(WORDS) for _ in range(12))
            writer.writerow(
                [f"T{i:07d}", title, description, rng.choice(WORDS), f"{rng.uniform(5, 200):.2f}", f"B{i % 97}"]
            )


class PhasePeaks:
    """The process's peak RSS per phase, in MB: the high-water mark read and reset at each change."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.phase = "setup"
        self._reset()

    def enter(self, phase: str) -> None:
        if phase != self.phase:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), _high_water_mb())
            self._reset()
            self.phase = phase

    def finish(self) -> dict[str, float]:
        self.enter("")
        return self.peaks

    @staticmethod
    def _reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")


def _high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        return measure_one(args.one, args.work)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="shelfsight-mem-") as tmp:  # stores of 200k rows: removed after
        init_model("tiny", Path(tmp) / "tiny")
        peaks = {n: measure_in_child(n, Path(tmp)) for n in map(int, args.sizes.split(","))}
    sizes = sorted(peaks)
    print(f"largest/smallest peak RSS of the ingest process: {peaks[sizes[-1]] / peaks[sizes[0]]:.2f}x")


def measure_in_child(n: int, work: Path) -> float:
    """One size's ingest in a fresh process; prints its peaks and returns the ingest process's, in MB."""
    args = [sys.executable, __file__, "--one", str(n), "--work", str(work)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {n}-row ingest failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.splitlines()[-1])
    peak, store = max(result["peaks"].values()), result["write_process_mb"]
    phases = ", ".join(f"{k} {v:.0f}" for k, v in result["peaks"].items())
    held = f"{store:.0f} MB" if store else "none seen (the store stayed in the ingest process)"
    print(
        f"{n:>8} rows: ingest process peak RSS {peak:.0f} MB ({phases}); write process {held}; {result['seconds']:.0f} s"
    )
    return float(peak)


def measure_one(n: int, work: Path) -> None:
    """One ingest in this process (a fresh one per size); prints its peaks as JSON."""
    catalog = work / f"catalog-{n}.csv"
    write_text_catalog(catalog, n, seed=n)
    peaks = PhasePeaks()
    embedder = Embedder(str(work / "tiny"))
    _ = embedder.model
    started = time.perf_counter()
    peaks.enter("ingest")
    with ChildPeaks() as children:
        report = ingest_catalog(catalog, EdgeStore(work / f"db-{n}"), embedder)
    if report.ingested != n:
        raise RuntimeError(f"ingested {report.ingested} of {n} rows: {report.errors[:3]}")
    result = {"peaks": peaks.finish(), "write_process_mb": children.largest(), "seconds": time.perf_counter() - started}
    print(json.dumps(result))


class ChildPeaks:
    """The high-water mark (``VmHWM``) of each child process, read every 0.1 s while it runs. Not
    ``ru_maxrss``: a child started by fork and exec counts the parent's pages from before its exec."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def largest(self) -> float:
        """The largest peak of a child process (text-only catalogs have one: the write process)."""
        return max(self.peaks.values(), default=0.0)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            for pid in _children():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # it has exited: its last reading stands
                hwm = next(
                    (int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0
                )
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm)


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


if __name__ == "__main__":
    main()
