"""`shelfsight train`, `eval` and `demo` as a user runs them."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import run_cli


def test_train_fine_tunes_and_the_result_ingests(tmp_path, tiny_model_dir, catalog_dir):
    out = tmp_path / "tuned"
    proc = run_cli(
        "train",
        "--catalog",
        catalog_dir / "catalog.csv",
        "--out",
        out,
        "--init",
        tiny_model_dir,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        check=True,
    )
    assert "validation text->image recall@1" in proc.stdout
    assert json.loads((out / "training.json").read_text())["config"]["init"] == str(tiny_model_dir)
    run_cli("ingest", catalog_dir / "catalog.csv", "--db", tmp_path / "db", "--model", out, check=True)
    missing = run_cli("train", "--catalog", tmp_path / "none.csv", "--out", tmp_path / "x", "--epochs", "1")
    assert missing.returncode == 2 and "none.csv" in missing.stderr


def test_eval_prints_a_table_json_and_a_plot(built_db, catalog_dir, tmp_path):
    queries = catalog_dir / "queries.jsonl"
    proc = run_cli("eval", "--db", built_db, "--queries", queries, "--tags", "category", "--plot", tmp_path / "e.png")
    assert proc.returncode == 0, proc.stderr
    assert "kind+colour" in proc.stdout and "composed" in proc.stdout and "prompt ensemble" in proc.stdout
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"

    report = json.loads(run_cli("eval", "--db", built_db, "--queries", queries, "--json", check=True).stdout)
    suites = {(r["suite"], r["parts"], r["mode"]) for r in report["rows"]}
    assert ("kind+colour", "text", "early") in suites
    assert {("composed", p, "rrf") for p in ("text+image", "text", "image")} <= suites
    lines = [json.loads(line) for line in queries.read_text().splitlines()]
    for row in report["rows"]:  # every suite's row counts that suite's queries
        assert row["queries"] == sum(1 for q in lines if q["suite"] == row["suite"])
    assert {"brand+kind", "exact id", "misspelled", "material+kind", "nonsense"} <= {r["suite"] for r in report["rows"]}
    nonsense = next(r for r in report["rows"] if r["suite"] == "nonsense" and r["mode"] == "dbsf+bm25")
    assert 0.0 <= nonsense["metrics"]["empty"] <= 1.0

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "red"}\n')
    proc = run_cli("eval", "--db", built_db, "--queries", bad)
    assert proc.returncode == 2 and "line 1" in proc.stderr


@pytest.mark.slow
def test_demo_offline_trains_once_then_uses_the_cache(tmp_path):
    work = tmp_path / "demo"
    first = run_cli("demo", "--workdir", work, "--offline", "--no-ui", "--minutes", "0.1", timeout=600)
    assert first.returncode == 0, first.stderr
    assert "offline by request -> training the demo model" in first.stdout
    assert "ingested 800" in first.stdout and '"red bag":' in first.stdout
    assert "quality on the unseen demo catalog" in first.stdout
    saved = json.loads((work / "eval.json").read_text())
    assert saved["tagging"]["field"] == "category" and saved["products"] == 800
    second = run_cli("demo", "--workdir", work, "--offline", "--no-ui", timeout=300)
    assert second.returncode == 0, second.stderr
    assert "cached demo model" in second.stdout and "ingested 0, unchanged 800" in second.stdout
