"""Evaluation: metrics worked by hand, the query file format, and the harness over a real engine."""

from __future__ import annotations

import json
import math

import pytest
from shelfsight.evaluation.harness import MODES, evaluate, format_table
from shelfsight.evaluation.metrics import mean_metrics, ndcg_at_k, query_metrics, recall_at_k, reciprocal_rank
from shelfsight.evaluation.queries import read_queries
from shelfsight.evaluation.zero_shot import tagging_accuracy
from shelfsight.search.errors import BadInputError
from shelfsight.search.tagging import TEMPLATES


def test_metrics_worked_by_hand():
    ranked, relevant = ["b", "x", "a", "y"], {"a", "b"}
    assert recall_at_k(ranked, relevant, 1) == 1.0
    assert recall_at_k(ranked, relevant, 2) == 0.5  # one of two possible slots
    assert recall_at_k(ranked, relevant, 5) == 1.0
    assert reciprocal_rank(ranked, relevant) == 1.0
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3) = 1.6309
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))

    ranked = ["x", "y", "a"]
    assert reciprocal_rank(ranked, {"a"}) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, {"a"}, 1) == 0.0
    assert ndcg_at_k(ranked, {"a"}, 10) == pytest.approx(0.5)  # 1/log2(4)
    assert reciprocal_rank(ranked, {"z"}) == 0.0


def test_recall_is_capped_by_k():
    many = {f"p{i}" for i in range(30)}
    assert recall_at_k([f"p{i}" for i in range(10)], many, 10) == 1.0
    assert recall_at_k([f"p{i}" for i in range(5)] + ["x"] * 5, many, 10) == 0.5
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 10)


def test_mean_metrics():
    a = query_metrics(["a", "b"], {"a"})
    b = query_metrics(["b", "a"], {"a"})
    mean = mean_metrics([a, b])
    assert mean["recall@1"] == 0.5
    assert mean["mrr"] == pytest.approx(0.75)
    assert mean["hit@10"] == 1.0
    assert query_metrics(["x"] * 10 + ["a"], {"a"})["hit@10"] == 0.0
    assert math.isnan(mean_metrics([])["mrr"])


def test_read_queries_resolves_images_and_names_bad_lines(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(
        json.dumps({"query": "red bag", "relevant": ["P1"]})
        + "\n\n"
        + json.dumps({"query": "red", "image": "images/x.jpg", "relevant": ["P2", 3], "suite": "composed"})
        + "\n"
        + json.dumps({"image": "https://example.com/a.jpg", "relevant": ["P3"]})
        + "\n"
    )
    q = read_queries(f)
    assert [x.suite for x in q] == ["text", "composed", "image"]
    assert q[1].image == str((tmp_path / "images" / "x.jpg").resolve())
    assert q[1].relevant == ("P2", "3") and q[1].parts == "text+image"
    assert q[2].image == "https://example.com/a.jpg"

    for line, message in [
        ("not json", "line 1: not JSON"),
        (json.dumps({"query": "x"}), "'relevant' must be a list"),
        (json.dumps({"relevant": ["a"]}), "give 'query', 'image' or both"),
        (json.dumps({"query": "", "relevant": ["a"]}), "'query' must be non-empty"),
    ]:
        f.write_text(line + "\n")
        with pytest.raises(BadInputError, match=message):
            read_queries(f)
    with pytest.raises(BadInputError, match="not found"):
        read_queries(tmp_path / "missing.jsonl")


def test_harness_scores_every_mode_and_each_part(engine, catalog_dir, tmp_path):
    products = [json.loads(line) for line in (catalog_dir / "queries.jsonl").read_text().splitlines()]
    composed = next(q for q in products if q["suite"] == "composed")
    reference_id = composed["image"].split("/")[-1].removesuffix(".jpg")
    f = tmp_path / "q.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                # A product's own image finds the product first in the image vector, whatever the model.
                {"image": str(catalog_dir / composed["image"]), "relevant": [reference_id], "suite": "self"},
                {**composed, "image": str(catalog_dir / composed["image"])},
                {"query": "red bag", "relevant": ["no-such-product"], "suite": "absent"},
            ]
        )
    )
    report = evaluate(engine, read_queries(f))
    assert report.products == 48
    assert report.row("self", "image", "image-vector").metrics["recall@1"] == 1.0
    assert report.row("self", "image", "image-vector").metrics["mrr"] == 1.0
    for parts in ("text+image", "text", "image"):
        for mode in MODES:  # the fixture collection has an early-fused vector
            if mode == "bm25" and parts == "image":
                continue  # words only: an image alone has none
            row = report.row("composed", parts, mode)
            assert row.queries == 1 and row.metrics and all(0.0 <= v <= 1.0 for v in row.metrics.values())
    absent = report.row("absent", "text", "rrf").metrics
    assert absent and all(v == 0.0 for name, v in absent.items() if name != "empty")
    table = format_table(report)
    assert "composed" in table and "image-vector" in table and "ndcg@10" in table

    with pytest.raises(BadInputError, match="unknown eval mode"):
        evaluate(engine, read_queries(f), ["rrf", "cosine"])


def test_tagging_accuracy_reports_ensemble_and_each_template(engine):
    result = tagging_accuracy(engine.store, engine.embedder, engine.collection, "category")
    assert result["products"] == 48 and len(result["labels"]) >= 2
    assert set(result["templates"]) == set(TEMPLATES)
    assert 0.0 <= result["ensemble"] <= 1.0
    assert result["best_template"] in TEMPLATES
    with pytest.raises(BadInputError, match="at least two values"):
        tagging_accuracy(engine.store, engine.embedder, engine.collection, "no_such_field")
