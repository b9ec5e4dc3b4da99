"""One writer per output: every job holds an exclusive lock on what it writes for its whole life.

A job that outlives its driver (the driver was killed; a local job or a SLURM job goes on) is an
orphan writer. Without a lock, a rerun starts a second writer of the same files beside it. Every
``hpa-batch`` verb that writes therefore calls :func:`hold` on its outputs before it writes anything. A
second writer is refused with :class:`OutputLockError`, which names the holder (pid, host, SLURM job).

The lock of ``results/models/m/fold0`` is the file ``results/models/m/.fold0.lock`` beside it, never
inside an output, because Snakemake deletes outputs before it reruns a job. It is a POSIX record lock
(``fcntl.lockf``). NFS implements these across hosts (Lustre needs its ``flock`` mount option), and
the kernel or the NFS server drops the lock when the holder dies, kill -9 included. So a stale lock
never blocks a rerun. The file also records who holds it, for the refusal message. A job unlinks its
lock file when it ends. A writer that opened the file just before that unlink checks that the path
still names the file it locked, and tries again if it does not.

POSIX locks belong to a process: a second ``hold`` of the same path in one process returns at once.
Closing any other descriptor of a lock file in the holding process would drop the lock, so this module
is the only code that opens these files.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: Suffix of every output lock file (a hidden file beside the output).
SUFFIX = ".lock"
_HELD: dict[str, IO[str]] = {}


class OutputLockError(RuntimeError):
    """Another live process holds the lock of an output."""


def lock_file(output: str | Path) -> Path:
    """The lock file of ``output``: ``<parent>/.<name>.lock``."""
    out = Path(output)
    return out.parent / f".{out.name}{SUFFIX}"


def output_of(lock: Path) -> Path:
    """The output a lock file (:func:`lock_file`) guards."""
    return lock.parent / lock.name[1 : -len(SUFFIX)]


def _record(what: str) -> dict[str, object]:
    rec: dict[str, object] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "job": what,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if os.environ.get("SLURM_JOB_ID"):
        rec["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return rec


def parse_record(text: str) -> dict:
    """A holder record (JSON object) as a dict; ``{}`` for anything else (an empty or foreign file)."""
    try:
        rec = json.loads(text)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def describe(record: str) -> str:
    """A holder record as one phrase: ``pid 12 on host n1 (SLURM job 7), hpa-batch train, since ...``."""
    rec = parse_record(record)
    if not rec:
        return record.strip() or "an unknown process"
    slurm = f" (SLURM job {rec['slurm_job']})" if rec.get("slurm_job") else ""
    return f"pid {rec.get('pid')} on host {rec.get('host')}{slurm}, {rec.get('job', '?')}, since {rec.get('started')}"


def stop_command(record: str) -> str:
    """How to stop the holder: ``scancel <job>`` for a SLURM job, else ``kill <pid>`` (on its host)."""
    rec = parse_record(record)
    if rec.get("slurm_job"):
        return f"scancel {rec['slurm_job']}"
    return f"kill {rec.get('pid')} (on {rec.get('host')})" if rec else "stop it"


def hold(output: str | Path, *, what: str) -> Path:
    """Take the exclusive lock of ``output`` for the rest of this process' life.

    Parameters
    ----------
    output
        A file or directory the caller is about to write (it need not exist yet).
    what
        What the holder is doing, recorded for the refusal message (e.g. ``"hpa-batch train"``).

    Returns
    -------
    pathlib.Path
        The lock file.

    Raises
    ------
    OutputLockError
        If another live process holds the lock, naming it and saying how to stop it.
    """
    path = lock_file(output)
    key = str(path.absolute())
    if key in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+")  # noqa: SIM115 (held open for the process' life: the lock lives on it)
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            record = fh.read()
            fh.close()
            raise OutputLockError(
                f"{output} is being written by another job: {describe(record)}. Two writers of one output "
                f"would corrupt it: wait for that job to end, or stop it ({stop_command(record)}), then rerun"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the holder unlinked it as we opened it: lock the file now at that path
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(_record(what)))
    fh.flush()
    _HELD[key] = fh
    return path


def release(output: str | Path) -> None:
    """Drop the lock of ``output`` if this process holds it (and remove its file)."""
    path = lock_file(output)
    fh = _HELD.pop(str(path.absolute()), None)
    if fh is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # unlinked while still locked: a racing writer sees the inode change
        fh.close()


@atexit.register
def release_all() -> None:
    """Drop every lock this process holds (a verb run in-process, e.g. from tests, ends its job)."""
    for key in list(_HELD):
        release(output_of(Path(key)))


def holder(output: str | Path) -> str | None:
    """The record of whoever holds the lock of ``output`` (``None`` when free or held by this process)."""
    return _probe(lock_file(output))


def _probe(path: Path) -> str | None:
    if str(path.absolute()) in _HELD:
        return None
    try:
        with open(path) as fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return fh.read() or "{}"
            fcntl.lockf(fh, fcntl.LOCK_UN)
    except FileNotFoundError:
        return None
    return None


def held_locks(root: str | Path) -> Iterator[tuple[Path, str]]:
    """Every output under ``root`` whose lock another live process holds, with the holder's record.

    Zarr stores (``*.zarr``) are not descended into: their locks sit beside them.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.endswith(".zarr")]
        for name in filenames:
            if name.startswith(".") and name.endswith(SUFFIX):
                lock = Path(dirpath) / name
                record = _probe(lock)
                if record is not None:
                    yield output_of(lock), record
