"""Catalog parsing: formats, column mapping, and every kind of bad row reported with a reason."""

import json
from pathlib import Path

import pandas as pd
import pytest
from shelfsight.ingest.catalog import CatalogError, Columns, read_catalog


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text(text)
    return path


def test_csv_fields_and_kinds(tmp_path):
    cat = read_catalog(
        _csv(tmp_path, "id,title,description,price,category,image\n1,Red shoe,Nice,19.99,shoe,a.jpg\n2,Bag,,5,bag,\n")
    )
    assert [r.product.id for r in cat.rows] == ["1", "2"]
    assert cat.fields == {"price": "float", "category": "keyword"}
    first = cat.rows[0].product
    assert first.fields == {"price": 19.99, "category": "shoe"} and first.image == "a.jpg"
    assert first.text == "Red shoe. Nice"
    assert cat.rows[1].product.image is None


def test_bad_rows_reported_rest_kept(tmp_path):
    cat = read_catalog(
        _csv(
            tmp_path,
            "id,title,price,image\n"
            "1,Shoe,10,a.jpg\n"
            ",No id,10,b.jpg\n"
            "1,Duplicate,10,c.jpg\n"
            "3,Bad price,ten,d.jpg\n"
            "4,,,\n"
            "5,Fine,12,\n"
            "6,Also fine,13,\n",
        )
    )
    assert [r.product.id for r in cat.rows] == ["1", "5", "6"]
    reasons = {(e.row, e.product_id): e.reason for e in cat.errors}
    assert reasons[(2, None)] == "missing product id"
    assert "duplicate id, first seen at row 1" in reasons[(3, "1")]
    assert "not a number" in reasons[(4, "3")]
    assert "nothing to embed" in reasons[(5, "4")]
    assert all(e.hint for e in cat.errors)


def test_a_number_column_holding_a_list_or_infinity_reports_those_rows(tmp_path):
    """JSONL can put anything in a number column: a list or Infinity there is a bad row with the
    usual reason, the column's other rows keep their numbers."""
    prices = [[1, 2], float("inf"), 5, "6.5", -0.0] + list(range(10))
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "title": "Mug", "price": p}) for i, p in enumerate(prices)))
    cat = read_catalog(path)
    assert cat.fields == {"price": "float"}
    reasons = {e.row: e.reason for e in cat.errors}
    assert reasons == {1: "price [1, 2] is not a number", 2: "price inf is not a number"}
    assert [r.product.fields["price"] for r in cat.rows[:3]] == [5.0, 6.5, 0.0]


def test_jsonl_and_parquet_and_column_mapping(tmp_path):
    rows = [{"sku": 10, "name": "Blue mug", "img": "m.jpg", "price": 7.5, "in_stock": True}]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    parquet = tmp_path / "c.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    columns = Columns(id="sku", title="name", image="img")
    for path in (jsonl, parquet):
        cat = read_catalog(path, columns)
        product = cat.rows[0].product
        assert (product.id, product.title, product.image) == ("10", "Blue mug", "m.jpg")
        # booleans become keywords: the engine cannot filter on booleans
        assert product.fields == {"price": 7.5, "in_stock": "true"}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, "not found"),
        ("c.xml", "<x/>", "unknown catalog format"),
        ("c.csv", "sku,title\n1,a\n", "no id column 'id'"),
        ("c.jsonl", "{not json", "cannot read catalog"),
        ("c.csv", "id,title,product_id\n1,a,b\n", "clash"),
    ],
)
def test_unreadable_catalogs(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CatalogError, match=message):
        read_catalog(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_streamed_in_small_chunks_the_catalog_reads_as_whole(tmp_path, fmt):
    """Rows stream chunk by chunk; a duplicate id across chunks, row numbers and the numeric kind of
    a column (decided over the whole file, not its first chunk) come out as if read at once."""
    records = [{"id": str(i), "title": f"Item {i}", "price": "n/a" if i == 1 else f"{i}.5"} for i in range(1, 12)]
    records.append({"id": "2", "title": "Again", "price": "3"})  # duplicate of a row in the first chunk
    frame = pd.DataFrame(records)
    path = tmp_path / f"catalog.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    cat = read_catalog(path)
    assert cat.total == 12 and cat.fields == {"price": "float"}
    chunks = list(cat.stream(size=5))
    assert len(chunks) == 3
    rows = [r for chunk_rows, _ in chunks for r in chunk_rows]
    errors = [e for _, chunk_errors in chunks for e in chunk_errors]
    assert [r.product.id for r in rows] == [str(i) for i in range(2, 12)]
    assert [(e.row, e.product_id) for e in errors] == [(1, "1"), (12, "2")]
    assert "duplicate id, first seen at row 2" in errors[1].reason
    assert [r.product.id for r in cat.rows] == [r.product.id for r in rows] and cat.errors == errors


def test_header_only_catalog_is_checked_for_its_id_column(tmp_path):
    with pytest.raises(CatalogError, match="no id column"):
        read_catalog(_csv(tmp_path, "sku,title\n"))
    assert read_catalog(_csv(tmp_path, "id,title\n")).rows == []


def test_a_field_first_seen_far_down_a_jsonl_catalog_is_kept(tmp_path):
    """The scan reads the file in chunks; a column that only later records bring (past the first
    chunk) is a payload field all the same, typed over all its cells."""
    path = tmp_path / "catalog.jsonl"
    lines = [json.dumps({"id": str(i), "title": f"Item {i}"}) for i in range(5000)]
    lines.append(json.dumps({"id": "late", "title": "Late item", "weight": 2.5, "brand": "Acme"}))
    path.write_text("\n".join(lines) + "\n")
    cat = read_catalog(path)
    assert cat.fields == {"weight": "float", "brand": "keyword"}
    last = [r for rows, _ in cat.stream() for r in rows][-1].product
    assert last.id == "late" and last.fields == {"weight": 2.5, "brand": "Acme"}
