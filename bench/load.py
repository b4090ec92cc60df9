"""Load test: N clients against a real ``shelfsight serve`` on loopback for T seconds, in rounds.

Each client sends one request after another: text searches over a vocabulary of colours and
kinds (some with a filter or a negative term), a product page, and now and then an image upload.
Every answer other than a 200 counts as an error. For each run it prints requests/s, p50 and p99
latency, errors, and the server's RSS (its whole process tree) before and after, split into
anonymous memory (heap) and file-backed pages (libraries and the store's memory-mapped files).

Before the first run a warm-up sends every text of the vocabulary once from N clients and then
runs the mix for ``--warmup`` seconds, so the engine's query-vector cache, the server's worker
threads and the allocator's pools are filled before RSS is first read; what grows after that, run
over run, is what steady load costs. The last line gives the growth from the end of run 1 to the
end of the last run.

Run: python bench/load.py [--clients 32] [--seconds 60] [--runs 3] [--warmup 15] [--db DIR | --workdir DIR]
Without --db it builds a 400-product store with a tiny random-weight CLIP model first (in
``--workdir``, where a later run reuses it).
"""

from __future__ import annotations

import argparse
import csv
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

import httpx

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "purple", "pink", "grey", "brown"]
KINDS = ["bag", "shoe", "shirt", "mug", "hat", "umbrella", "bottle", "tote", "sneaker", "jacket"]
EXTRAS = ["", "", "leather", "striped", "-striped", "2:plain"]
MAX_CLIENTS, MAX_SECONDS = 256, 600  # bounded: this is a loopback benchmark, not a stress tool


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


def start_server(db: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("QDRANT_URL", "SHELFSIGHT_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shelfsight", "serve", "--db", str(db), "--host", "127.0.0.1", "--port", str(port)],
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
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=15, help="seconds of load before the first run")
    parser.add_argument("--db", type=Path, help="a built store (default: build a 400-product one)")
    parser.add_argument("--workdir", type=Path, help="build the 400-product store here, or reuse the one built here")
    args = parser.parse_args()
    if not (1 <= args.clients <= MAX_CLIENTS and 0 < args.seconds <= MAX_SECONDS and 1 <= args.runs <= 5):
        raise SystemExit(f"--clients 1..{MAX_CLIENTS}, --seconds up to {MAX_SECONDS}, --runs 1..5")
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
        proc = start_server(db, port)
        try:
            report(f"http://127.0.0.1:{port}", proc.pid, args, ids, image)
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


def report(base: str, pid: int, args: argparse.Namespace, ids: list[str], image: bytes | None) -> None:
    print(f"{args.clients} clients, {args.seconds:g} s a run, {os.cpu_count()} CPUs, server pid {pid}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = rss_mb(pid)
    warm = warm_up(base, args.clients, args.warmup, ids, image)
    print(
        f"warm-up: {len(vocabulary())} texts once, then {len(warm.latencies)} requests in {args.warmup:g} s, "
        f"{warm.errors} errors; RSS {started['rss']:.0f} -> {rss_mb(pid)['rss']:.0f} MB"
    )
    print(
        f"{'run':>3} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>7} {'errors':>6} "
        f"{'RSS before':>11} {'RSS after':>10} {'anon after':>11} {'file after':>11}"
    )
    ends = []
    for run in range(1, args.runs + 1):
        before = rss_mb(pid)
        result = run_load(base, args.clients, args.seconds, ids, image, seed=run)
        after = rss_mb(pid)
        ends.append(after)
        lat = sorted(result.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)] if lat else float("nan")
        print(
            f"{run:>3} {len(lat):>9} {len(lat) / args.seconds:>7.1f} {p50:>8.1f} {p99:>8.1f} {p99 / p50:>7.1f} "
            f"{result.errors:>6} {before['rss']:>8.0f} MB {after['rss']:>7.0f} MB {after['anon']:>8.0f} MB "
            f"{after['file']:>8.0f} MB"
        )
    if len(ends) > 1:
        grew = {k: ends[-1][k] - ends[0][k] for k in ends[0]}
        print(
            f"growth from the end of run 1 to the end of run {len(ends)}: {grew['rss']:+.1f} MB "
            f"(anonymous {grew['anon']:+.1f} MB, file-backed {grew['file']:+.1f} MB)"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
