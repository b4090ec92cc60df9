"""Load test: N clients against a real ``shelfsight serve`` on loopback for T seconds, in rounds.

Each client sends one request after another: text searches over a vocabulary of colours and
kinds (some with a filter or a negative term), a product page, and now and then an image upload.
Every answer other than a 200 counts as an error. For each run it prints requests/s, p50 and p99
latency, errors, and the server's RSS (its whole process tree) after the run, what it grew since
the end of the run before, and how much is anonymous memory (heap) and file-backed pages
(libraries and the store's memory-mapped files).

RSS cannot tell a leak from an allocator that keeps freed memory, so the server runs through
``bench/load_server.py``, which reports after each run its thread count and what glibc's malloc
holds: in use, and freed but kept (``mallinfo2``), and CPython's live block count. After the last
run it asks for ``malloc_trim(0)``: what that gives back was free memory glibc kept.

Before the first run a warm-up sends every text of the vocabulary once from N clients and then
runs the mix for ``--warmup`` seconds, so the engine's query-vector cache and the server's worker
threads are filled before RSS is first read. glibc's high-water mark still climbs through about
the first minute of load (run 1's growth); what grows after that, run over run, is what steady
load costs. Five runs by default, so a growth that levels off shows as one; the summary gives each
run's growth and that from the end of run 1 to the end of run 2.

Run: python bench/load.py [--clients 32] [--seconds 60] [--runs 5] [--warmup 15] [--db DIR | --workdir DIR]
Without --db it builds a 400-product store with a tiny random-weight CLIP model first (in
``--workdir``, where a later run reuses it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "purple", "pink", "grey", "brown"]
KINDS = ["bag", "shoe", "shirt", "mug", "hat", "umbrella", "bottle", "tote", "sneaker", "jacket"]
EXTRAS = ["", "", "leather", "striped", "-striped", "2:plain"]
MAX_CLIENTS, MAX_SECONDS, MAX_RUNS = 256, 600, 10  # bounded: this is a loopback benchmark, not a stress tool


@dataclass
class RunResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            kids.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` and every process below it, from /proc: total, anonymous, file-backed."""
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    total = dict.fromkeys(keys.values(), 0.0)
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                name = line.split(":", 1)[0] + ":"
                if name in keys:
                    total[keys[name]] += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def build_store(workdir: Path) -> tuple[Path, Path]:
    """A 400-product generated catalog ingested with a tiny random-weight model; (db, catalog dir)."""
    catalog = workdir / "catalog"
    model = workdir / "tiny"
    db = workdir / "db"
    run = [sys.executable, "-m", "shelfsight"]
    subprocess.run([*run, "data", "generate", "--out", catalog, "--n", "400", "--seed", "3"], check=True)
    subprocess.run([*run, "model", "init", "--preset", "tiny", "--out", model], check=True)
    subprocess.run([*run, "ingest", catalog / "catalog.csv", "--db", db, "--model", model], check=True)
    return db, catalog


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: Path, port: int, stats: Path) -> subprocess.Popen:
    """``shelfsight serve`` on loopback through bench/load_server.py, which answers SIGUSR1 and
    SIGUSR2 with memory figures in ``stats``."""
    env = {k: v for k, v in os.environ.items() if k not in ("QDRANT_URL", "SHELFSIGHT_API_KEY")}
    env["SHELFSIGHT_LOAD_STATS"] = str(stats)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "load_server.py"), "serve", "--db", str(db), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit("serve did not come up in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def server_memory(proc: subprocess.Popen, stats: Path, sig: int = signal.SIGUSR1) -> dict[str, Any]:
    """Ask the server (bench/load_server.py) for its memory figures; {} when it does not answer in 10 s."""
    seen = stats.read_text().count("\n") if stats.exists() else 0
    os.kill(proc.pid, sig)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = stats.read_text().splitlines() if stats.exists() else []
        if len(lines) > seen:
            return dict(json.loads(lines[seen]))
        time.sleep(0.05)
    return {}


def vocabulary() -> list[str]:
    """Every query text the clients send."""
    return [" ".join(w for w in (c, k, e) if w) for c in COLOURS for k in KINDS for e in dict.fromkeys(EXTRAS)]


def one_request(client: httpx.Client, rng: random.Random, ids: list[str], image: bytes | None) -> httpx.Response:
    roll = rng.random()
    text = " ".join(w for w in (rng.choice(COLOURS), rng.choice(KINDS), rng.choice(EXTRAS)) if w)
    if roll < 0.05 and image is not None:
        return client.post("/search/upload", files={"image": ("q.jpg", image)}, data={"q": text, "limit": "10"})
    if roll < 0.15 and ids:
        return client.get(f"/products/{rng.choice(ids)}")
    params: list[tuple[str, str]] = [("q", text), ("limit", "10")]
    if roll < 0.35:
        params.append(("filter", f"price<={rng.choice([20, 40, 80, 200])}"))
    return client.get("/search", params=params)


def client_loop(base: str, stop_at: float, seed: int, ids: list[str], image: bytes | None, out: RunResult) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                ok = one_request(client, rng, ids, image).status_code == 200
            except httpx.HTTPError:
                ok = False
            took = (time.perf_counter() - started) * 1000
            with out.lock:
                out.latencies.append(took)
                out.errors += 0 if ok else 1


def run_load(base: str, clients: int, seconds: float, ids: list[str], image: bytes | None, seed: int) -> RunResult:
    out = RunResult()
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=client_loop, args=(base, stop_at, seed * 1000 + i, ids, image, out))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=15, help="seconds of load before the first run")
    parser.add_argument("--db", type=Path, help="a built store (default: build a 400-product one)")
    parser.add_argument("--workdir", type=Path, help="build the 400-product store here, or reuse the one built here")
    args = parser.parse_args()
    if not (1 <= args.clients <= MAX_CLIENTS and 0 < args.seconds <= MAX_SECONDS and 1 <= args.runs <= MAX_RUNS):
        raise SystemExit(f"--clients 1..{MAX_CLIENTS}, --seconds up to {MAX_SECONDS}, --runs 1..{MAX_RUNS}")
    if not 0 <= args.warmup <= MAX_SECONDS:
        raise SystemExit(f"--warmup 0..{MAX_SECONDS}")
    with tempfile.TemporaryDirectory() as tmp:
        catalog = None
        db = args.db
        if db is None:
            workdir = args.workdir or Path(tmp)
            built = (workdir / "db").is_dir() and (workdir / "catalog" / "catalog.csv").is_file()
            db, catalog = (workdir / "db", workdir / "catalog") if built else build_store(workdir)
        ids, image = [], None
        if catalog is not None:
            rows = list(csv.DictReader((catalog / "catalog.csv").open()))
            ids = [r["id"] for r in rows]
            image = (catalog / rows[0]["image"]).read_bytes()
        port = free_port()
        stats = Path(tmp) / "server-memory.jsonl"
        proc = start_server(db, port, stats)
        try:
            report(Server(f"http://127.0.0.1:{port}", proc, stats), args, ids, image)
        finally:
            stop_server(proc)


def warm_up(base: str, clients: int, seconds: float, ids: list[str], image: bytes | None) -> RunResult:
    """Every vocabulary text once (N clients at a time), an upload, then ``seconds`` of the mix."""
    texts = vocabulary()
    errors: list[int] = []  # one count per client thread

    def send(share: list[str]) -> None:
        failed = 0
        with httpx.Client(base_url=base, timeout=300) as client:
            for text in [*share, None]:
                try:
                    if text is not None:
                        answer = client.get("/search", params={"q": text})
                    elif image is not None:
                        answer = client.post("/search/upload", files={"image": ("q.jpg", image)})
                    else:
                        continue
                    failed += answer.status_code != 200
                except httpx.HTTPError:
                    failed += 1
        errors.append(failed)

    threads = [threading.Thread(target=send, args=(texts[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = run_load(base, clients, seconds, ids, image, seed=0) if seconds else RunResult()
    result.errors += sum(errors)
    return result


@dataclass(frozen=True)
class Server:
    base: str
    proc: subprocess.Popen
    stats: Path


@dataclass(frozen=True)
class RunFigures:
    """One run's latencies and the server's memory after it (MB)."""

    requests: int
    p50: float
    p99: float
    errors: int
    rss: dict[str, float]
    memory: dict[str, Any]


HEADER = (
    f"{'run':>3} {'requests':>8} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99/p50':>7} {'errors':>6} "
    f"{'RSS MB':>7} {'grew':>6} {'anon':>5} {'file':>5} {'threads':>7} {'malloc in use':>13} {'malloc free':>11} "
    f"{'py blocks':>9}"
)


def measure_run(server: Server, args: argparse.Namespace, ids: list[str], image: bytes | None, run: int) -> RunFigures:
    result = run_load(server.base, args.clients, args.seconds, ids, image, seed=run)
    lat = sorted(result.latencies)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)] if lat else float("nan")
    rss = rss_mb(server.proc.pid)  # read before asking the server, so the asking is not in it
    return RunFigures(len(lat), p50, p99, result.errors, rss, server_memory(server.proc, server.stats))


def run_line(label: str, seconds: float, fig: RunFigures, previous_rss: float) -> str:
    mem = fig.memory
    malloc = (
        f"{mem['malloc_in_use']:>13.1f} {mem['malloc_free']:>11.1f}"
        if "malloc_in_use" in mem
        else f"{'-':>13} {'-':>11}"
    )
    return (
        f"{label:>3} {fig.requests:>8} {fig.requests / seconds:>6.1f} {fig.p50:>7.0f} {fig.p99:>7.0f} "
        f"{fig.p99 / fig.p50:>7.1f} {fig.errors:>6} {fig.rss['rss']:>7.1f} {fig.rss['rss'] - previous_rss:>+6.1f} "
        f"{fig.rss['anon']:>5.0f} {fig.rss['file']:>5.0f} {mem.get('Threads', 0):>7.0f} {malloc} "
        f"{mem.get('py_blocks', 0) / 1000:>8.0f}k"
    )


def report(server: Server, args: argparse.Namespace, ids: list[str], image: bytes | None) -> None:
    print(f"{args.clients} clients, {args.seconds:g} s a run, {os.cpu_count()} CPUs, server pid {server.proc.pid}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = rss_mb(server.proc.pid)
    warm = warm_up(server.base, args.clients, args.warmup, ids, image)
    warmed = rss_mb(server.proc.pid)
    print(
        f"warm-up: {len(vocabulary())} texts once, then {len(warm.latencies)} requests in {args.warmup:g} s, "
        f"{warm.errors} errors; RSS {started['rss']:.1f} -> {warmed['rss']:.1f} MB"
    )
    print("memory after each run, MB; grew: since the end of the run before (run 1: of the warm-up)")
    print(HEADER)
    runs: list[RunFigures] = []
    for run in range(1, args.runs + 1):
        runs.append(measure_run(server, args, ids, image, run))
        previous = runs[-2].rss["rss"] if len(runs) > 1 else warmed["rss"]
        print(run_line(str(run), args.seconds, runs[-1], previous), flush=True)
    summarize(server, warmed["rss"], runs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def summarize(server: Server, warmed_rss: float, runs: list[RunFigures]) -> None:
    ends = [warmed_rss] + [r.rss["rss"] for r in runs]
    grew = [f"{b - a:+.1f}" for a, b in zip(ends, ends[1:])]
    print(f"RSS growth of each run (MB): {', '.join(grew)}")
    if len(runs) > 1:
        print(f"growth from the end of run 1 to the end of run 2: {ends[2] - ends[1]:+.1f} MB")
    if len(runs) > 2:
        print(f"growth from the end of run 1 to the end of run {len(runs)}: {ends[-1] - ends[1]:+.1f} MB")
    trim = server_memory(server.proc, server.stats, signal.SIGUSR2)
    if trim.get("trimmed") is not None:
        print(
            f"malloc_trim(0) after the last run: server RSS {trim['rss_before']:.1f} -> {trim['rss_after']:.1f} MB "
            "(what it gives back was freed memory glibc kept)"
        )


if __name__ == "__main__":
    main()
