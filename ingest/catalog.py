"""Read a product catalog (CSV, TSV, JSONL, JSON, Parquet) with pandas into validated Products.

Bad rows are not fatal: each becomes a RowError (row number, product id, reason, hint) and the
rest of the catalog goes on. Only an unreadable file or a missing id column stops the read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Catalog:
    """A read catalog: good rows, bad rows, and the payload fields with their index kinds."""

    path: Path
    rows: list[CatalogRow]
    errors: list[RowError]
    fields: dict[str, str]  # field -> "keyword" | "float"

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def read_frame(path: Path) -> pd.DataFrame:
    """Load a catalog file into a DataFrame, choosing the reader by extension."""
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path}")
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith(".csv"):
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if name.endswith(".tsv"):
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if name.endswith((".jsonl", ".ndjson")):
            return pd.read_json(path, lines=True, dtype=False)
        if name.endswith(".json"):
            return pd.read_json(path, dtype=False)
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
    except Exception as exc:  # pandas raises many parser errors; all mean "unreadable file"
        raise CatalogError(f"cannot read catalog {path}: {type(exc).__name__}: {exc}") from exc
    raise CatalogError(
        f"unknown catalog format: {path.name}; use .csv, .tsv, .jsonl, .json or .parquet (optionally .gz)"
    )


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


def _numeric_columns(frame: pd.DataFrame, candidates: list[str]) -> set[str]:
    numeric = set()
    for col in candidates:
        cells = [c for c in map(_clean, frame[col].tolist()) if c is not None]
        if not cells:
            continue
        parsed = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce")
        if parsed.notna().mean() >= _NUMERIC_SHARE:
            numeric.add(col)
    return numeric


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
    """Read and validate a catalog. Raises CatalogError only when nothing can be read."""
    path = Path(path)
    frame = read_frame(path)
    schema = _schema(frame, columns, path)
    rows: list[CatalogRow] = []
    errors: list[RowError] = []
    first_seen: dict[str, int] = {}
    for number, record in enumerate(frame.to_dict(orient="records"), start=1):
        result = _read_row(number, record, schema, first_seen)
        if isinstance(result, RowError):
            errors.append(result)
        else:
            rows.append(result)
    return Catalog(path=path, rows=rows, errors=errors, fields=schema.fields)


def _schema(frame: pd.DataFrame, columns: Columns, path: Path) -> _Schema:
    if columns.id not in frame.columns:
        raise CatalogError(
            f"catalog {path} has no id column {columns.id!r} (columns: {', '.join(map(str, frame.columns))}); "
            "pass --id-column NAME"
        )
    roles = {columns.id, columns.title, columns.description, columns.image}
    extra = [str(c) for c in frame.columns if c not in roles]
    clashes = [c for c in extra if c in RESERVED_FIELDS]
    if clashes:
        raise CatalogError(f"catalog columns {clashes} clash with fields Shelfsight stores itself; rename them")
    return _Schema(columns, extra, _numeric_columns(frame, extra))


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
            number_value = pd.to_numeric(value, errors="coerce")
            if pd.isna(number_value) or not math.isfinite(float(number_value)):
                return col, value
            value = float(number_value)
        elif not isinstance(value, (str, list)):
            value = str(value)
        payload[col] = value
    return payload
