"""Training/inference data from packed tile stores: index, deterministic epoch plans, group loading.

An *epoch plan* is a pure function of (seed, epoch, rows): the chunks holding the rows are visited in a
random order, ``buffer_chunks`` at a time; the rows of a buffer are shuffled and cut into minibatches.
Because the plan needs no data, a resumed run rebuilds it and starts at the saved batch, and DDP ranks
take disjoint buffers (``groups[rank::world]``, truncated to the same batch count on every rank).
A *group* (one buffer) is the unit a DataLoader worker reads: whole zarr chunks, never one tile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

from hpa_batch.cells.tiles import features_array
from hpa_batch.core.errors import reading
from hpa_batch.core.stamps import stamp_dict
from hpa_batch.models.split import multi_hot


@dataclass
class TileIndex:
    """Every tile (row) of a set of tile stores with its labels and fold.

    Attributes
    ----------
    stores : list of Path
        Tile stores (``results/tiles/{shard}.zarr``).
    array : str
        ``"cells"`` or ``"images"``.
    store : numpy.ndarray
        ``(n,)`` int, store of each row.
    row : numpy.ndarray
        ``(n,)`` int, row within its store.
    chunk : numpy.ndarray
        ``(n,)`` int, chunk size of the row's store (rows per chunk).
    image_id, cell_id : numpy.ndarray
        ``(n,)`` object / int32 (``-1`` for image inputs).
    y : numpy.ndarray
        ``(n, c)`` float32 multi-hot weak labels (the image's labels).
    fold : numpy.ndarray
        ``(n,)`` int8, the image's fold (``-1`` = always train).
    n_labels : numpy.ndarray
        ``(n,)`` int, number of labels of the image.
    stamps : list of dict
        Each store's ``hpa_batch`` stamp, as read when indexed (its content digest identifies the data).
    """

    stores: list[Path]
    array: str
    store: np.ndarray
    row: np.ndarray
    chunk: np.ndarray
    image_id: np.ndarray
    cell_id: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    n_labels: np.ndarray
    stamps: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row)


def _sha(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(len(part).to_bytes(8, "little"))
        sha.update(part)
    return sha.hexdigest()[:16]


def store_identity(stamp: dict) -> str:
    """What identifies a tile or embedding store's content: its stamp's ``content_sha256`` (written with
    the rows), or for a store written before those existed the whole stamp."""
    if stamp.get("content_sha256"):
        return str(stamp["content_sha256"])
    return _sha(json.dumps(stamp, sort_keys=True, default=str).encode())


def data_digest(index: TileIndex, train_pos: np.ndarray, val_pos: np.ndarray, classes: Sequence[str]) -> dict[str, str]:
    """Short digests of everything a training reads, by part (so a mismatch can say what changed).

    Parameters
    ----------
    index : TileIndex
        The rows with their weak labels and folds (before any refinement).
    train_pos, val_pos : numpy.ndarray
        ``(n_train,)`` / ``(n_val,)`` int positions of the training and validation rows.
    classes : sequence of str
        The label catalog's class names, in order.

    Returns
    -------
    dict
        ``catalog``, ``rows`` (image and cell ids), ``labels`` (the ``(n, c)`` targets), ``folds`` (the
        rows' folds and the training / validation positions) and ``store:<name>`` per input store (its
        content digest), each a 16-hex-digit SHA-256 prefix.
    """
    ids = "\0".join(map(str, index.image_id)).encode()
    out = {
        "catalog": _sha("\0".join(classes).encode()),
        "rows": _sha(ids, np.ascontiguousarray(index.cell_id, np.int64).tobytes()),
        "labels": _sha(np.ascontiguousarray(index.y, np.uint8).tobytes()),
        "folds": _sha(
            np.ascontiguousarray(index.fold, np.int64).tobytes(),
            np.ascontiguousarray(train_pos, np.int64).tobytes(),
            np.ascontiguousarray(val_pos, np.int64).tobytes(),
        ),
    }
    for path, stamp in zip(index.stores, index.stamps, strict=True):
        out[f"store:{Path(path).name}"] = store_identity(stamp)
    return out


def data_changes(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """The parts of :func:`data_digest` that differ between ``old`` and ``new`` (all of them, said as
    one reason, when ``old`` has none: a state written before digests were recorded)."""
    if not old:
        return ["the state records no digest of its training data (written by an older hpa-batch)"]
    names = {"catalog": "label catalog", "rows": "tile rows", "labels": "labels", "folds": "folds"}
    changed = [names.get(k, k) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    stores = [c.removeprefix("store:") for c in changed if c.startswith("store:")]
    plain = [c for c in changed if not c.startswith("store:")]
    return plain + ([f"input store(s) {', '.join(stores)}"] if stores else [])


def build_index(
    stores: list[Path], splits: pd.DataFrame, level: str, n_classes: int, *, array: str | None = None
) -> TileIndex:
    """Index the rows of ``stores`` and attach each row's image labels and fold from ``splits``.

    ``array`` names the input rows (default ``cells`` or ``images`` by ``level``; ``embedding`` for the
    embedding stores of :mod:`hpa_batch.models.embed`, which index their cells the same way)."""
    array = array or ("cells" if level == "cell" else "images")
    meta = splits.set_index("image_id")
    parts, stamps = [], []
    for k, path in enumerate(stores):
        with reading(path):
            g = zarr.open_group(path, mode="r", zarr_format=3)
            stamps.append(stamp_dict(dict(g.attrs)))
            ids = g["image_id"][:] if array == "images" else g["cell_image"][:]
            cids = np.full(len(ids), -1, np.int32) if array == "images" else g["cell_id"][:]
        parts.append(
            pd.DataFrame(
                {
                    "store": k,
                    "row": np.arange(len(ids)),
                    "chunk": int(g[array].chunks[0]),
                    "image_id": np.asarray(ids, dtype=object),
                    "cell_id": cids,
                }
            )
        )
    table = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["store", "row", "chunk", "image_id", "cell_id"])
    )
    missing = set(table["image_id"]) - set(meta.index)
    if missing:
        raise ValueError(f"{len(missing)} tiled image(s) are not in the splits table, e.g. {sorted(missing)[:3]}")
    labels = [list(meta.at[i, "labels"]) for i in table["image_id"]]
    return TileIndex(
        stores=list(stores),
        array=array,
        store=table["store"].to_numpy(int),
        row=table["row"].to_numpy(int),
        chunk=table["chunk"].to_numpy(int),
        image_id=table["image_id"].to_numpy(object),
        cell_id=table["cell_id"].to_numpy(np.int32),
        y=multi_hot(labels, n_classes).astype(np.float32),
        fold=meta.loc[table["image_id"], "fold"].to_numpy(np.int8),
        n_labels=np.array([len(v) for v in labels], int),
        stamps=stamps,
    )


def _batches(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    out = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:  # a 1-row batch breaks BatchNorm: merge it
        tail = out.pop()
        out[-1] = np.concatenate([out[-1], tail])
    return out


def epoch_plan(
    index: TileIndex,
    positions: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    buffer_chunks: int,
    shuffle: bool = True,
    rank: int = 0,
    world: int = 1,
) -> list[list[np.ndarray]]:
    """Groups of minibatches (arrays of positions into ``index``) for one epoch of one rank.

    Parameters
    ----------
    positions : numpy.ndarray
        Rows of the index to visit (may repeat, e.g. oversampled negatives).
    """
    rng = np.random.default_rng([seed, epoch])
    key = index.store[positions] * (1 << 32) + index.row[positions] // index.chunk[positions]
    chunks, chunk_of = np.unique(key, return_inverse=True)
    order = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
    visit = np.empty(len(chunks), np.int64)
    visit[order] = np.arange(len(chunks))
    buffer = visit[chunk_of] // buffer_chunks  # buffer number of every position
    by_buffer = np.argsort(buffer, kind="stable")  # one sort, not one scan per buffer
    cuts = np.flatnonzero(np.diff(buffer[by_buffer])) + 1
    groups = []
    for members in np.split(positions[by_buffer], cuts) if len(positions) else []:
        if shuffle:
            members = rng.permutation(members)
        groups.append(_batches(members, batch_size))

    def share(r: int) -> list[list[np.ndarray]]:
        if len(groups) >= world:
            return groups[r::world]  # whole buffers per rank: each rank reads its own chunks
        return [g[r::world] for g in groups]  # fewer buffers than ranks: every world-th batch of each

    mine = share(rank)
    if world > 1:  # every rank must run the same number of steps
        steps = min(sum(len(g) for g in share(r)) for r in range(world))
        mine = _truncate(mine, steps)
    return mine


def _truncate(groups: list[list[np.ndarray]], steps: int) -> list[list[np.ndarray]]:
    out, left = [], steps
    for g in groups:
        if left <= 0:
            break
        out.append(g[:left])
        left -= len(out[-1])
    return out


class GroupDataset(torch.utils.data.Dataset):
    """Item ``i`` = all tiles of group ``i`` (whole chunks read once), in the group's batch order.

    Returns a dict: ``x`` uint8 ``(n, k, S, S)`` (selected channels), ``y`` float32 ``(n, c)``,
    ``pos`` int64 ``(n,)``, ``sizes`` int64 (batch sizes) and, with ``features``, ``f`` float32
    ``(n, f)``: the rows' hand-crafted features (cells: their design rows; images: study 002's image
    features), read by the same whole chunks as the tiles.
    """

    def __init__(
        self, index: TileIndex, groups: list[list[np.ndarray]], channels: list[int] | None, features: bool = False
    ):
        # channels: canonical planes to read, in order (transforms.ChannelMap.gather); None: whole rows
        # (embedding stores)
        self.index, self.groups, self.channels, self.features = index, groups, channels, features
        self._arrays: dict[tuple[int, str], zarr.Array] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def _array(self, store: int, name: str | None = None) -> zarr.Array:
        name = name or self.index.array
        if (store, name) not in self._arrays:  # opened lazily, inside the worker process
            group = zarr.open_group(self.index.stores[store], mode="r", zarr_format=3)
            where = self.index.stores[store]
            array = features_array(group, where, self.index.array) if name == "features" else group[name]
            self._arrays[(store, name)] = array
        return self._arrays[(store, name)]

    def _gather(self, pos: np.ndarray, name: str, select: list[int] | None) -> np.ndarray:
        """Rows ``pos`` of array ``name`` (``select``: planes to keep), one read per whole chunk and
        one copy per row (the index's chunk of the tiles array is also the row block of the features)."""
        idx = self.index
        size = idx.chunk[pos]
        key = idx.store[pos] * (1 << 32) + idx.row[pos] // size
        within = idx.row[pos] % size
        out: np.ndarray | None = None
        for k in np.unique(key):
            mine = np.flatnonzero(key == k)
            s, c, n = int(idx.store[pos[mine[0]]]), int(k & ((1 << 32) - 1)), int(size[mine[0]])
            array = self._array(s, name)  # refuses a store without feature rows by name
            with reading(self.index.stores[s]):
                block = array[c * n : (c + 1) * n]
            rows = block[within[mine]]
            if select is not None and list(select) != list(range(block.shape[1])):
                rows = rows[:, select]
            if out is None:
                out = np.empty((len(pos), *rows.shape[1:]), rows.dtype)
            out[mine] = rows
        if out is None:
            raise ValueError("no rows to read")
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pos = np.concatenate(self.groups[i])
        item = {
            "x": torch.from_numpy(self._gather(pos, self.index.array, self.channels)),
            "y": torch.from_numpy(self.index.y[pos]),
            "pos": torch.from_numpy(pos),
            "sizes": torch.tensor([len(b) for b in self.groups[i]]),
        }
        if self.features:
            item["f"] = torch.from_numpy(self._gather(pos, "features", None).astype(np.float32))
        return item


def feature_moments(index: TileIndex, positions: np.ndarray, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``(f,)`` float64 of the feature rows at ``positions`` (each
    distinct row once), read one store at a time; ``name``: another array of ``(n, f)`` rows (the
    embeddings) instead of the tiles' feature rows."""
    total: np.ndarray | None = None
    sq: np.ndarray | None = None
    n = 0
    rows = np.unique(positions)
    for s in np.unique(index.store[rows]):
        mine = index.row[rows[index.store[rows] == s]]
        with reading(index.stores[int(s)]):
            group = zarr.open_group(index.stores[int(s)], mode="r", zarr_format=3)
        # the tiles' feature rows (refuses a store without them), or the named array
        rows_of = group[name] if name else features_array(group, index.stores[int(s)], index.array)
        with reading(index.stores[int(s)]):
            f = rows_of[:][mine].astype(np.float64)
        total = f.sum(0) if total is None else total + f.sum(0)
        sq = (f * f).sum(0) if sq is None else sq + (f * f).sum(0)
        n += len(f)
    if not n or total is None or sq is None:
        raise ValueError("no feature rows to standardise")
    mean = total / n
    return mean, np.sqrt(np.maximum(sq / n - mean * mean, 0.0))


def iterate_batches(
    dataset: GroupDataset, num_workers: int, skip: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]]:
    """Yield ``(batch_number, x, f, y, pos)`` over all groups, starting at batch ``skip`` (``f`` is
    None unless the dataset reads features).

    Groups wholly before ``skip`` are not read. Workers (spawned: zarr's I/O thread must not be forked)
    read groups ahead; order is preserved.
    """
    first, seen = 0, 0
    for g in dataset.groups:
        if seen + len(g) > skip:
            break
        seen += len(g)
        first += 1
    sub = GroupDataset(dataset.index, dataset.groups[first:], dataset.channels, dataset.features)
    loader = torch.utils.data.DataLoader(
        sub,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers else None,
        prefetch_factor=2 if num_workers else None,
        # its own generator: starting an iterator would otherwise draw from torch's global one, which
        # dropout uses, so a resumed run (one more iterator) would shift every later dropout mask
        generator=torch.Generator().manual_seed(0),
    )
    b = seen
    for item in loader:
        start = 0
        for size in item["sizes"].tolist():
            if b >= skip:
                sl = slice(start, start + size)
                f = item["f"][sl] if "f" in item else None
                yield b, item["x"][sl], f, item["y"][sl], item["pos"][sl]
            b += 1
            start += size
