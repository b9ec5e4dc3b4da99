"""``hpa-batch repair``: remove the damaged outputs of a results tree, and nothing else.

What it may touch is decided before anything is removed:

* the path must lie in a **results tree** (a folder whose ``.hpa_batch/tree.json`` a workflow run or a
  stage wrote, :mod:`hpa_batch.core.tree`, or the ``results_dir`` of the ``--config`` given); ``/``, the
  home folder and any unmarked folder are refused;
* no **driver** may hold the tree (a running workflow's jobs write there: their temporaries are not
  damage);
* the walk never follows a symbolic link (a link is at most removed itself), and every candidate must
  lie in the tree without passing through a link;
* a candidate is removed only if it is an output of :data:`hpa_batch.layout.RESULTS` under the tree, or
  a temporary of one (``.{output}.{pid}.tmp``, a conversion's or segmentation's staging folder) whose
  process is not running on this host.

It prints the exact command that redoes the removed outputs: in the tree's working directory, with the
config files of the run that wrote it. ``dry_run`` lists what would go and touches nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpa_batch.convert.validate import image_problems, label_problems
from hpa_batch.core.atomic import STAGING, staging_path
from hpa_batch.core.driver import tree_holder
from hpa_batch.core.errors import printable
from hpa_batch.core.ngff import image_groups, read_group_attrs
from hpa_batch.core.stamps import stamp_dict
from hpa_batch.core.tree import TREE_DIR, find_tree, read_marker
from hpa_batch.integrity import Damage, find_damaged, leftover
from hpa_batch.layout import result, result_key, snakemake_target

__all__ = ["RepairRefused", "Repaired", "redo_command", "repair", "repair_root"]


class RepairRefused(Exception):
    """``repair`` will not act on this path (not a results tree, a driver holds it, ...): nothing removed."""


@dataclass
class Repaired:
    """What :func:`repair` did (or, dry run, would do): a line per removal or refusal, the removed
    outputs to redo, and the tree they belong to."""

    lines: list[str] = field(default_factory=list)
    targets: list[Path] = field(default_factory=list)
    damaged: int = 0
    root: Path | None = None


def _forbidden(path: Path) -> bool:
    """``/``, the home folder or one of their parents: never a results tree to repair."""
    resolved = path.resolve()
    home = Path.home().resolve()
    return resolved == Path(resolved.anchor) or resolved == home or resolved in home.parents


def _inside(root: Path, path: Path) -> bool:
    """``path`` lies under ``root`` with no symbolic link on the way (the last component may be one)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    if ".." in rel.parts:
        return False
    here = root
    for part in rel.parts[:-1]:
        here = here / part
        if here.is_symlink():
            return False
    return True


def repair_root(path: str | Path, *, config_results: str | Path | None = None) -> Path:
    """The results tree ``path`` belongs to, checked as fit to repair.

    Raises
    ------
    RepairRefused
        ``path`` is ``/`` or the home folder, lies in no results tree, or a driver holds its tree.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and _forbidden(path):
        raise RepairRefused(f"{printable(path)} is the root or home folder: repair acts only inside a results tree")
    root = find_tree(path)
    if root is None and config_results is not None:
        configured = Path(config_results)
        if path == configured or _inside(configured, path):
            root = configured
    if root is None:
        raise RepairRefused(
            f"{printable(path)} is not in a results tree of hpa-batch (no {TREE_DIR}/tree.json in it or above "
            "it, which every workflow run writes into results_dir): nothing removed. Name the results folder, "
            "or pass --config with the run's config file"
        )
    if _forbidden(root):
        raise RepairRefused(f"{printable(root)} is the root or home folder: repair acts only inside a results tree")
    holder = tree_holder(root)
    if holder is not None:
        raise RepairRefused(
            f"a snakemake driver is running on the results tree {printable(root)} ({printable(holder)}): its jobs "
            "write there, so nothing was removed; repair after it ends"
        )
    return root


def _temporary_of(root: Path, path: Path) -> tuple[str, int | None] | None:
    """(kind, pid) when ``path`` is a leftover of an output of ``root``; None otherwise."""
    left = leftover(path)
    if left is None:
        return None
    key = result_key(root, left.output)
    if left.pid is None:  # a staging folder: of a shard store only
        return ("staging", None) if key == "store" else None
    return ("temporary", left.pid) if key is not None else None


def _running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove an output: a link itself (never what it points to), a folder without following links."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def repair(
    path: str | Path,
    *,
    hold: Callable[[Path], None],
    dry_run: bool = False,
    config_results: str | Path | None = None,
) -> Repaired:
    """Remove exactly what :func:`~hpa_batch.integrity.find_damaged` (deep) finds under ``path`` and
    may be removed (see the module docstring): damaged outputs, and in an image store only the damaged
    images / labels and the stage files claiming them done. ``hold(output)`` takes the output's writer
    lock first (refused if a job writes it).

    Raises
    ------
    RepairRefused
        See :func:`repair_root`.
    """
    path = Path(path)
    root = repair_root(path, config_results=config_results)
    if path != root and not _inside(root, path):
        raise RepairRefused(f"{printable(path)} is reached through a symbolic link: repair does not follow links")
    _, damaged = find_damaged(path, deep=True, root=root)
    out = Repaired(damaged=len(damaged), root=root)
    verb = "would remove" if dry_run else "removed"
    for item in damaged:
        _repair_one(item, root, out, hold=hold, dry_run=dry_run, verb=verb)
    return out


def _repair_one(
    item: Damage, root: Path, out: Repaired, *, hold: Callable[[Path], None], dry_run: bool, verb: str
) -> None:
    where = printable(item.path)
    if not _inside(root, item.path):
        out.lines.append(f"not removed: {item} (outside the results tree {printable(root)}, or through a link)")
        return
    key = (result_key(root, item.path) or ("", {}))[0]
    temporary = None if key else _temporary_of(root, item.path)
    if not key and temporary is None:
        out.lines.append(f"not removed: {item} ({where} is not an output of the results tree {printable(root)})")
        return
    if temporary is not None and temporary[0] == "temporary" and _running(temporary[1]):
        out.lines.append(f"not removed: {item} (process {temporary[1]} on {socket.gethostname()} is writing it)")
        return
    if key == "store" and item.path.is_dir() and not item.path.is_symlink():
        _repair_store(item, root, out, hold=hold, dry_run=dry_run, verb=verb)
        return
    link = item.path.is_symlink()
    if not dry_run:
        hold(item.path)
        _remove(item.path)
    out.lines.append(f"{verb} {item}" + (" (the link only)" if link else ""))
    if key:
        out.targets.append(snakemake_target(root, item.path))


def _repair_store(
    item: Damage, root: Path, out: Repaired, *, hold: Callable[[Path], None], dry_run: bool, verb: str
) -> None:
    """An image store: only its damaged images / labels go (and the stage files claiming them done)."""

    shard = item.path.name.split(".")[0]
    where = printable(item.path)
    if dry_run:
        out.lines.append(f"{verb} the damaged images or labels of {item}")
        out.targets.append(result(root, "segment_summary", shard=shard))
        return
    hold(item.path)
    fixed = repair_store(
        item.path,
        convert_summary=result(root, "convert_summary", shard=shard),
        segment_summary=result(root, "segment_summary", shard=shard),
    )
    out.lines += [
        f"removed image {printable(i)} of {where}: it will be reconverted and resegmented" for i in fixed.images
    ]
    out.lines += [f"removed labels of {printable(i)} in {where}: they will be resegmented" for i in fixed.labels]
    for stage in STAGING:
        staging = staging_path(item.path, stage)
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging)
            out.lines.append(f"removed {printable(staging)} (staging left by an interrupted run)")
    out.targets += fixed.markers


def redo_command(root: Path, targets: list[Path], *, configfile: str | Path | None = None) -> str:
    """The Snakemake command that redoes ``targets`` (outputs of ``root``) and everything after them,
    as the tree's workflow was run: in its working directory, with its config files (``configfile``,
    the one repair was given, replaces them), the targets spelt as the config spells ``results_dir``.

    A project copied or moved whole (``results_dir`` relative, found from the current directory) is
    run where it is now. A tree moved or copied on its own gets the targets as found and no working
    directory; its marker's config files are not the copy's, so only ``configfile`` is named (and a
    comment says to add the run's config file when none was given).
    """
    marker = read_marker(root)
    names = [str(t) for t in targets]
    prefix, configs, note = "", [], ""
    if marker is not None:
        spelled = Path(marker.results_dir)
        workdir = Path(marker.workdir)
        if not spelled.is_absolute() and (Path.cwd() / spelled).resolve() == root.resolve():
            workdir = Path.cwd()  # the project was copied or moved whole: its relative paths hold here
        here = spelled if spelled.is_absolute() else workdir / spelled
        if here.resolve() == root.resolve():
            configs = list(marker.configfiles)
            if marker.writer == "snakemake":
                names = [str(spelled / t.relative_to(root)) if _inside(root, t) else str(t) for t in targets]
                if workdir.resolve() != Path.cwd().resolve():
                    prefix = f"cd {shlex.quote(str(workdir))} && "
        elif configfile is None:
            note = "  # add --configfile <the run's config> (this tree was moved since it was written)"
    if configfile is not None:
        configs = [str(configfile)]
    words = ["snakemake", "--cores", "all", *names, "all"]
    for config in configs:
        words += ["--configfile", config]
    return prefix + " ".join(shlex.quote(w) for w in words) + note


@dataclass
class Repair:
    """What :func:`repair_store` removed so that the workflow redoes exactly that."""

    images: list[str] = field(default_factory=list)  # image groups to reconvert (and resegment)
    labels: list[str] = field(default_factory=list)  # label groups to resegment
    markers: list[Path] = field(default_factory=list)  # stage outputs removed: Snakemake reruns those jobs


def repair_store(store: Path, *, convert_summary: Path, segment_summary: Path) -> Repair:
    """Remove the damaged parts of a shard store (every array decoded) and the stage outputs that
    claim it complete, so that the next ``snakemake`` run reconverts exactly the damaged or missing
    images, resegments exactly the images without valid labels (both stages keep every intact
    image), and reruns what follows for that shard.

    Parameters
    ----------
    convert_summary, segment_summary : Path
        The shard's ``zarr/{shard}.convert.json`` and ``.segment.json`` (the rules' outputs).
    """
    store = Path(store)
    out = Repair()
    groups = image_groups(store)
    for image in groups:
        if image_problems(image, deep=True):
            shutil.rmtree(image)
            out.images.append(image.name)
        elif label_problems(image, deep=True):
            shutil.rmtree(image / "labels")
            out.labels.append(image.name)
    record = stamp_dict(read_group_attrs(store)).get("images") or []
    for name in sorted(set(record) - {p.name for p in groups}):
        folder = store / name
        if folder.is_dir() and not folder.is_symlink() and folder.parent == store:
            shutil.rmtree(folder)  # recorded, but no longer an image group (an unreadable zarr.json): remove it
        out.images.append(name)
    stale = ([convert_summary] if out.images else []) + ([segment_summary] if out.images or out.labels else [])
    for marker in stale:
        if Path(marker).is_file():
            Path(marker).unlink()
            out.markers.append(Path(marker))
    return out
