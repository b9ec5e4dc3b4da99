"""One Snakemake driver per working directory.

Snakemake's own locks only cover overlapping outputs, and the first driver to exit removes every lock
in ``.snakemake/locks``. The workflow's ``onstart`` handler therefore takes an exclusive ``flock`` on
``.snakemake/hpa_batch.driver.lock`` for the driver's whole life; a second driver in the same
directory is refused with a message naming the first (pid, host, start time). The kernel drops the
lock when the process ends, however it ends (kill -9 included), so a stale lock never blocks a rerun.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

_HELD: dict[str, IO[str]] = {}


class DriverLockError(RuntimeError):
    """Another driver holds the lock of this working directory."""


def acquire(workdir: str | Path = ".") -> Path:
    """Take the driver lock of ``workdir`` (idempotent within one process).

    Raises
    ------
    DriverLockError
        If another process holds it, naming that process.
    """
    path = Path(workdir) / ".snakemake" / "hpa_batch.driver.lock"
    key = str(path.resolve())
    if key in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
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
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    fh.flush()
    _HELD[key] = fh
    return path
