"""Ingest: bad rows reported and skipped, good rows all in, re-runs incremental, spaces never mixed."""

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image
from shelfsight.ingest.catalog import read_catalog
from shelfsight.ingest.pipeline import IngestOptions, ingest_catalog
from shelfsight.search.embedder import Embedder
from shelfsight.search.engine import SearchEngine
from shelfsight.search.errors import IncompatibleCollectionError
from shelfsight.search.images import ImagePolicy
from shelfsight.search.records import point_id
from shelfsight.train.model_init import init_model


def _broken_catalog(catalog_dir: Path, tmp_path: Path) -> tuple[Path, set[str], dict[str, str]]:
    """The generated catalog plus one row per kind of breakage; returns (csv, good ids, bad id -> reason)."""
    out = tmp_path / "broken"
    shutil.copytree(catalog_dir, out)
    with (out / "catalog.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    good = {r["id"] for r in rows}
    (out / "images" / "empty.jpg").write_bytes(b"")
    data = (out / rows[0]["image"]).read_bytes()
    (out / "images" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (out / "images" / "notes.jpg").write_text("this is not an image")
    Image.new("RGB", (3000, 3000)).save(out / "images" / "huge.png")
    base = dict(rows[0], title="Broken thing", description="")
    bad = {
        "B-missing": ("images/nope.jpg", "not found"),
        "B-empty": ("images/empty.jpg", "empty"),
        "B-truncated": ("images/truncated.jpg", "truncated"),
        "B-notimage": ("images/notes.jpg", "not an image"),
        "B-huge": ("images/huge.png", "pixel cap"),
        "B-loopback": ("http://127.0.0.1:9/x.jpg", "non-public"),
        "B-file": ("file:///etc/hostname", "scheme"),
    }
    extra = [dict(base, id=pid, image=image) for pid, (image, _) in bad.items()]
    extra.append(dict(base, id="", image=rows[1]["image"]))  # missing id
    extra.append(dict(base, id=rows[2]["id"], title="Duplicate"))  # duplicate id
    extra.append(dict(base, id="T-textonly", title="Plain text product", image=""))
    with (out / "catalog.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        # interleave so bad rows sit between good ones
        for i, row in enumerate(rows):
            writer.writerow(row)
            if i < len(extra):
                writer.writerow(extra[i])
    good.add("T-textonly")
    return out / "catalog.csv", good, {pid: reason for pid, (_, reason) in bad.items()}


def test_broken_inputs_skipped_good_rows_in(store, collection_name, embedder, catalog_dir, tmp_path):
    path, good, bad = _broken_catalog(catalog_dir, tmp_path)
    options = IngestOptions(collection=collection_name, batch_size=8, images=ImagePolicy(max_pixels=4_000_000))
    report = ingest_catalog(path, store, embedder, options)
    assert store.count(collection_name) == len(good) == report.ingested
    assert report.text_only == 1
    stored = {p.payload["product_id"] for p in store.scroll(collection_name)}
    assert stored == good
    reasons = {e.product_id: e.reason for e in report.errors}
    for pid, reason in bad.items():
        assert reason in reasons[pid], (pid, reasons.get(pid))
    assert any(e.product_id is None and "missing product id" in e.reason for e in report.errors)
    assert any("duplicate" in e.reason for e in report.errors)
    assert report.skipped == len(bad) + 2
    assert all(e.hint and e.row > 0 for e in report.errors)
    text_only = store.retrieve(collection_name, [point_id("T-textonly")], with_vectors=True)[0]
    assert set(text_only.vectors) == {"text"}

    again = ingest_catalog(path, store, embedder, options)
    assert again.ingested == 0 and again.unchanged == len(good)


def test_changed_rows_only(store, collection_name, embedder, catalog_dir, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(catalog_dir, out)
    options = IngestOptions(collection=collection_name)
    first = ingest_catalog(out / "catalog.csv", store, embedder, options)
    with (out / "catalog.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["price"] = "1.00"  # payload only: no re-embedding
    rows[1]["title"] = "A renamed product"  # text changed: re-embed
    with (out / "catalog.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])  # last product left out
    second = ingest_catalog(out / "catalog.csv", store, embedder, IngestOptions(collection=collection_name, prune=True))
    assert (second.ingested, second.updated, second.pruned) == (1, 1, 1)
    assert second.unchanged == first.ingested - 3
    assert store.count(collection_name) == first.ingested - 1
    assert store.retrieve(collection_name, [point_id(rows[0]["id"])])[0].payload["price"] == 1.0


def test_other_model_refused_then_reindexed(store, collection_name, embedder, catalog_dir, tmp_path):
    path = catalog_dir / "catalog.csv"
    ingest_catalog(path, store, embedder, IngestOptions(collection=collection_name))
    other = Embedder(str(init_model("tiny", tmp_path / "other", seed=1)))
    with pytest.raises(IncompatibleCollectionError, match="--reindex"):
        ingest_catalog(path, store, other, IngestOptions(collection=collection_name))
    report = ingest_catalog(path, store, other, IngestOptions(collection=collection_name, reindex=True))
    assert report.ingested == len(read_catalog(path).rows)
    assert store.get_meta(collection_name).model == other.model_id


def test_long_text_truncated_and_counted(store, collection_name, embedder, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,title,description\n1,Long,"' + "word " * 200 + '"\n2,Short,ok\n')
    report = ingest_catalog(path, store, embedder, IngestOptions(collection=collection_name))
    assert (report.ingested, report.truncated, report.text_only) == (2, 1, 2)


def test_reingest_keeps_zero_shot_tags_and_replaces_catalog_fields(
    store, collection_name, embedder, catalog_dir, tmp_path
):
    from shelfsight.search.tagging import tag_collection

    options = IngestOptions(collection=collection_name)
    ingest_catalog(catalog_dir / "catalog.csv", store, embedder, options)
    tag_collection(store, embedder, collection_name, ["shoe", "bag", "hat"], threshold=0.0)
    rows = list(csv.DictReader((catalog_dir / "catalog.csv").open()))
    rows[0]["brand"] = "Renamed"
    for r in rows:
        r["image"] = str(catalog_dir / r["image"])
    changed = tmp_path / "changed.csv"
    with changed.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    report = ingest_catalog(changed, store, embedder, options)
    assert (report.ingested, report.updated, report.unchanged) == (0, 1, 47)
    points = {p.payload["product_id"]: p.payload for p in store.scroll(collection_name)}
    assert points[rows[0]["id"]]["brand"] == "Renamed"
    # the new name is searchable at once: the point's BM25 words follow its fields, unembedded
    engine = SearchEngine(store, embedder, collection_name)
    assert [h.id for h in engine.search("renamed", vectors=["bm25"])] == [rows[0]["id"]]
    assert len(points) == 48
    assert all(p["tag"] in ("shoe", "bag", "hat") and "tag_score" in p for p in points.values())
