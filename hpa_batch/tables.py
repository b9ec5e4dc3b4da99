"""Typed parquet tables: every table has a fixed pyarrow schema, and an empty one keeps its dtypes."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


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


def write_table(df: pd.DataFrame, schema: pa.Schema, path: str | Path) -> None:
    """Write ``df`` as parquet with ``schema``; temp file + rename so no partial file is ever seen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(to_arrow(df, schema), tmp)
    tmp.replace(path)
