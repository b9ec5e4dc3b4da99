"""The one atomic-write helper every stage uses: a file or directory is written under a temporary
sibling name and renamed over its path, so nothing partial is ever at an output's path, and a full
disk is reported as "no space left on <folder> (writing <file>)"."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "json_text", "strict", "temporary_of"]

#: The name :func:`atomic_path` gives its temporary: ``.{name}.{pid}.tmp`` (``{suffix}`` kept or not).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp(\.[\w.]+)?$")


def temporary_of(path: str | Path) -> tuple[Path, int] | None:
    """(the path it stands for, the pid writing it) when ``path`` is named as an :func:`atomic_path`
    temporary; None otherwise."""
    path = Path(path)
    m = _TEMPORARY.match(path.name)
    return (path.with_name(m.group("name")), int(m.group("pid"))) if m else None


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
    tmp = path.with_name(  # the name temporary_of parses
        f".{path.name}.{os.getpid()}.tmp{path.suffix if keep_suffix else ''}"
    )
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


def strict(obj: Any) -> Any:
    """``obj`` with every float that is not finite (NaN, infinity; numpy scalars too) as None, tuples
    as lists and numpy scalars as Python numbers: what strict JSON can hold ("a score that cannot be
    computed is null")."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item") and not hasattr(obj, "__len__"):  # a numpy scalar
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def json_text(obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> str:
    """Strict JSON of ``obj`` (:func:`strict`, then ``allow_nan=False``): no ``NaN`` or ``Infinity``
    token a standard parser (``JSON.parse``, polars, duckdb) refuses. The one JSON writer of every file a
    stage writes."""
    return json.dumps(strict(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (:func:`json_text`) to ``path`` with :func:`atomic_path`."""
    atomic_write_text(path, json_text(obj, indent=indent))


#: Staging folders beside a shard store, by the stage that writes through them (their on-disk names:
#: ``.{store}.staging`` for the conversion, ``.{store}.segment-staging`` for the segmentation).
STAGING: dict[str, str] = {"convert": "staging", "segment": "segment-staging"}


def staging_path(store: Path, stage: str) -> Path:
    """The folder beside ``store`` through which ``stage`` (a key of :data:`STAGING`) writes before it
    publishes into the store."""
    return store.parent / f".{store.name}.{STAGING[stage]}"
