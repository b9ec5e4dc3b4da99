"""The conversion stage: a shard's admitted images -> one zarr store of OME-NGFF 0.5 images.

Work inside a job is one Dask task per image, run with the rule's thread count on Dask's threaded
scheduler (``conversion.parallelism: threads``, the default) or its multiprocessing one (``processes``).
A task decodes the four channels, builds the whole pyramid and writes each level as a single zarr
shard (so Dask's unit of work is aligned to the zarr shards and every shard file has exactly one
writer). The shard files are written in one pass by :mod:`hpa_batch.core.shards`; decoding, the pyramid
and compression release the GIL, so threads keep every core busy. Worker processes receive a manifest
row and return a small :class:`ImageResult`; no array crosses a process boundary. Processes are for
nodes where a decoder or codec that holds the GIL leaves cores idle; on 2 cores threads reach the floor
and processes come close (``bench/convert.py`` prints both). Memory is bounded by ``threads`` images in flight, independent of
the shard's size.

Resumability: images already in the store, stamped complete, verified and made from the same source
files (size + mtime) are kept; everything else is rewritten through a staging directory
(:mod:`hpa_batch.core.ngff`). Images whose pixels cannot be decoded are refused with the reason.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numcodecs.blosc
import numpy as np
import pandas as pd
import zarr
from dask.callbacks import Callback

from hpa_batch import CHANNELS, __version__
from hpa_batch.config import Config, ConversionConfig
from hpa_batch.convert.imageio import ImageReadError, read_channel, to_uint16
from hpa_batch.convert.manifest import (
    REJECTED_COLUMNS,
    read_manifest,
    read_rejected,
    write_rejected,
)
from hpa_batch.core.atomic import atomic_write_json, staging_path
from hpa_batch.core.ngff import (
    COLLECTION_GROUP,
    channel_windows,
    downsample2x,
    is_complete,
    level_shapes,
    multiscales_attrs,
    publish,
    read_group_attrs,
    stamp_complete,
    verify_image,
    write_collection,
    write_pyramid,
)
from hpa_batch.core.progress import Progress, get_logger
from hpa_batch.core.shards import update_group_attributes
from hpa_batch.core.stamps import ImageStamp, ShardStamp, stamp_dict


@dataclass(frozen=True)
class ImageResult:
    """Outcome of one image: ``status`` is ``converted``, ``kept`` or ``rejected``."""

    image_id: str
    status: str
    reason: str = ""
    nbytes_in: int = 0
    nbytes_out: int = 0
    levels: int = 0


def source_signature(row: pd.Series) -> dict[str, dict[str, Any]]:
    """Size and mtime of each channel file: an image is reconverted when its sources change."""
    sig = {}
    for c in CHANNELS:
        st = os.stat(row[f"path_{c}"])
        sig[c] = {"path": str(row[f"path_{c}"]), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return sig


def load_channels(row: pd.Series) -> np.ndarray:
    """Decode the four channel files of a manifest row.

    Returns
    -------
    numpy.ndarray
        ``(4, height, width)`` uint16, canonical channel order (8-bit sources scaled by 257).

    Raises
    ------
    ImageReadError
        A channel that does not decode, or decodes to another shape/dtype than the manifest says.
    """
    planes = []
    for c in CHANNELS:
        path = Path(row[f"path_{c}"])
        arr = read_channel(path)
        if arr.shape != (row["height"], row["width"]) or arr.dtype.name != row["source_dtype"]:
            raise ImageReadError(
                f"{path}: decoded {arr.shape} {arr.dtype}, manifest says "
                f"({row['height']}, {row['width']}) {row['source_dtype']} (file changed?)"
            )
        planes.append(to_uint16(arr))
    return np.stack(planes)


def saturated_fractions(image: np.ndarray) -> dict[str, float]:
    """Per channel, the share of pixels at the 16-bit maximum (65535; an 8-bit source's 255 scales
    to it): ``image`` ``(4, height, width)`` uint16 in :data:`CHANNELS` order."""
    top = np.iinfo(np.uint16).max
    return {c: round(float((plane == top).mean()), 4) for c, plane in zip(CHANNELS, image)}


def saturation_problem(saturated: dict[str, float], limit: float) -> str:
    """The refusal reason of an image whose channels are saturated over more than ``limit`` of their
    pixels (an over-exposed protein channel holds no pattern to localise), or ``""``."""
    over = [f"{c} {f:.0%}" for c, f in saturated.items() if f > limit]
    if not over:
        return ""
    return f"saturated: {', '.join(over)} of pixels at the maximum (conversion.max_saturated_fraction={limit:g})"


def build_levels(image: np.ndarray, min_level_size: int, max_levels: int | None) -> list[np.ndarray]:
    """Pyramid of ``image`` (``(c, y, x)``) by repeated :func:`hpa_batch.core.ngff.downsample2x`."""
    shapes = level_shapes(image.shape[1], image.shape[2], min_level_size, max_levels)
    levels = [image]
    for _ in shapes[1:]:
        levels.append(downsample2x(levels[-1]))
    return levels


def convert_image(row: pd.Series, store: Path, staging: Path, conv: ConversionConfig) -> ImageResult:
    """Convert one image into ``store/{image_id}`` through ``staging/{image_id}``.

    Decode failures become a ``rejected`` result; any other failure is raised naming the image.
    """
    image_id = row["image_id"]
    stage_path = staging / image_id
    try:
        signature = source_signature(row)
        image = load_channels(row)
    except (ImageReadError, OSError) as exc:
        return ImageResult(image_id, "rejected", f"decode: {exc}")
    saturated = saturated_fractions(image)
    if problem := saturation_problem(saturated, conv.max_saturated_fraction):
        return ImageResult(image_id, "rejected", problem)
    try:
        levels = build_levels(image, conv.min_level_size, conv.max_levels)
        ome = multiscales_attrs(len(levels), image_id, conv.pixel_size_um, windows=channel_windows(levels[-1]))
        write_pyramid(stage_path, levels, chunk=conv.chunk, codec=conv.codec, ome=ome)
        info = verify_image(stage_path)
        stamp_complete(
            stage_path,
            {
                "image_id": image_id,
                "source": signature,
                "source_dtype": row["source_dtype"],
                "saturated": saturated,
                **info,
            },
        )
        publish(stage_path, store / image_id)
    except Exception as exc:
        shutil.rmtree(stage_path, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on {store.parent} (writing {store / image_id})") from exc
        raise RuntimeError(f"conversion of image {image_id} failed: {exc}") from exc
    return ImageResult(image_id, "converted", "", int(row["source_bytes"]), info["bytes"], info["levels"])


def reusable(path: Path, row: pd.Series) -> ImageStamp | None:
    """The stamp of ``path`` if it holds a complete, verified image made from the row's current files
    (with its saturation measured), else None."""
    if not is_complete(path):
        return None
    try:
        stamp = ImageStamp.from_attrs(read_group_attrs(path))
    except (KeyError, OSError):
        return None
    return stamp if stamp.saturated is not None and stamp.source == source_signature(row) else None


def _prepare_store(store: Path, shard: str, keep: set[str]) -> Path:
    """Create the shard's root group, drop images no longer in the shard, reset staging."""
    if not (store / "zarr.json").is_file():
        zarr.open_group(store, mode="w", zarr_format=3, attributes=ShardStamp(shard=shard).to_attrs())
    else:  # complete again only when this run ends (its record of images stays until then)
        previous = stamp_dict(read_group_attrs(store))
        update_group_attributes(store, ShardStamp.from_dict({**previous, "shard": shard, "complete": False}).to_attrs())
    log = get_logger()
    for child in sorted(p for p in store.iterdir() if p.is_dir()):
        if child.name not in keep and child.name != COLLECTION_GROUP:
            log.info("removing %s: not in shard %s any more", child, shard)
            shutil.rmtree(child)
    staging = staging_path(store, "convert")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def image_task(row: pd.Series, store: Path, staging: Path, conv: ConversionConfig) -> ImageResult:
    """One image: kept if the store already holds it from the same files, else converted."""
    kept = reusable(store / row["image_id"], row)
    if kept is None:
        return convert_image(row, store, staging, conv)
    if problem := saturation_problem(dict(kept.saturated or {}), conv.max_saturated_fraction):
        return ImageResult(row["image_id"], "rejected", problem)  # a limit lowered since: removed from the store
    return ImageResult(row["image_id"], "kept")


def _worker_init() -> None:
    """A conversion worker process: one image at a time on one core (zarr gets one thread, and Blosc,
    which on a process' main thread would spread each chunk over every core, compresses on this one); it
    dies with the job (Linux ``PR_SET_PDEATHSIG``): the job's output lock ends with the job, and no
    orphaned worker may go on writing into the store a rerun then owns."""
    zarr.config.set({"threading.max_workers": 1})
    numcodecs.blosc.use_threads = False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        pass


class _Counted(Callback):
    """Counts finished image tasks into a :class:`Progress` (in the scheduling process)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def _posttask(self, key: object, result: object, dsk: object, state: object, worker_id: object) -> None:
        if isinstance(result, ImageResult):
            self.progress.update(1, result.nbytes_in)


@contextmanager
def worker_pool(workers: int, parallelism: str) -> Iterator[multiprocessing.pool.Pool | None]:
    """The conversion's worker processes (``None``: run on threads of this process).

    Opened first thing in a job, while this process still has a single Python thread (zarr's IO
    loop and pyarrow's pool start later), so the workers are forked with every module already
    imported; a process that already runs threads starts them with ``spawn`` instead.
    """
    if workers <= 1 or parallelism != "processes":
        yield None
        return
    ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        yield pool


def run_images(
    rows: list[pd.Series],
    store: Path,
    staging: Path,
    conv: ConversionConfig,
    threads: int,
    progress: Progress,
    *,
    pool: multiprocessing.pool.Pool | None = None,
) -> list[ImageResult]:
    """Run :func:`image_task` over ``rows`` as Dask tasks on the worker processes of ``pool``
    (:func:`worker_pool`), or on ``threads`` threads of this process."""
    tasks = [dask.delayed(image_task, pure=False)(row, store, staging, conv) for row in rows]
    with _Counted(progress):
        if pool is not None:
            # one image per hand-out (Dask's default batches 6 tasks to a worker: 8 images on 2 workers
            # ran 6 on one and 2 on the other)
            return list(dask.compute(*tasks, scheduler="processes", pool=pool, chunksize=1))
        workers = max(threads, 1)
        with zarr.config.set({"threading.max_workers": workers}):
            return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))


def _write_refusals(
    rows: list[pd.Series], results: list[ImageResult], store: Path, manifest_rejected: Path, rejected_out: Path
) -> pd.DataFrame:
    """Remove the images conversion refused from the store and write the shard's refusals (the
    manifest's, then conversion's); returns conversion's."""
    shard = store.name.removesuffix(".zarr")
    by_id = {r["image_id"]: r for r in rows}
    refused = pd.DataFrame(
        [
            (r.image_id, shard, by_id[r.image_id]["cell_line"], "convert", r.reason)
            for r in results
            if r.status == "rejected"
        ],
        columns=list(REJECTED_COLUMNS),
    )
    for r in results:
        if r.status == "rejected":
            shutil.rmtree(store / r.image_id, ignore_errors=True)
    write_rejected(pd.concat([read_rejected(manifest_rejected), refused], ignore_index=True), rejected_out)
    return refused


def convert_shard(
    cfg: Config,
    manifest_path: Path,
    manifest_rejected: Path,
    store: Path,
    *,
    rejected_out: Path,
    summary_out: Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Convert every admitted image of a shard and write the QC table and the shard summary.

    Parameters
    ----------
    manifest_path, manifest_rejected : Path
        Outputs of the manifest stage for this shard.
    store : Path
        ``results/zarr/{shard}.zarr``.
    rejected_out : Path
        ``results/qc/{shard}.rejected.tsv``: manifest refusals plus decode refusals.
    summary_out : Path
        JSON summary; written last, so its presence means the shard is complete.

    Returns
    -------
    dict
        The summary.
    """
    t0 = time.monotonic()
    with worker_pool(threads, cfg.conversion.parallelism) as pool:  # before anything starts a thread
        manifest = read_manifest(manifest_path)
        shard = store.name.removesuffix(".zarr")
        rows = [r for _, r in manifest.iterrows()]
        staging = staging_path(store, "convert")
        try:
            staging = _prepare_store(store, shard, {r["image_id"] for r in rows})
            progress = Progress(len(rows), f"convert {shard}")
            results = run_images(rows, store, staging, cfg.conversion, threads, progress, pool=pool)
        finally:  # a failed run (a full disk) leaves no staging behind; complete images stay in the store
            shutil.rmtree(staging, ignore_errors=True)

    refused = _write_refusals(rows, results, store, manifest_rejected, rejected_out)

    done = sorted(r.image_id for r in results if r.status != "rejected")
    # the store's record of its images, through the one atomic-write helper (never half a zarr.json)
    update_group_attributes(
        store, ShardStamp(shard=shard, images=tuple(done), complete=True, version=__version__).to_attrs()
    )
    write_collection(store, done)  # the store as a collection of its images, for viewers
    summary = {
        "shard": shard,
        "store": str(store),
        "images": done,
        "n_converted": sum(r.status == "converted" for r in results),
        "n_kept": sum(r.status == "kept" for r in results),
        "n_rejected": len(refused) + len(read_rejected(manifest_rejected)),
        "bytes_in": sum(r.nbytes_in for r in results),
        "bytes_out": sum(r.nbytes_out for r in results),
        "seconds": round(time.monotonic() - t0, 3),
        "threads": threads,
        "version": __version__,
    }
    atomic_write_json(summary_out, summary)
    get_logger().info(
        "convert %s: %d converted, %d kept, %d refused (see %s)",
        shard,
        summary["n_converted"],
        summary["n_kept"],
        summary["n_rejected"],
        rejected_out,
    )
    return summary
