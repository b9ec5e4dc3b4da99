"""One Snakemake driver per working directory.

Snakemake's own locks only cover overlapping outputs, and the first driver to exit removes every lock
in ``.snakemake/locks``. The Snakefile therefore takes an exclusive ``flock`` on
``.snakemake/hpa_batch.core.driver.lock`` while it is parsed by the main (driver) process, before Snakemake
builds the DAG, and holds it for the driver's whole life; a second driver in the same directory is
refused with a message naming the first (pid, host, start time) before it can trip over the first
driver's running jobs (Snakemake would otherwise report them as "incomplete" and suggest
``--cleanup-metadata``, which would be wrong). Read-only invocations (dry runs, lint, listings,
graphs, summaries) are let through with a warning. The kernel drops the lock when the process ends,
however it ends (kill -9 included), so a stale lock never blocks a rerun.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_HELD: dict[str, IO[str]] = {}

#: Command-line flags of Snakemake invocations that change nothing on disk.
READ_ONLY_FLAGS = frozenset(
    {
        "-n",
        "--dry-run",
        "--dryrun",
        "--lint",
        "--list-rules",
        "--list",
        "-l",
        "--list-target-rules",
        "--lt",
        "--summary",
        "-S",
        "--detailed-summary",
        "-D",
        "--dag",
        "--rulegraph",
        "--filegraph",
        "--d3dag",
        "--list-changes",
        "--lc",
        "--list-input-changes",
        "--li",
        "--list-params-changes",
        "--lp",
        "--list-code-changes",
        "--list-untracked",
        "--lu",
        "--print-compilation",
        "--version",
        "--help",
        "-h",
    }
)


class DriverLockError(RuntimeError):
    """Another driver holds the lock of this working directory."""


def acquire(workdir: str | Path = ".") -> Path:
    """Take the driver lock of ``workdir`` (idempotent within one process).

    Raises
    ------
    DriverLockError
        If another process holds it, naming that process.
    """
    path = Path(workdir) / ".snakemake" / "hpa_batch.core.driver.lock"
    key = str(path.resolve())
    if key in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 (held open for the driver's lifetime: the flock lives on it)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown process"
        fh.close()
        raise DriverLockError(
            f"another snakemake driver is running in {Path(workdir).resolve()} ({holder}); "
            "wait for it to finish or stop it (a second driver would corrupt its bookkeeping)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    )
    fh.flush()
    _HELD[key] = fh
    return path


def is_read_only(argv: Sequence[str]) -> bool:
    """True when the Snakemake command line ``argv`` only inspects the workflow."""
    return any(arg.split("=", 1)[0] in READ_ONLY_FLAGS for arg in argv[1:])


def guard(workdir: str | Path, argv: Sequence[str]) -> Path | None:
    """Take the driver lock for a Snakemake main process with command line ``argv``.

    A read-only invocation never takes the lock; if another driver holds it, a warning is printed
    and ``None`` returned.

    Raises
    ------
    DriverLockError
        For a run that would execute jobs while another driver holds the lock.
    """
    if not is_read_only(argv):
        return acquire(workdir)
    holder = holder_of(workdir)
    if holder is not None:
        print(
            f"warning: another snakemake driver is running here ({holder}); this read-only "
            "invocation may show its running jobs as incomplete",
            file=sys.stderr,
        )
    return None


def holder_of(workdir: str | Path) -> str | None:
    """Who holds the driver lock of ``workdir`` (``None`` when it is free or held by this process)."""
    path = Path(workdir) / ".snakemake" / "hpa_batch.core.driver.lock"
    if str(path.resolve()) in _HELD or not path.is_file():
        return None
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "unknown process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None
