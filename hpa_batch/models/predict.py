"""The inference stage: per-cell (or per-image) probabilities of one model for one shard.

Reads only the shard's tile store (never the full-resolution images), averages the sigmoid outputs of
every trained fold of the model (and, with ``tta``, of the horizontally and vertically flipped inputs),
applies the folds' mean per-class thresholds, and writes ``results/predictions/{model}/{shard}.parquet``:
one row per cell (cell-level models) or per image (image-level models) with ``prob_{k}`` columns, the
predicted label string, and optionally the pooled feature embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from hpa_batch.cells.tiles import TileReader
from hpa_batch.config import model_spec_from_entry
from hpa_batch.core.labels import LabelCatalog, format_labels
from hpa_batch.core.progress import Progress, get_logger
from hpa_batch.core.stamps import EmbeddingStamp
from hpa_batch.core.tables import with_classes, with_predictions_about, write_table
from hpa_batch.models.checkpoint import read_model
from hpa_batch.models.factory import create_head, create_model, embed, feature_count, forward, num_features_of
from hpa_batch.models.transforms import channel_map, prepare
from hpa_batch.spec import ModelSpec


def predictions_schema(n_classes: int, embed_dim: int | None) -> pa.Schema:
    """Schema of a predictions table for a catalog of ``n_classes``."""
    fields = [
        ("image_id", pa.string()),
        ("cell_id", pa.int32()),
        ("level", pa.string()),
        ("shard", pa.string()),
        ("model", pa.string()),
    ]
    fields += [(f"prob_{k}", pa.float32()) for k in range(n_classes)]
    fields += [("predicted", pa.string()), ("n_predicted", pa.int16())]
    if embed_dim:
        fields.append(("embedding", pa.list_(pa.float32(), embed_dim)))
    return pa.schema(fields)


@dataclass(frozen=True)
class FoldEnsemble:
    """The trained folds of one model, ready to predict.

    Attributes
    ----------
    models : list of torch.nn.Module
        One per fold, in eval mode on the device.
    spec : ModelSpec
        The spec the (last) checkpoint was trained with.
    mean, std : tuple of float
        Per-input-channel normalisation.
    thresholds : numpy.ndarray
        ``(c,)`` float32, the folds' mean per-class thresholds.
    """

    models: list[torch.nn.Module]
    spec: ModelSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    thresholds: np.ndarray


def load_folds(
    paths: list[Path], device: torch.device, catalog: LabelCatalog | None = None, level: str | None = None
) -> FoldEnsemble:
    """The models of every fold, their spec, normalisation and mean thresholds.

    Raises
    ------
    ValueError
        A checkpoint written for another label catalog than ``catalog`` or another level than
        ``level`` (e.g. a ``trained:`` folder of the wrong run), naming the file.
    """
    from hpa_batch.core.labels import get_catalog

    if not paths:
        raise ValueError("no model checkpoints given")
    models, thresholds = [], []
    for path in paths:
        ckpt = read_model(path, catalog=catalog, level=level)
        spec = model_spec_from_entry(ckpt.spec)
        n = get_catalog(ckpt.catalog).n_classes
        if spec.on_embeddings:  # a head: its width is its stored standardisation's
            model: torch.nn.Module = create_head(spec.arch, int(ckpt.weights["mean"].shape[0]), n, spec.dropout)
        else:
            model = create_model(spec.arch, spec.channels, n, None, spec.dropout, n_features=feature_count(spec))
        model.load_state_dict(ckpt.weights)
        models.append(model.to(device).eval())
        thresholds.append(ckpt.thresholds.numpy())
    return FoldEnsemble(models, spec, tuple(ckpt.mean), tuple(ckpt.std), np.mean(thresholds, axis=0))


@torch.no_grad()
def run_models(
    models: list[torch.nn.Module], x: torch.Tensor, tta: bool, embeddings: bool, features: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean sigmoid over folds (and flips) for a normalised batch ``x`` (``(b, k, s, s)``, with
    ``(b, f)`` ``features`` for hybrid models); optional mean pooled embeddings."""
    views = [x, x.flip(-1), x.flip(-2)] if tta else [x]
    probs, feats = [], []
    for m in models:
        for v in views:
            probs.append(torch.sigmoid(forward(m, v, features).float()))
        if embeddings:
            feats.append(embed(m, x, features).float())
    p = torch.stack(probs).mean(0).cpu().numpy()
    return p, (torch.stack(feats).mean(0).cpu().numpy() if embeddings else None)


def predict_shard(
    model_paths: list[Path],
    tiles: Path,
    out: Path,
    catalog: LabelCatalog,
    model_name: str,
    *,
    batch_size: int = 128,
    device: str | None = None,
    level: str | None = None,
) -> int:
    """Predict every row of a shard's tile store (or, for a head on an encoder's embeddings, of the
    shard's embedding store) with the fold ensemble; return the row count (checkpoints must match
    ``catalog`` and, when given, ``level``)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folds = load_folds(model_paths, dev, catalog, level)
    spec, models = folds.spec, folds.models
    array = "embedding" if spec.on_embeddings else "cells" if spec.level == "cell" else "images"
    reader = TileReader(tiles, array)
    group = reader.group
    ids = group["image_id"][:] if array == "images" else group["cell_image"][:]
    cids = np.full(reader.n, -1, np.int32) if array == "images" else group["cell_id"][:]
    chans = channel_map(spec.channels)
    mean = torch.tensor(folds.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(folds.std, device=dev).view(1, -1, 1, 1)
    probs, embeds = [], []
    progress = Progress(reader.n, f"predict {model_name} {tiles.name}")
    for start in range(0, reader.n, batch_size):
        stop = min(start + batch_size, reader.n)
        if spec.on_embeddings:  # the head standardises its rows itself; flips mean nothing to a vector
            x = torch.from_numpy(reader.read_rows(start, stop)).to(dev).float()
        else:
            x = torch.from_numpy(reader.read_rows(start, stop)[:, chans.gather])
            x = (prepare(x.to(dev, non_blocking=True), spec.input_size, chans.mix) - mean) / std
        f = torch.from_numpy(reader.read_features(start, stop)).to(dev) if spec.features else None
        p, e = run_models(models, x, spec.tta and not spec.on_embeddings, spec.embeddings, f)
        probs.append(p)
        if e is not None:
            embeds.append(e)
        progress.update(len(p))
    prob = np.concatenate(probs) if probs else np.zeros((0, catalog.n_classes), np.float32)
    table = pd.DataFrame(
        {
            "image_id": np.asarray(ids, dtype=object),
            "cell_id": cids,
            "level": spec.level,
            "shard": tiles.name.removesuffix(".zarr"),
            "model": model_name,
        }
    )
    for k in range(catalog.n_classes):
        table[f"prob_{k}"] = prob[:, k]
    hits = prob >= folds.thresholds
    table["predicted"] = [format_labels(np.flatnonzero(h).tolist(), catalog) for h in hits]
    table["n_predicted"] = hits.sum(1).astype(np.int16)
    dim = None
    if spec.embeddings:
        dim = int(embeds[0].shape[1]) if embeds else num_features_of(models[0])
        table["embedding"] = list(np.concatenate(embeds)) if embeds else []
    schema = with_classes(predictions_schema(catalog.n_classes, dim), catalog)
    about: dict[str, Any] = {
        "model": model_name,
        "arch": spec.arch,
        "encoder": spec.encoder,
        "folds": sorted(spec.folds),
        "thresholds": [float(t) for t in folds.thresholds],
    }
    if spec.on_embeddings:  # whether the encoder ran with published weights or a random init
        about["random_init"] = EmbeddingStamp.from_attrs(dict(group.attrs)).random_init
    write_table(table, with_predictions_about(schema, about), out)
    get_logger().info("predict %s: %d rows -> %s", model_name, len(table), out)
    return len(table)
