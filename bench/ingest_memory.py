"""Peak memory of `shelfsight ingest` as the catalog grows: text-only catalogs of each size, the
tiny model, each ingest a fresh process (its peak RSS read from the kernel after it exits).

Rows stream through the pipeline, so the peak should hardly grow with the row count; what does grow
is the store itself (its vectors and index) and the set of ids kept for duplicate checks.

    python bench/ingest_memory.py --sizes 20000,200000
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """Run a command; its peak RSS in MB (from the kernel's accounting of children) and seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise RuntimeError("this child's peak was below an earlier one's; run one size per process")
    return after / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        return measure_one(args.one, args.work)
    work = Path(tempfile.mkdtemp(prefix="shelfsight-mem-"))
    init_model("tiny", work / "tiny")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    results = {}
    for n in map(int, args.sizes.split(",")):
        # Each size in its own parent process: RUSAGE_CHILDREN keeps the largest peak seen so far.
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--work", str(work)], check=True, capture_output=True, text=True
        )
        results[n] = tuple(map(float, out.stdout.split()))
        print(f"{n:>8} rows: peak RSS {results[n][0]:.0f} MB, {results[n][1]:.0f} s")
    sizes = sorted(results)
    print(f"largest/smallest peak RSS: {results[sizes[-1]][0] / results[sizes[0]][0]:.2f}x")


def measure_one(n: int, work: Path) -> None:
    catalog = work / f"catalog-{n}.csv"
    write_text_catalog(catalog, n, seed=n)
    cli = [sys.executable, "-m", "shelfsight", "ingest", str(catalog), "--db", str(work / f"db-{n}")]
    rss, seconds = peak_rss_mb([*cli, "--model", str(work / "tiny")])
    print(rss, seconds)


if __name__ == "__main__":
    main()
