"""Typed parquet tables (every table has a fixed pyarrow schema, and an empty one keeps its dtypes),
and the one atomic-write helper every stage uses (:func:`atomic_path`)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Write ``path`` (a file or a directory) all at once: yield a temporary sibling
    ``.{name}.{pid}.tmp`` to write, then rename it over ``path``; nothing partial is ever at ``path``.
    With ``keep_suffix`` the temporary ends with ``path``'s suffix too (for writers that pick their
    format by it, such as anndata's).

    On any error the temporary is removed and ``path`` keeps its previous content; a full disk is
    reported as "no space left on <folder>".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix if keep_suffix else ''}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # a directory cannot be renamed over a non-empty one
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on {path.parent} (writing {path.name})") from exc
        raise
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    """Write ``df`` as parquet with ``schema`` (:func:`atomic_path`: no partial file is ever seen)."""
    with atomic_path(path) as tmp:
        pq.write_table(to_arrow(df, schema), tmp)


def read_parquet(path: str | Path, **kwargs: object) -> pd.DataFrame:
    """``pandas.read_parquet`` that names a damaged file: "<file> is damaged (<reason>): run hpa-batch
    repair <file>" (:class:`hpa_batch.core.damage.DamagedFileError`) instead of a codec error."""
    from hpa_batch.core.damage import reading

    with reading(path):
        return pd.read_parquet(path, **kwargs)


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """``pyarrow.parquet.ParquetFile`` (footer read) that names a damaged file (:func:`read_parquet`)."""
    from hpa_batch.core.damage import reading

    with reading(path):
        return pq.ParquetFile(path)


def read_schema(path: str | Path) -> pa.Schema:
    """``pyarrow.parquet.read_schema`` that names a damaged file (:func:`read_parquet`)."""
    from hpa_batch.core.damage import reading

    with reading(path):
        return pq.read_schema(path)


def read_arrow(path: str | Path, **kwargs: object) -> pa.Table:
    """``pyarrow.parquet.read_table`` that names a damaged file (:func:`read_parquet`)."""
    from hpa_batch.core.damage import reading

    with reading(path):
        return pq.read_table(path, **kwargs)
