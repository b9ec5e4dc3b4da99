"""Typed parquet tables (every table has a fixed pyarrow schema, and an empty one keeps its dtypes),
written through :mod:`hpa_batch.core.atomic`, and the parquet readers that name a damaged file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hpa_batch.core.atomic import atomic_path, json_text
from hpa_batch.core.errors import reason_of

if TYPE_CHECKING:
    from hpa_batch.core.labels import LabelCatalog


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert ``df`` to an arrow table of exactly ``schema`` (column order and types).

    Raises
    ------
    ValueError
        If a schema column is missing from ``df``.
    """
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"table is missing column(s) {missing}")
    if len(df) == 0:
        return schema.empty_table()
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


#: Schema metadata key of the class names a table's ``*prob_k`` columns stand for.
CLASSES_KEY = b"hpa_batch.classes"


def with_classes(schema: pa.Schema, catalog: LabelCatalog) -> pa.Schema:
    """``schema`` naming the catalog's classes in its metadata (``hpa_batch.classes``: JSON with the
    catalog's name and its class names in ``k`` order), so a reader can name every ``*prob_k`` column
    and label id without this package (:func:`read_classes`)."""
    meta = {
        **(schema.metadata or {}),
        CLASSES_KEY: json.dumps({"catalog": catalog.name, "classes": list(catalog.classes)}).encode(),
    }
    return schema.with_metadata(meta)


def read_class_metadata(path: str | Path) -> dict[str, Any] | None:
    """What a table's metadata records of its classes (:func:`with_classes`): ``catalog`` (its name)
    and ``classes`` (names in ``k`` order); None when it records nothing."""
    meta = read_schema(path).metadata or {}
    return dict(json.loads(meta[CLASSES_KEY])) if CLASSES_KEY in meta else None


def read_classes(path: str | Path) -> list[str] | None:
    """The class names a table's metadata records (:func:`with_classes`), or None."""
    about = read_class_metadata(path)
    return None if about is None else list(about["classes"])


#: Schema metadata of a predictions table (``results/predictions/{model}/{shard}.parquet``): the model,
#: its architecture, its encoder (heads on embeddings) and whether that encoder was random-init, and the
#: per-class thresholds its ``predicted`` column used.
PREDICTIONS_KEY = b"hpa_batch.predictions"


def with_predictions_about(schema: pa.Schema, about: dict[str, Any]) -> pa.Schema:
    """``schema`` with ``about`` (JSON values) as its :data:`PREDICTIONS_KEY` metadata."""
    return schema.with_metadata({**(schema.metadata or {}), PREDICTIONS_KEY: json_text(about, indent=None).encode()})


def read_predictions_about(path: str | Path) -> dict[str, Any]:
    """The :data:`PREDICTIONS_KEY` metadata of a predictions table ({} for one written before it)."""
    meta = read_schema(path).metadata or {}
    return dict(json.loads(meta[PREDICTIONS_KEY])) if PREDICTIONS_KEY in meta else {}


def write_table(df: pd.DataFrame, schema: pa.Schema, path: str | Path) -> None:
    """Write ``df`` as parquet with ``schema`` (:func:`atomic_path`: no partial file is ever seen)."""
    with atomic_path(path) as tmp:
        pq.write_table(to_arrow(df, schema), tmp)


def read_parquet(path: str | Path, **kwargs: object) -> pd.DataFrame:
    """``pandas.read_parquet`` that names a damaged file: "<file> is damaged (<reason>): run hpa-batch
    repair <file>" (:class:`hpa_batch.core.errors.DamagedFileError`) instead of a codec error."""
    from hpa_batch.core.errors import reading

    with reading(path):
        return pd.read_parquet(path, **kwargs)


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """``pyarrow.parquet.ParquetFile`` (footer read) that names a damaged file (:func:`read_parquet`)."""
    from hpa_batch.core.errors import reading

    with reading(path):
        return pq.ParquetFile(path)


def read_schema(path: str | Path) -> pa.Schema:
    """``pyarrow.parquet.read_schema`` that names a damaged file (:func:`read_parquet`)."""
    from hpa_batch.core.errors import reading

    with reading(path):
        return pq.read_schema(path)


def read_arrow(path: str | Path, **kwargs: object) -> pa.Table:
    """``pyarrow.parquet.read_table`` that names a damaged file (:func:`read_parquet`)."""
    from hpa_batch.core.errors import reading

    with reading(path):
        return pq.read_table(path, **kwargs)


# --------------------------------------------------------------------------------------- checks
def parquet_problem(
    path: str | Path, *, columns: tuple[str, ...] = (), prefixes: tuple[str, ...] = (), deep: bool = False
) -> str | None:
    """Why the parquet table ``path`` is damaged, or None: its footer (every row group decoded with
    ``deep``), the ``columns`` its readers need and at least one column starting with each of
    ``prefixes`` (``prob_``: one per class)."""
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        if deep:
            for k in range(pf.num_row_groups):
                pf.read_row_group(k)
    except Exception as exc:  # noqa: BLE001 (any decoder failure is the damage to report)
        return f"not a readable parquet table: {reason_of(exc)}"
    missing = [c for c in columns if c not in names]
    missing += [f"{p}*" for p in prefixes if not any(n.startswith(p) for n in names)]
    return f"no column {', '.join(missing)}" if missing else None


def parquet_rows(path: str | Path) -> int | None:
    """Rows of the parquet table ``path`` (its footer), None when it does not open."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 (the table's own check reports it)
        return None


def text_table_problem(path: str | Path, sep: str) -> str | None:
    """Why the TSV (``sep`` tab) or CSV table ``path`` is damaged, or None: UTF-8, and every row as many
    fields as its header (the csv module)."""
    import csv

    kind = "TSV" if sep == "\t" else "CSV"
    csv.field_size_limit(2**31 - 1)  # a submission's PredictionString holds every cell of an image
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter=sep)
            header = next(rows, None)
            for k, row in enumerate(rows, start=2):
                if header is not None and len(row) != len(header):
                    return f"not a readable {kind} table: line {k} has {len(row)} fields, the header {len(header)}"
    except (UnicodeDecodeError, csv.Error) as exc:
        return f"not a readable {kind} table: {reason_of(exc)}"
    return None
