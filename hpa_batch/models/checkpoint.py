"""The checkpoint format of a trained fold, in one place: ``model.pt``, ``thresholds.json`` and the
atomic ``torch.save`` of the training state (``state/last.pt``, ``state/best.pt``).

``model.pt`` (``torch.load(weights_only=True)``): ``model`` (state dict of the best epoch),
``thresholds`` ``(c,)`` float32 tensor, ``spec`` (the model's config entry), ``catalog`` (label
catalog name), ``mean`` / ``std`` (per-input-channel normalisation), ``summary`` (the training
result). ``thresholds.json``: ``classes``, ``thresholds``, ``validation_positives``, ``reasons``,
``rule``, ``selection``; the same float32 values as ``model.pt``, readable without torch (the
merge runs in the CPU environment). ``state/last.pt``: :class:`TrainingState`; ``state/best.pt``:
:class:`BestEpoch`.

torch is imported inside the functions that need it, so reading thresholds needs no torch.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpa_batch.core.atomic import atomic_path, atomic_write_json
from hpa_batch.core.errors import DamagedFileError, UnsafeCheckpointError, printable, reason_of
from hpa_batch.core.labels import LabelCatalog
from hpa_batch.layout import MODEL_FILE, THRESHOLDS_FILE
from hpa_batch.spec import ModelSpec

THRESHOLD_RULE = (
    "F1-optimal per class; an optimum below low keeps default (the scores do not separate the "
    "class), one above high is clipped"
)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, the one way a checkpoint is read.

    Raises
    ------
    UnsafeCheckpointError
        "<file> is not a safe checkpoint (<global>)": the file asks to import code.
    hpa_batch.core.errors.DamagedFileError
        The file is not a torch checkpoint (truncated, overwritten).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise UnsafeCheckpointError(
                f"{printable(path)} is not a safe checkpoint ({printable(found.group(1))}): it refers to code, "
                "which no checkpoint written by hpa-batch does; it was not loaded (replace it with a "
                "checkpoint from a run you trust)"
            ) from None
        raise DamagedFileError(path, "not a torch checkpoint: " + str(exc).strip().splitlines()[-1]) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise DamagedFileError(path, f"not a torch checkpoint: {' '.join(str(exc).split())[:200]}") from exc


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`~hpa_batch.core.atomic.atomic_path` (the previous file stays valid).

    Raises
    ------
    OSError
        ENOSPC, "no space left on <folder>", when the disk filled up (torch reports only "basic_ios::clear:
        iostream error"); the temporary file is removed.
    """
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # the partial temporary still fills the disk here
            if shutil.disk_usage(tmp.parent).free < (1 << 20):
                raise OSError(errno.ENOSPC, f"no space left on {path.parent} (writing {path.name})") from exc
            raise


@dataclass(frozen=True)
class ModelFile:
    """``model.pt``, typed: what :func:`write_model` writes and :func:`read_model` returns.

    Attributes
    ----------
    weights : dict
        State dict of the best epoch (``model`` on disk).
    thresholds : torch.Tensor
        ``(c,)`` float32 per-class thresholds.
    spec : dict
        The model's config entry (:meth:`hpa_batch.spec.ModelSpec.to_entry`).
    catalog : str
        Label catalog name.
    mean, std : list of float
        Per-input-channel normalisation.
    summary : dict
        The training result (JSON types only).
    fold : int, optional
        The fold, where a writer recorded it.
    """

    weights: dict[str, Any]
    thresholds: Any
    spec: dict[str, Any]
    catalog: str
    mean: list[float]
    std: list[float]
    summary: dict[str, Any]
    fold: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The mapping saved with ``torch.save`` (the weights under ``model``)."""
        out = {
            "model": self.weights,
            "thresholds": self.thresholds,
            "spec": self.spec,
            "catalog": self.catalog,
            "mean": list(self.mean),
            "std": list(self.std),
            "summary": self.summary,
        }
        return out if self.fold is None else {**out, "fold": self.fold}

    @classmethod
    def from_dict(cls, path: Path, raw: Any) -> ModelFile:
        """The record of a loaded ``model.pt`` mapping.

        Raises
        ------
        hpa_batch.core.errors.DamagedFileError
            Not a mapping with the entries a model file has.
        """
        if not isinstance(raw, dict) or not {"model", "spec", "catalog"} <= set(raw):
            raise DamagedFileError(path, "not a model.pt: no model, spec and catalog entries")
        fold = raw.get("fold")
        return cls(
            weights=raw["model"],
            thresholds=raw.get("thresholds"),
            spec=dict(raw["spec"]),
            catalog=str(raw["catalog"]),
            mean=list(raw.get("mean", [])),
            std=list(raw.get("std", [])),
            summary=dict(raw.get("summary", {})),
            fold=None if fold is None else int(fold),
        )


def write_model(
    path: Path,
    *,
    weights: dict[str, Any],
    thresholds: Any,
    spec: ModelSpec,
    catalog: LabelCatalog,
    mean: Sequence[float],
    std: Sequence[float],
    summary: dict[str, Any],
) -> None:
    """Write ``model.pt`` (:class:`ModelFile`; ``thresholds`` a ``(c,)`` tensor)."""
    record = ModelFile(
        weights=weights,
        thresholds=thresholds,
        spec=spec.to_entry(),
        catalog=catalog.name,
        mean=list(mean),
        std=list(std),
        summary=json.loads(json.dumps(summary)),
    )
    atomic_save(record.to_dict(), path)


def read_model(path: Path, *, catalog: LabelCatalog | None = None, level: str | None = None) -> ModelFile:
    """Load ``model.pt`` on the CPU, checked against the run.

    Raises
    ------
    ValueError
        A checkpoint written for another label catalog than ``catalog`` or another level than
        ``level`` (e.g. a ``trained:`` folder of the wrong run), naming the file.
    hpa_batch.core.errors.DamagedFileError
        Not a model file.
    """
    ckpt = ModelFile.from_dict(path, load_checkpoint(path))
    if catalog is not None and ckpt.catalog != catalog.name:
        raise ValueError(
            f"{path} was trained for label catalog {ckpt.catalog!r}, this run uses {catalog.name!r} (labels.catalog)"
        )
    if level is not None and ckpt.spec["level"] != level:
        raise ValueError(f"{path} is a {ckpt.spec['level']}-level model; the config declares level: {level}")
    return ckpt


def write_thresholds(
    path: Path,
    *,
    catalog: LabelCatalog,
    thresholds: Sequence[float],
    support: Sequence[int],
    reasons: Sequence[str],
    rule: dict[str, Any],
    selection: str,
) -> None:
    """Write ``thresholds.json`` beside ``model.pt``."""
    atomic_write_json(
        path,
        {
            "classes": list(catalog.classes),
            "thresholds": [float(t) for t in thresholds],
            "validation_positives": [int(v) for v in support],
            "reasons": list(reasons),
            "rule": {**rule, "tuned": THRESHOLD_RULE},
            "selection": selection,
        },
    )


def read_thresholds(path: Path, n: int) -> np.ndarray:
    """``(n,)`` float32 thresholds of one fold; a ``model.pt`` path stands for the ``thresholds.json``
    beside it.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, or thresholds for another number of classes (naming the file).
    """
    path = Path(path) if Path(path).suffix == ".json" else Path(path).with_name(THRESHOLDS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (training writes it beside model.pt)")
    t = np.asarray(json.loads(path.read_text())["thresholds"], np.float32)
    if t.shape != (n,):
        raise ValueError(f"{path} holds {t.size} thresholds, the label catalog has {n} classes")
    return t


@dataclass
class TrainingState:
    """What ``state/last.pt`` holds: everything a training needs to resume bit for bit.

    Attributes
    ----------
    model, optimizer, scaler : dict
        State dicts of the (unwrapped) model, the optimizer and the AMP grad scaler.
    run : dict
        The loop's bookkeeping (:class:`hpa_batch.models.runstate.RunState` as plain values).
    rng : dict
        Every RNG state of rank 0 (:func:`hpa_batch.models.runstate.rng_state`).
    rng_ranks : list of dict or None
        Every rank's RNG states under DDP, else None.
    targets : torch.Tensor or None
        ``(n, c)`` uint8 refined targets once labels were refined, else None.
    spec : dict
        The model's validated config entry (:meth:`hpa_batch.spec.ModelSpec.to_entry`).
    fold : int
    version : str
        The hpa-batch version that wrote it.
    data : dict or None
        Digests of the training's data by part (:func:`hpa_batch.models.loader.data_digest`): a resume
        happens only when they equal the current data's; None in states written before they were kept.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    run: dict[str, Any]
    rng: dict[str, Any]
    rng_ranks: list[dict[str, Any]] | None
    targets: Any
    spec: dict[str, Any]
    fold: int
    version: str = ""
    data: dict[str, str] | None = None


#: Entries a state written by an older hpa-batch may lack (they take their defaults).
_OPTIONAL_STATE = ("version", "data")


def write_state(path: Path, state: TrainingState) -> None:
    """Save ``state/last.pt`` atomically."""
    atomic_save(dict(vars(state)), path)


def read_state(path: Path, map_location: Any = "cpu") -> TrainingState:
    """Load ``state/last.pt`` (tensors onto ``map_location``).

    Raises
    ------
    hpa_batch.core.errors.DamagedFileError
        The file is a checkpoint without the training-state entries.
    """
    ckpt = load_checkpoint(path, map_location)
    names = [f.name for f in dataclasses.fields(TrainingState)]
    missing = [n for n in names if n not in ckpt and n not in _OPTIONAL_STATE] if isinstance(ckpt, dict) else names
    if missing:
        raise DamagedFileError(path, f"not a training state: no {', '.join(missing)}")
    return TrainingState(**{n: ckpt[n] for n in names if n in ckpt})


@dataclass
class BestEpoch:
    """What ``state/best.pt`` holds: the best epoch so far.

    Attributes
    ----------
    model : dict
        State dict of the best epoch's weights.
    thresholds : torch.Tensor
        ``(c,)`` float32 thresholds tuned on that epoch's validation predictions.
    threshold_reasons : list of str
        Why each class kept the default, or ``""`` when tuned.
    epoch : int
        0-based epoch.
    """

    model: dict[str, Any]
    thresholds: Any
    threshold_reasons: list[str]
    epoch: int


def write_best(path: Path, best: BestEpoch) -> None:
    """Save ``state/best.pt`` atomically."""
    atomic_save(dict(vars(best)), path)


def read_best(path: Path, map_location: Any = "cpu") -> BestEpoch:
    """Load ``state/best.pt``."""
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict) or not {"model", "thresholds", "epoch"} <= set(ckpt):
        raise DamagedFileError(path, "not a best-epoch state: no model, thresholds and epoch")
    return BestEpoch(ckpt["model"], ckpt["thresholds"], list(ckpt.get("threshold_reasons", [])), int(ckpt["epoch"]))


# --------------------------------------------------------------------------------------- checks
def checkpoint_problem(
    path: Path, *, deep: bool = False, model: str | None = None, fold: str | None = None
) -> str | None:
    """Why the checkpoint ``path`` is damaged, or None.

    Quick: a zip archive (no torch). ``deep``: loaded safely; a training state (``state/*.pt``) needs
    no more, a ``model.pt`` must name the ``model`` and ``fold`` of its folder when they are given.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except Exception as exc:  # noqa: BLE001 (torch checkpoints are zip archives: this is the quick check)
        return f"not a torch checkpoint archive: {reason_of(exc)}"
    if not deep:
        return None
    try:
        if path.name != MODEL_FILE:  # a training state (state/last.pt, best.pt): loadable is enough
            load_checkpoint(path)
            return None
        ckpt = read_model(path)
    except UnsafeCheckpointError as exc:
        return str(exc).removeprefix(f"{path} ")
    except DamagedFileError as exc:
        return exc.reason
    if model and ckpt.spec.get("name") != model:
        return f"holds model {ckpt.spec.get('name')!r}, its folder is models/{model}"
    if fold is not None and ckpt.fold is not None and str(ckpt.fold) != fold:
        return f"holds fold {ckpt.fold}, its folder is fold{fold}"
    return None


def thresholds_problem(data: dict[str, Any]) -> str | None:
    """Why a parsed ``thresholds.json`` object cannot be read by :func:`read_thresholds`, or None."""
    return None if isinstance(data.get("thresholds"), list) else "no thresholds list"
