"""Run-level QC: gather every shard's refused images into one table and summarise the reasons."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from hpa_batch.convert.manifest import REJECTED_COLUMNS, read_rejected, write_rejected
from hpa_batch.core.errors import printable


def reason_kind(reason: str) -> str:
    """Coarse category of a refusal reason, for the summary (e.g. ``missing channel``)."""
    rules = [
        (r"^missing \w+ channel", "missing channel"),
        (r"^labels:", "bad labels"),
        (r"occurs \d+ times", "duplicate id"),
        (r"not safe as a path", "unsafe id"),
        (r"^decode:", "undecodable pixels"),
        (r"unreadable header", "unreadable header"),
        (r"not a 2-D grayscale|mode ", "not grayscale"),
        (r"dtype", "unsupported dtype"),
        (r"shapes differ", "channel shapes differ"),
        (r"max_pixels|min_side", "size limit"),
        (r"^saturated:", "saturated channel"),
    ]
    for pattern, kind in rules:
        if re.search(pattern, reason):
            return kind
    return "other"


def merge_rejected(paths: Iterable[Path], out: Path) -> pd.DataFrame:
    """Concatenate shard rejected tables into ``out``; return the merged table."""
    frames = [read_rejected(Path(p)) for p in paths]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REJECTED_COLUMNS))
    merged = merged.sort_values(["shard", "image_id"], kind="stable").reset_index(drop=True)
    write_rejected(merged, Path(out))
    return merged


def summarise(rejected: pd.DataFrame, detail: int = 20) -> str:
    """Human-readable summary: count per reason category and the first ``detail`` rows."""
    if rejected.empty:
        return "QC: no image was refused."
    counts = rejected["reason"].map(reason_kind).value_counts()
    lines = [f"QC: {len(rejected)} image(s) refused:"]
    lines += [f"  {n:6d}  {kind}" for kind, n in counts.items()]
    for row in rejected.head(detail).itertuples():
        # ids and reasons come from the user's files: escaped, so one cannot forge a line of the summary
        lines.append(f"  {row.shard}  {printable(row.image_id)}  [{row.stage}] {printable(row.reason)}")
    if len(rejected) > detail:
        lines.append(f"  ... {len(rejected) - detail} more in the merged table")
    return "\n".join(lines)
