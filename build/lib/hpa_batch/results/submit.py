"""Submission file of the HPA Single-Cell Classification competition (Kaggle, 2021).

The CSV has the header ``ID,ImageWidth,ImageHeight,PredictionString`` and one row per image. The
prediction string is a space-separated sequence of ``class confidence rle`` triples, one per class and
cell. ``rle`` is the competition's mask token: the cell's binary mask at full resolution, encoded as
COCO RLE by :func:`pycocotools.mask.encode` (column-major run lengths), whose compressed ``counts`` bytes
are ``zlib``-compressed and then base64-encoded to an ASCII string.

:func:`encode_cells` builds the same tokens as :func:`encode_mask` without ever materialising a full-size
mask per cell: the column-major run lengths of a cell are computed from its bounding box alone and handed
to pycocotools as an uncompressed RLE, which it compresses exactly as it compresses an encoded mask.
"""

from __future__ import annotations

import base64
import csv
import io
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from pycocotools import mask as coco_mask
from scipy import ndimage as ndi

from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.labels import emitted_ids
from hpa_batch.core.ngff import label_level, level_name
from hpa_batch.core.progress import get_logger
from hpa_batch.core.tables import read_arrow, read_parquet, read_schema

HEADER = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
LABELS_PATH = label_level("cells")
ZLIB_LEVEL = 9


# ----------------------------------------------------------------------------------------------------
# mask tokens


def _token(counts: bytes) -> str:
    """Competition token of compressed COCO RLE ``counts``: base64(zlib(counts)) as ASCII."""
    return base64.b64encode(zlib.compress(counts, ZLIB_LEVEL)).decode("ascii")


def encode_mask(mask: np.ndarray) -> str:
    """Encode one binary mask as a competition RLE token.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(h, w)`` bool or integer array, the full-resolution mask (non-zero = inside).

    Returns
    -------
    str
        ``base64(zlib(counts))`` of the COCO RLE of ``mask``, ASCII.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return _token(rle["counts"])


def decode_mask(token: str, height: int, width: int) -> np.ndarray:
    """Decode a competition RLE token.

    Parameters
    ----------
    token : str
        ``base64(zlib(counts))`` as written by :func:`encode_mask`.
    height, width : int
        Size of the image the mask belongs to.

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` bool mask.
    """
    counts = zlib.decompress(base64.b64decode(token))
    return coco_mask.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)


def _runs(crop: np.ndarray, top: int, left: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO run lengths of a mask that is ``crop`` at ``(top, left)`` and empty elsewhere.

    Parameters
    ----------
    crop : numpy.ndarray
        ``(bh, bw)`` bool, the mask inside its bounding box.
    top, left : int
        Position of the box in the ``(height, width)`` image.

    Returns
    -------
    list of int
        Alternating background / foreground run lengths in column-major order, starting with a
        (possibly empty) background run, exactly as :func:`pycocotools.mask.encode` counts them.
    """
    cols, rows = np.nonzero(crop.T)  # column-major order of the set pixels
    flat = (cols.astype(np.int64) + left) * height + (rows.astype(np.int64) + top)
    if flat.size == 0:
        return [height * width]
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = flat[np.r_[0, breaks]]
    ends = flat[np.r_[breaks - 1, flat.size - 1]] + 1  # exclusive
    edges = np.empty(2 * starts.size + 2, dtype=np.int64)
    edges[0], edges[-1] = 0, height * width
    edges[1:-1:2], edges[2:-1:2] = starts, ends
    runs = np.diff(edges).tolist()
    return runs[:-1] if runs[-1] == 0 else runs  # like pycocotools: no empty run after the last pixel


def encode_cells(cells: np.ndarray) -> dict[int, str]:
    """Competition RLE tokens of every cell of a label image.

    Works on each cell's bounding box only (:func:`scipy.ndimage.find_objects`); the tokens are identical
    to ``encode_mask(cells == k)``.

    Parameters
    ----------
    cells : numpy.ndarray
        ``(h, w)`` integer labels (uint32 in the stores), 0 = background.

    Returns
    -------
    dict of int to str
        Cell id -> token, for every id > 0 present in ``cells``, in ascending id order.
    """
    if cells.ndim != 2:
        raise ValueError(f"cells must be 2-D, got shape {cells.shape}")
    height, width = cells.shape
    tokens: dict[int, str] = {}
    for index, box in enumerate(ndi.find_objects(cells)):
        if box is None:
            continue
        cell_id = index + 1
        runs = _runs(cells[box] == cell_id, box[0].start, box[1].start, height, width)
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        tokens[cell_id] = _token(rle["counts"])
    return tokens


# ----------------------------------------------------------------------------------------------------
# prediction strings


def prediction_string(
    tokens: dict[int, str],
    probs: pd.DataFrame,
    n_classes: int,
    min_confidence: float = 0.0,
    classes: Sequence[int] | None = None,
) -> str:
    """The ``PredictionString`` of one image.

    Parameters
    ----------
    tokens : dict of int to str
        Cell id -> mask token (:func:`encode_cells`).
    probs : pandas.DataFrame
        Rows of ONE image with columns ``cell_id`` and ``prob_0 .. prob_{n_classes-1}``.
    n_classes : int
        Number of classes of the catalog.
    min_confidence : float
        Triples with a lower confidence are left out.
    classes : sequence of int, optional
        Only these class indices are written (default: all).

    Returns
    -------
    str
        ``"class confidence rle ..."``: cells in ascending id order, classes ascending within a cell.
        Cells without a token or without a row are left out; empty if nothing is left.
    """
    columns = _class_columns(n_classes, classes)
    rows = probs[probs["cell_id"].isin(list(tokens))].sort_values("cell_id", kind="stable")
    if rows["cell_id"].duplicated().any():
        raise ValueError("more than one prediction row for a cell")
    values = rows[[f"prob_{k}" for k in columns]].to_numpy(dtype=np.float64)
    parts = []
    for cell_id, cell_probs in zip(rows["cell_id"].to_numpy(), values):
        token = tokens[int(cell_id)]
        parts += [f"{k} {p:.6f} {token}" for k, p in zip(columns, cell_probs) if p >= min_confidence]
    return " ".join(parts)


def _class_columns(n_classes: int, classes: Sequence[int] | None) -> list[int]:
    """Sorted class indices to write; checks them against ``n_classes``."""
    columns = sorted({int(k) for k in classes}) if classes is not None else list(range(n_classes))
    if any(k < 0 or k >= n_classes for k in columns):
        raise ValueError(f"class indices {columns} out of range for {n_classes} classes")
    return columns


# ----------------------------------------------------------------------------------------------------
# the submission file


def image_index(stores: Sequence[Path]) -> dict[str, Path]:
    """Image id -> store of every image group in ``stores`` (group names only; no data is read)."""
    index: dict[str, Path] = {}
    for store in stores:
        for image_id, group in zarr.open_group(Path(store), mode="r").groups():
            if "multiscales" not in group.attrs.get("ome", {}):
                continue  # OME/: the collection's description, not an image
            if image_id in index:
                raise ValueError(f"image {image_id} is in both {index[image_id]} and {store}")
            index[image_id] = Path(store)
    return index


def read_cells(store: Path, image_id: str) -> np.ndarray | None:
    """``(h, w)`` uint32 full-resolution cell labels of an image, or None if it has none."""
    group = zarr.open_group(Path(store) / image_id, mode="r")
    try:
        return group[LABELS_PATH][...]
    except KeyError:
        return None


def image_size(store: Path, image_id: str) -> tuple[int, int]:
    """``(height, width)`` of an image from its array metadata (labels, else the ``s0`` image)."""
    group = zarr.open_group(Path(store) / image_id, mode="r")
    for path in (LABELS_PATH, level_name(0)):
        try:
            shape = group[path].shape
        except KeyError:
            continue
        return int(shape[-2]), int(shape[-1])
    raise ValueError(f"{store}/{image_id} has neither {LABELS_PATH} nor {level_name(0)}")


def read_predictions(path: Path, n_classes: int) -> pd.DataFrame:
    """Cell-level rows of a predictions parquet: ``image_id``, ``cell_id``, ``prob_0 .. prob_{n-1}``."""
    names = set(read_schema(path).names)
    probs = [f"prob_{k}" for k in range(n_classes)]
    missing = {"image_id", "cell_id", *probs} - names
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    columns = ["image_id", "cell_id", *probs] + (["level"] if "level" in names else [])
    df = read_parquet(path, columns=columns)
    if "level" in df and (df["level"] != "cell").any():
        raise ValueError(f"{path} holds non-cell predictions; a submission needs cell-level predictions")
    return df.drop(columns="level", errors="ignore")


def image_rows(
    predictions: pd.DataFrame,
    index: dict[str, Path],
    n_classes: int,
    min_confidence: float,
    classes: Sequence[int] | None,
) -> Iterator[tuple[str, int, int, str]]:
    """Submission rows ``(ID, width, height, PredictionString)`` of the images in one predictions table."""
    for image_id, probs in predictions.groupby("image_id", sort=True):
        if image_id not in index:
            raise ValueError(f"image {image_id} has predictions but is in none of the stores")
        cells = read_cells(index[image_id], image_id)
        if cells is None:
            height, width = image_size(index[image_id], image_id)
            yield image_id, width, height, ""
            continue
        tokens = encode_cells(cells)
        unmatched = len(tokens) - int(probs["cell_id"].isin(list(tokens)).sum())
        if unmatched:
            get_logger().warning("%s: %d cells without a prediction are left out", image_id, unmatched)
        text = prediction_string(tokens, probs, n_classes, min_confidence, classes)
        yield image_id, cells.shape[1], cells.shape[0], text


def _csv_line(row: tuple[str | int, ...]) -> str:
    """One CSV line (with its newline) of a submission row."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


class _Spool:
    """Rows written in any order to an anonymous temp file, read back sorted by ID.

    Memory holds only ``(ID, offset, length)`` per row, never the prediction strings.
    """

    def __init__(self, directory: Path) -> None:
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (the spool lives until _write_atomic)
        self.entries: list[tuple[str, int, int]] = []

    def add(self, row: tuple[str, int, int, str]) -> None:
        data = _csv_line(row).encode("utf-8")
        self.entries.append((row[0], self.file.tell(), len(data)))
        self.file.write(data)

    def sorted_lines(self) -> Iterator[bytes]:
        self.file.flush()
        for _, offset, length in sorted(self.entries):
            self.file.seek(offset)
            yield self.file.read(length)

    def close(self) -> None:
        self.file.close()


def table_predictions(cells_path: Path, n_classes: int, prefix: str = "fused_prob") -> Iterator[pd.DataFrame]:
    """Cell-level prediction frames (``image_id``, ``cell_id``, ``prob_k``) from the merged cells table,
    one shard at a time: ``{prefix}_k`` columns (the fused probabilities by default, the confidences that
    ``metrics.json`` and the report score) renamed to ``prob_k``."""
    cells_path = Path(cells_path)
    shards = read_parquet(cells_path, columns=["shard"])["shard"].unique()
    columns = ["image_id", "cell_id", *[f"{prefix}_{k}" for k in range(n_classes)]]
    for shard in sorted(shards):
        frame = read_parquet(cells_path, columns=columns, filters=[("shard", "==", shard)])
        yield frame.rename(columns={f"{prefix}_{k}": f"prob_{k}" for k in range(n_classes)})


def write_submission(
    predictions: list[Path] | Iterator[pd.DataFrame],
    stores: list[Path],
    out: Path,
    n_classes: int,
    *,
    min_confidence: float = 0.0,
    classes: Sequence[int] | None = None,
) -> int:
    """Write the competition CSV for every image of ``stores``.

    Streams one predictions file at a time (each image is looked up in whichever store holds a group
    named after it), spools the rows to a temp file, then writes them sorted by ID to ``out`` through a
    temp file and a rename.

    Parameters
    ----------
    predictions : list of Path, or iterator of pandas.DataFrame
        ``results/predictions/{model}/{shard}.parquet`` files (cell level), or frames with the same
        columns (:func:`table_predictions`: the merged table's fused probabilities, what the workflow
        submits).
    stores : list of Path
        The shard stores ``results/zarr/{shard}.zarr``; every image group gets a row, those without
        prediction rows (or without cells) an empty ``PredictionString``.
    out : Path
        The CSV to write.
    n_classes : int
        Number of classes (``prob_*`` columns) of the catalog.
    min_confidence : float
        Triples with a lower confidence are left out.
    classes : sequence of int, optional
        Only these class indices are written (default: all).

    Returns
    -------
    int
        Number of rows (images) written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _class_columns(n_classes, classes)
    index = image_index(stores)
    pending = set(index)
    spool = _Spool(out.parent)
    try:
        for source in predictions:
            frame = source if isinstance(source, pd.DataFrame) else read_predictions(Path(source), n_classes)
            for row in image_rows(frame, index, n_classes, min_confidence, classes):
                if row[0] not in pending:
                    raise ValueError(f"image {row[0]} has predictions in more than one file")
                pending.discard(row[0])
                spool.add(row)
        for image_id in pending:
            height, width = image_size(index[image_id], image_id)
            spool.add((image_id, width, height, ""))
        _write_atomic(out, spool)
    finally:
        spool.close()
    get_logger().info("wrote %s: %d images", out, len(index))
    return len(index)


def _write_atomic(out: Path, spool: _Spool) -> None:
    """Header plus the spooled rows sorted by ID into ``out`` via a temp file and a rename."""
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        fh.write(_csv_line(HEADER).encode("utf-8"))
        fh.writelines(spool.sorted_lines())


# ----------------------------------------------------------------------------------------------------
# the 2018 task (Human Protein Atlas Image Classification, Kaggle 2018): one label set per image
HEADER_2018 = ("Id", "Predicted")


def write_image_submission(images_path: Path, out: Path) -> int:
    """Write the 2018 competition's ``Id,Predicted`` CSV from ``results/tables/images.parquet``.

    ``Predicted`` is the image's thresholded class ids, space-separated in increasing order (the
    table's ``predicted``, whatever its catalog separator). Every image of the plan has a row, in the
    table's order; a refused image gets an empty prediction (the competition expects every id).
    Written to a temporary name and renamed. Returns the number of rows.
    """
    table = read_arrow(images_path, columns=["image_id", "predicted", "rejected"]).to_pandas()
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER_2018)
        for image_id, predicted, rejected in table.itertuples(index=False):
            ids = [] if rejected else emitted_ids(predicted)
            writer.writerow((image_id, " ".join(map(str, ids))))
    get_logger().info("submit: %d images -> %s (Id,Predicted)", len(table), out)
    return len(table)


def read_image_submission(path: Path) -> dict[str, list[int]]:
    """``Id -> class ids`` of a 2018-format submission (raises ``ValueError`` naming the file on a bad
    header or token)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(rows[0]) != HEADER_2018:
        raise ValueError(f"{path}: header {rows[0] if rows else None} is not {list(HEADER_2018)}")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        try:
            out[row[0]] = [int(t) for t in row[1].split()]
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}: line {n} is not 'Id,<space-separated class ids>': {row}") from exc
    return out
