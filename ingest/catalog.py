"""Read a product catalog (CSV, TSV, JSONL, JSON, Parquet) with pandas into validated Products.

Bad rows are not fatal: each becomes a RowError (row number, product id, reason, hint) and the
rest of the catalog goes on. Only an unreadable file or a missing id column stops the read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from shelfsight.search.errors import BadInputError
from shelfsight.search.records import RESERVED_FIELDS, Product

# Share of a text column's non-empty cells that must parse as numbers to treat it as numeric.
_NUMERIC_SHARE = 0.75


class CatalogError(BadInputError):
    """The catalog as a whole cannot be read (missing file, unknown format, no id column)."""


@dataclass(frozen=True)
class Columns:
    """Which catalog columns play which role; everything else becomes filterable payload."""

    id: str = "id"
    title: str = "title"
    description: str = "description"
    image: str = "image"

    @property
    def roles(self) -> set[str]:
        """The columns that play a role (not payload)."""
        return {self.id, self.title, self.description, self.image}


@dataclass(frozen=True)
class RowError:
    """Why one catalog row was skipped, and how to fix it. ``row`` counts data rows from 1."""

    row: int
    product_id: str | None
    reason: str
    hint: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "id": self.product_id, "reason": self.reason, "hint": self.hint}


@dataclass(frozen=True)
class CatalogRow:
    row: int
    product: Product


# Data rows read from the file at a time: memory stays bounded however long the catalog is.
READ_CHUNK = 4096


class Catalog:
    """A catalog file, scanned once for its columns, their kinds and its size; its rows are read
    again in chunks (``stream``) as the ingest goes, so memory does not grow with the catalog.
    ``rows`` and ``errors`` read the whole file into lists, for small catalogs and tests."""

    def __init__(self, path: Path, schema: _Schema, total: int, with_images: int):
        self.path = path
        self.schema = schema
        self.total = total  # data rows in the file, bad ones included
        self.with_images = with_images  # data rows with an image reference

    @property
    def fields(self) -> dict[str, str]:
        """Payload fields and their index kinds: field -> "keyword" | "float"."""
        return self.schema.fields

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def stream(self, size: int = READ_CHUNK) -> Iterator[tuple[list[CatalogRow], list[RowError]]]:
        """The file again, ``size`` data rows at a time: each chunk's good rows and bad rows."""
        first_seen: dict[str, int] = {}
        number = 0
        for frame in read_frames(self.path, size):
            rows: list[CatalogRow] = []
            errors: list[RowError] = []
            for record in _records(frame, self.schema):
                number += 1
                result = _read_row(number, record, self.schema, first_seen)
                (errors if isinstance(result, RowError) else rows).append(result)  # type: ignore[arg-type]
            yield rows, errors

    @cached_property
    def _whole(self) -> tuple[list[CatalogRow], list[RowError]]:
        rows: list[CatalogRow] = []
        errors: list[RowError] = []
        for chunk_rows, chunk_errors in self.stream():
            rows += chunk_rows
            errors += chunk_errors
        return rows, errors

    @property
    def rows(self) -> list[CatalogRow]:
        return self._whole[0]

    @property
    def errors(self) -> list[RowError]:
        return self._whole[1]


def read_frames(path: Path, size: int = READ_CHUNK) -> Iterator[pd.DataFrame]:
    """The catalog file as DataFrames of at most ``size`` rows, the reader chosen by extension
    (CSV, TSV and JSONL are parsed chunk by chunk, Parquet by record batch; a JSON array is read
    whole, as its format requires)."""
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path}")
    try:
        yield from _frames(path, size)
    except CatalogError:
        raise
    except Exception as exc:  # pandas raises many parser errors; all mean "unreadable file"
        raise CatalogError(f"cannot read catalog {path}: {type(exc).__name__}: {exc}") from exc


def _frames(path: Path, size: int) -> Iterator[pd.DataFrame]:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        sep = "\t" if name.endswith(".tsv") else ","
        with pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, chunksize=size) as chunks:
            empty = True
            for chunk in chunks:
                empty = False
                yield chunk
        if empty:  # a header and no rows: still one (empty) frame, so the columns are checked
            yield pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, nrows=0)
    elif name.endswith((".jsonl", ".ndjson")):
        with pd.read_json(path, lines=True, dtype=False, chunksize=size) as chunks:
            yield from chunks
    elif name.endswith(".json"):
        frame = pd.read_json(path, dtype=False)
        yield from (frame.iloc[start : start + size] for start in range(0, max(len(frame), 1), size))
    elif name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            yield batch.to_pandas()
    else:
        raise CatalogError(
            f"unknown catalog format: {path.name}; use .csv, .tsv, .jsonl, .json or .parquet (optionally .gz)"
        )


def _records(frame: pd.DataFrame, schema: _Schema) -> Iterator[dict[str, Any]]:
    """The frame's rows as dicts of clean cells (``_clean``), read a column at a time (pandas'
    own row dicts cost twice as much), with the numeric columns' cells parsed a column at a
    time too: a cell that is a finite number becomes a float, any other stays as it was, for
    ``_payload`` to report."""
    names = [str(c) for c in frame.columns]
    columns = [[_clean(v) for v in frame[c].tolist()] for c in frame.columns]
    for name, cells in zip(names, columns):
        if name in schema.numeric:
            _parse_numbers(cells)
    for values in zip(*columns):
        yield dict(zip(names, values))


def _parse_numbers(cells: list[Any]) -> None:
    """Each cell that parses as a finite number, as a float, in place."""
    for i, (cell, number) in enumerate(zip(cells, _as_numbers(cells))):
        if cell is not None and isinstance(number, (int, float)) and math.isfinite(number):
            cells[i] = float(number) + 0.0  # -0 reads as 0


def _as_numbers(cells: list[Any]) -> list[Any]:
    """Each cell parsed as a number, NaN where it is not one: a column at a time."""
    try:
        parsed: list[Any] = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce").tolist()
        return parsed
    except (TypeError, ValueError):  # a cell pandas cannot even look at (a list): one at a time
        return [_number(cell) for cell in cells]


def _number(cell: Any) -> float:
    """One cell as a number; NaN for anything that is not one number (a list is not, even of one)."""
    try:
        value = pd.to_numeric(cell, errors="coerce")
        return float(value) if pd.api.types.is_scalar(value) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _clean(value: Any) -> Any:
    """A cell as a plain JSON value; None for empty or missing."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalar
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"  # the engine cannot filter on booleans; keywords can
    if isinstance(value, int):
        return float(value)
    return value


def _numeric_counts(frame: pd.DataFrame, roles: set[str], counts: dict[str, list[int]]) -> None:
    """Add, for each of the frame's columns that plays no role, its non-empty cells and how many of
    them parse as numbers (``counts[column] = [cells, numbers]``)."""
    for col in frame.columns:
        if str(col) in roles:
            continue
        cells = [c for c in map(_clean, frame[col].tolist()) if c is not None]
        total = counts.setdefault(str(col), [0, 0])
        if cells:
            total[0] += len(cells)
            total[1] += sum(not pd.isna(number) for number in _as_numbers(cells))


@dataclass(frozen=True)
class _Schema:
    """The catalog's columns: which play a role, which become payload, which hold numbers."""

    columns: Columns
    extra: list[str]
    numeric: set[str]

    @property
    def fields(self) -> dict[str, str]:
        return {c: ("float" if c in self.numeric else "keyword") for c in self.extra}


def read_catalog(path: str | Path, columns: Columns = Columns()) -> Catalog:
    """Scan a catalog: its columns, which hold numbers, how many rows. Raises CatalogError only when
    nothing can be read; bad rows come out as the rows are streamed (``Catalog.stream``).

    The columns are those of every chunk together, in the order first seen: a JSONL record far down
    the file may bring a field the first records lack."""
    path = Path(path)
    seen: dict[str, None] = {}
    counts: dict[str, list[int]] = {}
    total = with_images = 0
    for frame in read_frames(path):
        seen.update(dict.fromkeys(map(str, frame.columns)))
        _numeric_counts(frame, columns.roles, counts)
        total += len(frame)
        if columns.image in frame.columns:
            with_images += sum(_clean(v) is not None for v in frame[columns.image].tolist())
    extra = _payload_columns(list(seen), columns, path)
    numeric = {c for c in extra if counts[c][0] and counts[c][1] / counts[c][0] >= _NUMERIC_SHARE}
    return Catalog(path, _Schema(columns, extra, numeric), total, with_images)


def _payload_columns(names: list[str], columns: Columns, path: Path) -> list[str]:
    if columns.id not in names:
        raise CatalogError(
            f"catalog {path} has no id column {columns.id!r} (columns: {', '.join(names)}); pass --id-column NAME"
        )
    extra = [c for c in names if c not in columns.roles]
    clashes = [c for c in extra if c in RESERVED_FIELDS]
    if clashes:
        raise CatalogError(f"catalog columns {clashes} clash with fields Shelfsight stores itself; rename them")
    return extra


def _read_row(
    number: int, record: dict[str, Any], schema: _Schema, first_seen: dict[str, int]
) -> CatalogRow | RowError:
    """One data row as a product, or the reason it is skipped (``first_seen`` tracks ids)."""
    columns = schema.columns
    product_id = _product_id(record.get(columns.id))
    if product_id is None:
        return RowError(number, None, "missing product id", f"fill the {columns.id!r} column")
    if product_id in first_seen:
        return RowError(
            number,
            product_id,
            f"duplicate id, first seen at row {first_seen[product_id]}",
            "give every product its own id; the first row was kept",
        )
    first_seen[product_id] = number
    title = _clean(record.get(columns.title)) or ""
    description = _clean(record.get(columns.description)) or ""
    image = _clean(record.get(columns.image))
    if not str(title) and not str(description) and image is None:
        return RowError(
            number, product_id, "nothing to embed: no title, description or image", "fill the title or the image column"
        )
    payload = _payload(record, schema)
    if isinstance(payload, tuple):
        col, value = payload
        return RowError(
            number, product_id, f"{col} {value!r} is not a number", f"write {col} as a plain number like 19.99"
        )
    image_ref = None if image is None else str(image)
    return CatalogRow(number, Product(product_id, str(title), str(description), image_ref, payload))


def _product_id(raw: Any) -> str | None:
    """Ids as text; a number read as 12.0 from a numeric column is the id "12"."""
    value = _clean(raw)
    if value is None:
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _payload(record: dict[str, Any], schema: _Schema) -> dict[str, Any] | tuple[str, Any]:
    """The row's payload fields, or (column, value) of the first number that does not parse."""
    payload: dict[str, Any] = {}
    for col in schema.extra:
        value = _clean(record.get(col))
        if value is None:
            continue
        if col in schema.numeric:
            if not isinstance(value, float) or not math.isfinite(value):  # ``_records`` made numbers floats
                return col, value
        elif not isinstance(value, (str, list)):
            value = str(value)
        payload[col] = value
    return payload
