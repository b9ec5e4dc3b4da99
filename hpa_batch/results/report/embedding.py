"""The report's UMAP of cells: what the cell model sees (its embeddings in ``cells.h5ad``), or, without
embeddings, the standardised measurements; coloured by predicted class and by cell line.

At most ``report.umap_cells`` cells (a seeded random sample) are read, so memory and time stay bounded
on any run: the rows are read from the h5ad file by index (h5py), never the whole matrix.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hpa_batch.core.labels import LabelCatalog, emitted_ids
from hpa_batch.results.report.markup import Figures, fig_png, html_note, html_section

#: The obsm entries of cells.h5ad that are not embeddings of a model.
NOT_EMBEDDINGS = frozenset({"spatial", "bbox", "fused_prob", "cell_prob", "image_prob", "X_umap"})
#: Cells fewer than this get no map (UMAP needs neighbours).
MIN_CELLS = 10


#: Maps at most: the cell model's embeddings and foundation encoders' (each a UMAP fit).
MAX_MAPS = 4


def embedding_keys(h5ad: Path) -> dict[str, str]:
    """The embeddings in ``h5ad``'s ``obsm`` (``X_<model>``, ``X_<encoder>``) -> what made each
    (``uns["embeddings"]``: "cell model", "encoder <name>"; "embeddings" when not recorded)."""
    import h5py

    with h5py.File(h5ad, "r") as f:
        keys = sorted(k for k in f.get("obsm", {}) if k.startswith("X_") and k not in NOT_EMBEDDINGS)
        recorded = f.get("uns/embeddings")
        sources = {k: _text(recorded[k][()]) for k in recorded} if recorded is not None else {}
    cell_model_first = sorted(keys, key=lambda k: (sources.get(k) != "cell model", k))
    return {k: sources.get(k, "embeddings") for k in cell_model_first}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_rows(h5ad: Path, rows: np.ndarray, key: str | None) -> np.ndarray:
    """``(len(rows), d)`` float32: rows (sorted indices) of ``obsm[key]``, or of ``X`` when ``key`` is None."""
    import h5py

    with h5py.File(h5ad, "r") as f:
        data = f["obsm"][key] if key else f["X"]
        return np.asarray(data[rows], np.float32)


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` UMAP of ``(n, d)`` rows (columns standardised first; constant ones dropped)."""
    import umap

    std = x.std(0)
    keep = std > 0
    z = (x[:, keep] - x[:, keep].mean(0)) / std[keep]
    reducer = umap.UMAP(n_neighbors=min(15, len(z) - 1), random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(np.nan_to_num(z)), np.float32)


def main_class(predicted: str, probs: np.ndarray, catalog: LabelCatalog) -> str:
    """The class a cell is coloured by: the most probable of its predicted classes; "none" when
    nothing is predicted."""
    ids = emitted_ids(predicted)
    if not ids:
        return "none"
    return catalog.classes[max(ids, key=lambda k: probs[k])]


def _scatter(ax: plt.Axes, xy: np.ndarray, groups: pd.Series, title: str) -> None:
    order = groups.value_counts().index.tolist()
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(order):
        mask = (groups == name).to_numpy()
        colour = "#bbbbbb" if name == "none" else cmap(i % 20)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=4, color=colour, label=f"{name} ({mask.sum()})", linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def umap_section(
    cells: pd.DataFrame,
    h5ad: Path | None,
    catalog: LabelCatalog,
    max_cells: int,
    figures: Figures | None = None,
    *,
    seed: int = 0,
) -> str:
    """The UMAP section.

    Parameters
    ----------
    cells : pandas.DataFrame
        The merged cells table's rows in ``cells.h5ad``'s order: ``predicted``, ``cell_line``,
        ``fused_prob_0..n-1``.
    h5ad : Path, optional
        ``cells.h5ad``; None: no map.
    max_cells : int
        Cells sampled for the map (0: no map).
    """
    title = "Cells map (UMAP)"
    if h5ad is None or max_cells == 0:
        return html_section("umap", title, html_note("off (report.umap_cells: 0, or no cells.h5ad given)"))
    if len(cells) < MIN_CELLS:
        return html_section("umap", title, html_note(f"{len(cells)} cells: too few for a map"))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(cells), size=min(max_cells, len(cells)), replace=False))
    sample = cells.iloc[rows]
    probs = sample[[f"fused_prob_{k}" for k in range(catalog.n_classes)]].to_numpy()
    by_class = pd.Series(
        [main_class(p, pr, catalog) for p, pr in zip(sample["predicted"], probs, strict=True)], dtype=str
    )
    by_line = sample["cell_line"].fillna("unknown").astype(str).reset_index(drop=True)
    found = embedding_keys(h5ad)
    keys: list[tuple[str | None, str]] = list(found.items())
    if "cell model" not in found.values():  # what the cells look like without a model: the measurements
        keys.insert(0, (None, "measurements"))
    body = html_note(
        f"{len(rows)} of {len(cells)} cells (seeded random sample, report.umap_cells = {max_cells}); one map of "
        "the cell model's embeddings (without them: of the standardised measurements), then one per "
        "foundation encoder"
    )
    for key, source in keys[:MAX_MAPS]:
        xy = umap_2d(read_rows(h5ad, rows, key), seed)
        # constrained layout keeps the legends outside each map from running under the next map
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
        _scatter(axes[0], xy, by_class, "by predicted class (the most probable of a cell's classes)")
        _scatter(axes[1], xy, by_line, "by cell line")
        what = f"the {source}'s embeddings (obsm[{key!r}])" if key else "the standardised measurements (X)"
        fig.suptitle(what, fontsize=10)
        body += html_note(
            f"UMAP of {what}; in scanpy: sc.pp.neighbors(adata, use_rep={key or 'X'!r}); sc.tl.umap(adata)"
        )
        body += fig_png(fig, figures, "umap")
    return html_section("umap", title, body)
