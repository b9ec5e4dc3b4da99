"""One Snakemake driver per working directory, and one per results tree.

Snakemake's own locks only cover overlapping outputs, and the first driver to exit removes every lock
in ``.snakemake/locks``. The Snakefile therefore takes an exclusive ``flock`` on
``.snakemake/hpa_batch.core.driver.lock`` while it is parsed by the main (driver) process, before Snakemake
builds the DAG, and holds it for the driver's whole life; a second driver in the same directory is
refused with a message naming the first (pid, host, start time) before it can trip over the first
driver's running jobs (Snakemake would otherwise report them as "incomplete" and suggest
``--cleanup-metadata``, which would be wrong). Read-only invocations (dry runs, lint, listings,
graphs, summaries) are let through with a warning. The kernel drops the lock when the process ends,
however it ends (kill -9 included), so a stale lock never blocks a rerun. The driver also holds
``<results_dir>/.hpa_batch/driver.lock`` (:mod:`hpa_batch.core.tree`): two drivers in two working
directories whose configs name one ``results_dir`` would run the same jobs twice, so the second is
refused naming the first; ``hpa-batch repair`` refuses to touch a tree while a driver holds it.

The lock file also records whether its driver ended cleanly (``"state": "running"`` until the
driver exits). A driver that finds a previous one died (kill -9, a lost login node) does the safe part
of the recovery itself, before Snakemake looks at its own locks:

* if jobs of the dead driver are still writing (their output locks, :mod:`hpa_batch.core.locks`, are
  held: orphaned local or SLURM jobs) or still queued on SLURM (``squeue``: this user's jobs submitted
  from this directory), it refuses to start, listing each with the command that stops it. Snakemake
  would otherwise delete their outputs and start second writers;
* otherwise it removes the dead driver's stale ``.snakemake/locks`` (what ``snakemake --unlock`` does),
  and says so. The interrupted jobs' incomplete outputs are redone because the workflow profile sets
  ``rerun-incomplete``.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from hpa_batch.core.locks import describe, held_locks, parse_record, stop_command
from hpa_batch.core.tree import tree_dir

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
        "--report",  # writes the report file it is given, nothing of the workflow's
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


#: The last line a training stopped by a signal writes to its log (:func:`stopped_trainings` finds it).
RESUME_HINT = "stopped by a signal, state saved: rerun the same command to resume"


class DriverLockError(RuntimeError):
    """Another driver holds the lock of this working directory."""


def acquire(workdir: str | Path = ".", results: str | Path | None = None) -> Path:
    """Take the driver lock of ``workdir`` (idempotent within one process).

    Parameters
    ----------
    workdir
        The working directory.
    results
        The run's results folder: after a driver that died, its output locks tell whether any of
        that driver's jobs still run (see :func:`recover`).

    Raises
    ------
    DriverLockError
        If another process holds it, naming that process, or if a dead driver's jobs still run.
    """
    path = Path(workdir) / ".snakemake" / "hpa_batch.core.driver.lock"
    key = str(path.resolve())
    if key in _HELD:
        return path
    fh = _exclusive(
        path,
        f"another snakemake driver is running in {Path(workdir).resolve()} ({{holder}}); "
        "wait for it to finish or stop it (a second driver would corrupt its bookkeeping)",
    )
    fh.seek(0)
    previous = parse_record(fh.read())
    if previous.get("state") == "running":
        try:
            recover(workdir, previous, results)
        except DriverLockError:
            fh.close()
            raise
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "workdir": str(Path(workdir).resolve()),
        "state": "running",
    }
    if results is not None:
        try:
            _hold_tree(results, record)
        except DriverLockError:
            fh.close()
            raise
    _write(fh, record)
    _HELD[key] = fh
    atexit.register(_finish, fh, record)
    return path


def _exclusive(path: Path, refusal: str) -> IO[str]:
    """Open ``path`` and take its exclusive flock, held as long as the returned file stays open.

    Raises
    ------
    DriverLockError
        ``refusal`` with ``{holder}`` replaced by the record of the process that holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 (held open for the driver's lifetime: the flock lives on it)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown process"
        fh.close()
        raise DriverLockError(refusal.replace("{holder}", holder)) from None
    return fh


def _tree_lock(results: str | Path) -> Path:
    return tree_dir(results) / "driver.lock"


def _hold_tree(results: str | Path, record: dict) -> None:
    """Take the driver lock of the results tree (whatever the working directory of the driver).

    Raises
    ------
    DriverLockError
        Naming the driver that holds it (pid, host, working directory).
    """
    path = _tree_lock(results)
    key = str(path.resolve())
    if key in _HELD:
        return
    fh = _exclusive(
        path,
        f"another snakemake driver is writing the results tree {Path(results).resolve()} ({{holder}}); "
        "two drivers on one results tree would run the same jobs twice: wait for it to finish or stop it",
    )
    _write(fh, record)
    _HELD[key] = fh


def tree_holder(results: str | Path) -> str | None:
    """Who holds the driver lock of the results tree ``results`` (``None``: nobody, or this process)."""
    return _holder(_tree_lock(results))


def _holder(path: Path) -> str | None:
    """The record of the process holding the flock of ``path`` (``None``: free, absent, or this process)."""
    if str(path.resolve()) in _HELD or not path.is_file():
        return None
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "unknown process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _finish(fh: IO[str], record: dict) -> None:
    """Mark the record of a driver that exits (normally or by an exception) as finished."""
    _write(fh, {**record, "state": "finished", "ended": time.strftime("%Y-%m-%d %H:%M:%S")})


def _write(fh: IO[str], record: dict) -> None:
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(record))
    fh.flush()


def recover(workdir: str | Path, previous: dict, results: str | Path | None) -> list[Path]:
    """Clean up after a driver that died (its record still says running); called under the lock.

    Parameters
    ----------
    workdir
        The working directory (holds ``.snakemake``).
    previous
        The dead driver's record (pid, host, started).
    results
        The results folder whose output locks show jobs still running (``None``: not checked).

    Returns
    -------
    list of pathlib.Path
        The stale Snakemake lock files removed.

    Raises
    ------
    DriverLockError
        If jobs of the dead driver are still writing outputs or queued, listing them and how to stop each.
    """
    who = f"pid {previous.get('pid')} on host {previous.get('host')}, started {previous.get('started')}"
    orphans = list(held_locks(results)) if results is not None else []
    lines = [f"  {out}: {describe(rec)}; stop: {stop_command(rec)}" for out, rec in orphans]
    running = {str(parse_record(rec).get("slurm_job")) for _, rec in orphans}
    lines += [
        f"  SLURM job {job} ({state}, {comment}); stop: scancel {job}"
        for job, state, comment in queued_slurm_jobs(workdir)
        if job not in running
    ]
    if lines:
        body = "\n".join(lines)
        raise DriverLockError(
            f"the previous snakemake driver in {Path(workdir).resolve()} ({who}) died, but {len(lines)} of "
            f"its jobs are still running or queued:\n{body}\nwait for them to end (or stop them), then rerun "
            "the same command; nothing needs unlocking by hand"
        )
    stale = sorted((Path(workdir) / ".snakemake" / "locks").glob("*.lock"))
    for lock in stale:
        lock.unlink(missing_ok=True)
    if stale:
        print(
            f"note: the previous snakemake driver here ({who}) died without cleaning up and none of its "
            f"jobs is running: removed its {len(stale)} stale Snakemake lock(s) (no --unlock needed); "
            "the jobs it left unfinished are redone (rerun-incomplete)",
            file=sys.stderr,
        )
    return stale


def is_read_only(argv: Sequence[str]) -> bool:
    """True when the Snakemake command line ``argv`` only inspects the workflow."""
    return any(arg.split("=", 1)[0] in READ_ONLY_FLAGS for arg in argv[1:])


def guard(workdir: str | Path, argv: Sequence[str], results: str | Path | None = None) -> Path | None:
    """Take the driver lock for a Snakemake main process with command line ``argv``.

    A read-only invocation never takes the lock; if another driver holds it, a warning is printed
    and ``None`` returned.

    Raises
    ------
    DriverLockError
        For a run that would execute jobs while another driver holds the lock.
    """
    if not is_read_only(argv):
        return acquire(workdir, results)
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
    return _holder(Path(workdir) / ".snakemake" / "hpa_batch.core.driver.lock")


def ignore_job_signals() -> None:
    """In a job's own Snakemake process (a SLURM job), ignore SIGTERM and SIGUSR1.

    SLURM signals every process of a job step: its warning signal before the time limit
    (``--signal=USR1@600``), ``scancel``'s SIGTERM, the time limit's SIGTERM. By default the job's
    Snakemake process would die of them at once, and SLURM would then kill the rest of the step,
    perhaps while a training is writing its checkpoint. Ignored here, the signal is left to the job's
    command: a training saves after its current step and exits 75, and then this Snakemake reports the
    job as failed, so the driver retries it and the retry resumes. ``hpa-batch`` restores the default
    actions for every other verb (:func:`default_signals`).
    """
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def default_signals() -> None:
    """Undo an inherited :func:`ignore_job_signals`: the default actions of SIGTERM and SIGUSR1."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


def stopped_trainings(logs: Sequence[str | Path]) -> list[Path]:
    """The training logs (of ``logs``) whose last line is :data:`RESUME_HINT`: stopped, to be resumed."""
    stopped = []
    for log in map(Path, logs):
        if not log.is_file():
            continue
        lines = log.read_text(errors="replace").rstrip().splitlines()
        if lines and lines[-1].endswith(RESUME_HINT):
            stopped.append(log)
    return stopped


def queued_slurm_jobs(workdir: str | Path) -> list[tuple[str, str, str]]:
    """This user's SLURM jobs (pending or running) submitted from ``workdir``: ``(id, state, comment)``.

    The Snakemake SLURM executor submits every job with ``-D <workdir>`` and a comment naming its rule
    and wildcards. A pending job holds no output lock yet, so after a dead driver it is found here. Empty
    when ``squeue`` is not installed or does not answer.
    """
    import shutil
    import subprocess

    if shutil.which("squeue") is None:
        return []
    try:
        out = subprocess.run(
            ["squeue", "--me", "-h", "-o", "%i|%T|%k|%Z"], check=False, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    here = str(Path(workdir).resolve())
    jobs = []
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[3] == here and parts[1] in {"PENDING", "RUNNING", "CONFIGURING", "SUSPENDED"}:
            jobs.append((parts[0], parts[1], parts[2]))
    return jobs
