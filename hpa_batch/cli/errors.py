"""How ``hpa-batch`` reports what went wrong: a verb's expected errors become one line naming the
file and the reason (a damaged input, a full disk, a missing extra), with exit status 1 (2: a bad
configuration)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from hpa_batch.cli.common import config_of, shard_paths
from hpa_batch.config import ConfigError
from hpa_batch.convert.plan import PlanError
from hpa_batch.core.errors import DamagedFileError, UnsafeCheckpointError, printable
from hpa_batch.core.locks import OutputLockError
from hpa_batch.core.process import is_rank0
from hpa_batch.layout import (
    result,
)


def _record_outputs(args: argparse.Namespace) -> None:
    """Write the receipts of a succeeded verb's outputs (:mod:`hpa_batch.core.receipts`); rank 0 only."""
    from hpa_batch.core.receipts import record

    if args.verb == "repair" or not is_rank0():
        return
    for out in getattr(args, "outputs_", []):
        record(out)


def run_verb(args: argparse.Namespace) -> int:
    """The verb's function, its expected errors as one line."""
    try:
        code = int(args.func(args) or 0)
        if code == 0:
            _record_outputs(args)
        return code
    except ConfigError as exc:
        print(f"hpa-batch: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`hpa-batch plan --format names | head -1`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 1
    except (PlanError, OutputLockError) as exc:
        print(f"hpa-batch {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if args.verbose:
            raise
        print(f"hpa-batch {args.verb}: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if args.verbose or exc.name not in _EXTRAS:
            raise
        print(
            f"hpa-batch {args.verb}: error: {exc.name} is not installed; it comes with the {_EXTRAS[exc.name]} "
            f"extra: pip install 'hpa-batch[{_EXTRAS[exc.name]}]' (make setup installs every extra)",
            file=sys.stderr,
        )
        return 1
    except (DamagedFileError, UnsafeCheckpointError) as exc:
        print(f"hpa-batch {args.verb}: error: {DamagedFileError.line_of(exc) or printable(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        line = _no_space(exc, args) or DamagedFileError.line_of(exc) or _damaged_input(args)
        if line is None or args.verbose:
            raise
        print(f"hpa-batch {args.verb}: error: {line}", file=sys.stderr)
        return 1


def _no_space(exc: BaseException, args: argparse.Namespace) -> str | None:
    """ "no space left on <folder> (writing <file>)" when the disk filled up anywhere under ``exc`` (its
    causes and, for a worker process's error, its message); None otherwise."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            if str(seen).startswith("no space left on "):
                return str(seen)
            return _space_line(seen.filename, args)
        seen = seen.__cause__ or seen.__context__
    if "[Errno 28]" in str(exc) or "No space left on device" in str(exc):
        return _space_line(None, args)
    return None


def _space_line(filename: object, args: argparse.Namespace) -> str:
    written = Path(str(filename)) if filename else next(iter(getattr(args, "outputs_", [])), None)
    if written is None:
        return "no space left on device (no output named)"
    folder = written.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return f"no space left on {printable(folder)} (writing {printable(written)})"


def _damaged_input(args: argparse.Namespace) -> str | None:
    """After an unexpected error: the first input of the verb (a path argument it does not write) that
    is damaged, as the one line a stage prints for it; None when every input is sound."""
    from hpa_batch.integrity import check_output, results_root

    written = {Path(p) for p in getattr(args, "outputs_", [])}
    given = [p for v in vars(args).values() for p in (v if isinstance(v, list) else [v]) if isinstance(p, Path)]
    for path in given + _default_inputs(args):
        if path not in written and path.exists():
            reason = check_output(path, results_root(path), deep=path.suffix in (".parquet", ".json", ".tsv"))
            if reason:
                return str(DamagedFileError(path, reason))
    return None


def _default_inputs(args: argparse.Namespace) -> list[Path]:
    """The files a verb reads when their options are not given: the shard's files and the run's tables."""
    if getattr(args, "config", None) is None and getattr(args, "config_json", None) is None:
        return []
    try:
        cfg = config_of(args)
    except Exception:  # noqa: BLE001 (only a hint for the error message: no config, no defaults)
        return []
    shard = getattr(args, "shard", None)
    paths = list(shard_paths(cfg, shard).values()) if shard else []
    return paths + [result(cfg.results_dir, k) for k in ("splits", "cells_table", "images_table", "metrics")]


#: Optional packages and the pyproject extra that brings each.
_EXTRAS = {"torch": "gpu", "torchvision": "gpu", "timm": "gpu", "snakemake": "workflow"}


def _os_error(exc: OSError) -> str:
    """One line for a missing / wrong path: the path, then why."""
    why = {
        FileNotFoundError: "no such file or directory",
        NotADirectoryError: "not a directory",
        IsADirectoryError: "is a directory, not a file",
        PermissionError: "permission denied",
    }.get(type(exc), exc.strerror or str(exc))
    if exc.filename is not None:
        return f"{exc.filename}: {why}"
    text = str(exc)
    bare = len(exc.args) == 1 and isinstance(exc.args[0], str) and " " not in text  # pyarrow: FileNotFoundError(path)
    return f"{text}: {why}" if bare else text
