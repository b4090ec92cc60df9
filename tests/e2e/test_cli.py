"""The documented commands, run as processes: exit codes, JSON output, kill and resume."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import time

import numpy as np
from shelfsight.search.engine import SearchEngine
from shelfsight.search.query import NEGATIVE_WEIGHT

from tests.e2e.helpers import cli_args, cli_env, run_cli


def test_model_init_and_data_generate(tmp_path):
    run_cli("model", "init", "--preset", "tiny", "--out", tmp_path / "m", "--seed", "2", check=True)
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    run_cli("data", "generate", "--out", tmp_path / "a", "--n", "12", "--seed", "4", check=True)
    run_cli("data", "generate", "--out", tmp_path / "b", "--n", "12", "--seed", "4", check=True)
    assert (tmp_path / "a" / "catalog.csv").read_text() == (tmp_path / "b" / "catalog.csv").read_text()
    assert (tmp_path / "a" / "images" / "P004-00003.jpg").read_bytes() == (
        tmp_path / "b" / "images" / "P004-00003.jpg"
    ).read_bytes()
    assert (tmp_path / "a" / "queries.jsonl").is_file()


def test_ingest_exit_codes_report_and_stats(tmp_path, tiny_model_dir, catalog_dir):
    db = tmp_path / "db"
    catalog = tmp_path / "c.csv"
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))[:10]
    for r in rows:
        r["image"] = str(catalog_dir / r["image"])
    rows.append(dict(rows[0], id="broken", image=str(tmp_path / "missing.jpg")))
    with catalog.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    proc = run_cli("ingest", catalog, "--db", db, "--model", tiny_model_dir, "--report", tmp_path / "r.jsonl", "--json")
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["ingested"], summary["skipped"]) == (10, 1)
    report = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert report == [{"row": 11, "id": "broken", "reason": report[0]["reason"], "hint": report[0]["hint"]}]
    assert "not found" in report[0]["reason"] and "broken" in proc.stderr
    stats = json.loads(run_cli("stats", "--db", db, "--json", check=True).stdout)
    assert stats["count"] == 10 and stats["model"].startswith("tiny@")

    assert run_cli("ingest", tmp_path / "nope.csv", "--db", db).returncode == 2
    other = run_cli("ingest", catalog, "--db", db, "--model", tmp_path / "no-model")
    assert other.returncode == 2 and "--reindex" in other.stderr  # never mixes two models in one collection
    missing_model = run_cli("ingest", catalog, "--db", tmp_path / "db2", "--model", tmp_path / "no-model")
    assert missing_model.returncode == 1 and "config.json" in missing_model.stderr


def test_offline_pretrained_model_fails_clearly(tmp_path, catalog_dir):
    proc = run_cli(
        "ingest",
        catalog_dir / "catalog.csv",
        "--db",
        tmp_path / "db",
        "--model",
        "clip-ViT-B-32",
        timeout=120,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    assert "clip-ViT-B-32" in proc.stderr and "--model DIR" in proc.stderr and "shelfsight demo" in proc.stderr


def test_kill_mid_ingest_then_resume_gives_exact_count(tmp_path, tiny_model_dir):
    run_cli("data", "generate", "--out", tmp_path / "cat", "--n", "300", "--seed", "9", check=True)
    db = tmp_path / "db"
    args = cli_args(
        "-v", "ingest", tmp_path / "cat" / "catalog.csv", "--db", db, "--model", tiny_model_dir, "--batch-size", "8"
    )
    proc = subprocess.Popen(
        [*args, "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        # Kill after a few batches are in (the pipeline logs each upsert at debug level).
        deadline = time.monotonic() + 120
        upserts = 0
        while time.monotonic() < deadline and upserts < 5:
            line = proc.stderr.readline()
            if not line:
                break
            upserts += "upserted" in line
        killed = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done = run_cli(
        "ingest", tmp_path / "cat" / "catalog.csv", "--db", db, "--model", tiny_model_dir, "--json", check=True
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert killed, "the first run finished before it could be killed"
    assert summary["unchanged"] >= 40 and summary["ingested"] > 0
    assert summary["ingested"] + summary["unchanged"] == 300
    assert json.loads(run_cli("stats", "--db", db, "--json", check=True).stdout)["count"] == 300


def test_search_json_and_errors(built_db, catalog_dir):
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))
    first = rows[0]
    proc = run_cli(
        "search", "--db", built_db, "--image", catalog_dir / first["image"], "--vectors", "image", "--json", check=True
    )
    hits = json.loads(proc.stdout)
    assert hits[0]["id"] == first["id"] and {"id", "score", "title", "vector_scores"} <= set(hits[0])
    proc = run_cli(
        "search",
        f"{first['title']}. {first['description']}",
        "--db",
        built_db,
        "--vectors",
        "text",
        "--json",
        check=True,
    )
    assert json.loads(proc.stdout)[0]["id"] == first["id"]
    proc = run_cli(
        "search",
        "red + " + str(catalog_dir / first["image"]),
        "--db",
        built_db,
        "--filter",
        "price<=50",
        "--fusion",
        "dbsf",
        "--json",
        check=True,
    )
    cheap = json.loads(proc.stdout)
    assert cheap and all(h["payload"]["price"] <= 50 for h in cheap)
    for bad in (
        ["search", "", "--db", built_db],
        ["search", "x", "--db", built_db, "--filter", "size=9"],
        ["search", "x", "--db", built_db, "--image", "missing.png"],
        ["search", "x", "--db", built_db, "--collection", "nope"],
    ):
        proc = run_cli(*bad)
        assert proc.returncode == 2 and proc.stderr.startswith("error:"), (bad, proc.stderr)
    tags = json.loads(
        run_cli("tag", "--db", built_db, "--labels", "shoe,bag,hat", "--threshold", "0", "--json", check=True).stdout
    )
    assert sum(tags.values()) == len(rows)


def _text_cosines_by_hand(db, weighted: list[tuple[str, float]]) -> dict[str, float]:
    """Each product's text-vector cosine with ``normalize(sum(w * embed(text)))``, worked outside the engine."""
    with SearchEngine.open(db) as engine:
        vectors = engine.embedder.encode_texts([t for t, _ in weighted])
        points = list(engine.store.scroll(engine.collection, with_vectors=True))
    unit = lambda v: np.asarray(v, dtype=np.float64) / np.linalg.norm(v)  # noqa: E731
    query = unit(sum(w * unit(v) for (_, w), v in zip(weighted, vectors)))
    return {p.payload["product_id"]: float(query @ unit(p.vectors["text"])) for p in points}


def test_query_syntax_weights_and_negative_terms(built_db):
    # "2:red bag -striped" is 2 x "red bag" minus NEGATIVE_WEIGHT x "striped", one text vector.
    cosines = _text_cosines_by_hand(built_db, [("red bag", 2.0), ("striped", -NEGATIVE_WEIGHT)])
    expected = sorted(cosines, key=cosines.get, reverse=True)[:5]
    misreadings = [  # what the scores would be if a piece of the syntax were dropped
        _text_cosines_by_hand(built_db, [("2:red bag -striped", 1.0)]),
        _text_cosines_by_hand(built_db, [("red bag striped", 1.0)]),
        _text_cosines_by_hand(built_db, [("red bag", 1.0), ("striped", -NEGATIVE_WEIGHT)]),
        _text_cosines_by_hand(built_db, [("red bag", 2.0)]),
    ]

    hits = json.loads(
        run_cli(
            "search", "2:red bag -striped", "--db", built_db, "--vectors", "text", "--limit", "5", "--json", check=True
        ).stdout
    )
    assert [h["id"] for h in hits] == expected
    for h in hits:
        got = h["vector_scores"]["text->text"]["score"]
        assert abs(got - cosines[h["id"]]) < 1e-4, (h["id"], got, cosines[h["id"]])
    for wrong in misreadings:  # the scores above tell each misreading apart
        assert max(abs(h["vector_scores"]["text->text"]["score"] - wrong[h["id"]]) for h in hits) > 1e-2

    # The human-readable listing: one line per hit, in rank order, with the same text cosines.
    text = run_cli("search", "2:red bag -striped", "--db", built_db, "--limit", "3", check=True).stdout
    assert text.count("\n") == 3
    lines = text.splitlines()
    for rank, line in enumerate(lines, start=1):
        m = re.match(r"\s*(\d+)\. (\d+\.\d{4})  (\S+)  .*\btext->text (-?\d\.\d{3})\b", line)
        assert m, line
        assert int(m.group(1)) == rank
        assert abs(float(m.group(4)) - cosines[m.group(3)]) <= 0.0006, line


def test_cli_ignores_a_configured_server_unless_asked(built_db, monkeypatch):
    # A developer with QDRANT_URL exported must not see the suite write into that server's collection.
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("SHELFSIGHT_COLLECTION", "not-this-one")
    stats = json.loads(run_cli("stats", "--db", built_db, "--json", check=True).stdout)
    assert stats["collection"] == "products" and stats["count"] == 48
    asked = run_cli("stats", "--db", built_db, "--json", env={"QDRANT_URL": "http://127.0.0.1:9"})
    assert asked.returncode != 0  # a test that asks for a server gets it
