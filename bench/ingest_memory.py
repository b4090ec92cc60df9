"""Peak memory of an ingest as the catalog grows: text-only catalogs of each size, the tiny model,
each ingest in a fresh process, its peak RSS split by phase.

Rows stream through the pipeline, so what grows with the row count is the store itself: the
embedded engine's appendable segment while points are upserted, then the indexed segment that
``optimize()`` builds beside it. Phases, each the kernel's high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs`` as a phase starts; Linux): ``setup`` (model and catalog scan),
``upserts`` (the ingest loop), ``optimize`` and ``calibration`` (what follows the index build).
The run's peak is the largest of them.

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
import time
from pathlib import Path
from typing import Any

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


class PhasedStore(EdgeStore):
    """The embedded store, marking the phase each of its calls belongs to."""

    def __init__(self, db: Path, peaks: PhasePeaks):
        super().__init__(db)
        self.peaks = peaks

    def upsert(self, name: str, points: Any) -> None:
        self.peaks.enter("upserts")
        super().upsert(name, points)

    def optimize(self, name: str) -> None:
        self.peaks.enter("optimize")
        super().optimize(name)
        self.peaks.enter("calibration")


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
    print(f"largest/smallest peak RSS: {peaks[sizes[-1]] / peaks[sizes[0]]:.2f}x")


def measure_in_child(n: int, work: Path) -> float:
    """One size's ingest in a fresh process; prints its phases and returns the run's peak in MB."""
    args = [sys.executable, __file__, "--one", str(n), "--work", str(work)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {n}-row ingest failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.splitlines()[-1])
    peak = max(result["peaks"].values())
    phases = ", ".join(f"{k} {v:.0f}" for k, v in result["peaks"].items())
    print(f"{n:>8} rows: peak RSS {peak:.0f} MB ({phases}), {result['seconds']:.0f} s")
    return float(peak)


def measure_one(n: int, work: Path) -> None:
    """One ingest in this process (a fresh one per size); prints its phases' peaks as JSON."""
    catalog = work / f"catalog-{n}.csv"
    write_text_catalog(catalog, n, seed=n)
    peaks = PhasePeaks()
    started = time.perf_counter()
    report = ingest_catalog(catalog, PhasedStore(work / f"db-{n}", peaks), Embedder(str(work / "tiny")))
    if report.ingested != n:
        raise RuntimeError(f"ingested {report.ingested} of {n} rows: {report.errors[:3]}")
    print(json.dumps({"peaks": peaks.finish(), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
