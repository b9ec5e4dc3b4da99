"""A results tree's own folder, ``<results_dir>/.hpa_batch/``: the marker that says a folder is a results
tree of hpa-batch (``tree.json``: who wrote it, from which working directory and config files, how the
config spells ``results_dir``), the tree's driver lock (``driver.lock``) and the write receipts
(``receipts/``, :mod:`hpa_batch.core.receipts`).

Tools that delete (``hpa-batch repair``) act only inside a folder that carries the marker; the marker
records what to print so that the command they print redoes the work as the workflow was run
(``cd <workdir> && snakemake --configfile ...``).

Imports nothing of the package above :mod:`hpa_batch.core`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TREE_DIR", "TreeMarker", "find_tree", "mark_tree", "read_marker", "tree_dir"]

#: The results tree's own folder (hidden: no stage output starts with a dot).
TREE_DIR = ".hpa_batch"
MARKER_FILE = "tree.json"


def tree_dir(results_dir: str | Path) -> Path:
    """``<results_dir>/.hpa_batch``."""
    return Path(results_dir) / TREE_DIR


@dataclass
class TreeMarker:
    """What ``.hpa_batch/tree.json`` records.

    Attributes
    ----------
    results_dir : str
        The tree as the config spells it (relative to ``workdir`` when relative): the targets a printed
        Snakemake command names start with it, as the rules' outputs do.
    workdir : str
        Absolute working directory of the run that last wrote the tree.
    configfiles : list of str
        The config files of that run (``--configfile``), as given.
    writer : str
        ``snakemake`` (a workflow run) or ``hpa-batch <verb>`` (a stage run by hand).
    updated : str
        When the marker was last written.
    """

    results_dir: str
    workdir: str
    configfiles: list[str] = field(default_factory=list)
    writer: str = "snakemake"
    updated: str = ""
    kind: str = "hpa-batch results tree"


def mark_tree(
    results_dir: str | Path, *, configfiles: Sequence[str | Path] = (), writer: str = "snakemake"
) -> TreeMarker:
    """Write (or refresh) the marker of ``results_dir``, creating the folder.

    A stage run by hand refreshes the marker only when there is none yet: the workflow's record of how
    it was run (its config files) is the one to keep.
    """
    folder = tree_dir(results_dir)
    path = folder / MARKER_FILE
    if writer != "snakemake" and path.is_file():
        existing = read_marker(results_dir)
        if existing is not None:
            return existing
    marker = TreeMarker(
        results_dir=str(results_dir),
        workdir=os.getcwd(),
        configfiles=[str(c) for c in configfiles],
        writer=writer,
        updated=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{MARKER_FILE}.{os.getpid()}.{socket.gethostname()}.tmp"
    tmp.write_text(json.dumps(asdict(marker), indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return marker


def read_marker(results_dir: str | Path) -> TreeMarker | None:
    """The marker of ``results_dir``, or None when it has none (or an unreadable one)."""
    path = tree_dir(results_dir) / MARKER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TreeMarker(**{k: data[k] for k in TreeMarker.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def find_tree(path: str | Path) -> Path | None:
    """The results tree ``path`` is in: ``path`` itself or its nearest ancestor (walked as spelt, never
    through ``..``) that carries the marker; None when no ancestor does."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.name == "..":
            return None
        if (tree_dir(candidate) / MARKER_FILE).is_file():
            return candidate
    return None
