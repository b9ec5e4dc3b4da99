"""Conversion of a shard: contents, refusals, resume, and kill -9 in the middle of a shard."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from conftest import tool_env

from hpa_batch import CHANNELS
from hpa_batch.cli import main
from hpa_batch.convert.imageio import read_channel
from hpa_batch.convert.manifest import read_rejected
from hpa_batch.core.ngff import is_complete, verify_image
from hpa_batch.core.stamps import ImageStamp, ShardStamp


def convert(ds, shard="hela-0000", threads=2, **extra):
    cfg = ds.config_file(**extra)
    assert main(["convert", "--config", str(cfg), "--shard", shard, "--threads", str(threads)]) == 0
    res = ds.root / "results"
    return res, json.loads((res / "zarr" / f"{shard}.convert.json").read_text())


def source_stack(ds, image_id, ext="png"):
    return np.stack([read_channel(ds.path(image_id, c, ext)) for c in CHANNELS])


def test_a_leftover_staging_folder_of_either_stage_is_reported(dataset):
    """Both stages that write a shard store stage through a folder beside it; the store check and the
    damage scan name either one when an interrupted run left it (the store check once missed the
    segmentation's)."""
    from hpa_batch.convert.validate import validate_store
    from hpa_batch.core.atomic import STAGING, staging_path
    from hpa_batch.integrity import leftover

    dataset.add("a16", shape=(128, 128))
    res, _ = convert(dataset)
    store = res / "zarr" / "hela-0000.zarr"
    assert validate_store(store).problems == []
    for stage in STAGING:
        folder = staging_path(store, stage)
        folder.mkdir()
        problems = validate_store(store).problems
        assert len(problems) == 1 and str(folder) in problems[0] and stage in problems[0], problems
        found = leftover(folder)
        assert found is not None and found.output == store
        folder.rmdir()


def test_store_contents_refusals_and_summary(dataset):
    ds = dataset
    ds.add("a16", shape=(300, 280))
    ds.add("b8", dtype="uint8", shape=(256, 256))
    ds.add("ctrunc")
    blob = ds.path("ctrunc", "green").read_bytes()
    ds.path("ctrunc", "green").write_bytes(blob[: len(blob) // 2])
    ds.add("dmissing", channels=("red", "green", "blue"))
    res, summary = convert(ds, shard_size=10)
    store = res / "zarr" / "hela-0000.zarr"
    assert summary["images"] == ["a16", "b8"] and summary["n_rejected"] == 2
    a = zarr.open_group(store / "a16", mode="r")
    assert np.array_equal(a["s0"][...], source_stack(ds, "a16"))
    assert [a[f"s{k}"].shape for k in range(3)] == [(4, 300, 280), (4, 150, 140), (4, 75, 70)]
    b = zarr.open_group(store / "b8", mode="r")
    assert b["s0"].dtype == np.uint16
    assert np.array_equal(b["s0"][...], source_stack(ds, "b8").astype(np.uint16) * 257)
    assert ImageStamp.from_attrs(dict(b.attrs)).source_dtype == "uint8"
    root = ShardStamp.from_attrs(dict(zarr.open_group(store, mode="r").attrs))  # the store's typed stamp
    assert root.complete and root.images == ("a16", "b8") and root.shard == "hela-0000"
    assert not (store / "ctrunc").exists() and not (store / "dmissing").exists()
    assert not (res / "zarr" / ".hela-0000.zarr.staging").exists()
    rej = read_rejected(res / "qc" / "hela-0000.rejected.tsv").set_index("image_id")
    assert rej.at["ctrunc", "stage"] == "convert" and "ctrunc_green.png" in rej.at["ctrunc", "reason"]
    assert rej.at["dmissing", "stage"] == "manifest" and "missing yellow" in rej.at["dmissing", "reason"]
    assert zarr.open_group(store, mode="r").attrs["hpa_batch"]["images"] == ["a16", "b8"]
    # the stage's level files are what zarr-python writes for the same arrays (one-pass writer)
    reference = ds.root / "reference"
    for k in range(3):
        arr = a[f"s{k}"]
        ref = zarr.create_array(
            reference / f"ref{k}",
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=arr.chunks,
            shards=arr.shards,
            compressors=arr.compressors,
            fill_value=0,
            dimension_names=("c", "y", "x"),
            config={"write_empty_chunks": True},
        )
        ref[...] = arr[...]
        assert (store / "a16" / f"s{k}" / "c" / "0" / "0" / "0").read_bytes() == (
            reference / f"ref{k}" / "c" / "0" / "0" / "0"
        ).read_bytes()
        assert json.loads((store / "a16" / f"s{k}" / "zarr.json").read_text()) == json.loads(
            (reference / f"ref{k}" / "zarr.json").read_text()
        )


def test_rerun_keeps_good_images_and_redoes_changed_or_damaged_ones(dataset):
    ds = dataset
    for k in range(3):
        ds.add(f"i{k}")
    res, first = convert(ds)
    assert first["n_converted"] == 3
    store = res / "zarr" / "hela-0000.zarr"
    _, second = convert(ds)
    assert second["n_converted"] == 0 and second["n_kept"] == 3
    # a changed source file, and a damaged stored image, are redone
    new_green = np.full((300, 280), 1234, np.uint16)
    import imagecodecs

    ds.path("i0", "green").write_bytes(imagecodecs.png_encode(new_green))
    shard_file = min(p for p in (store / "i1" / "s1" / "c").rglob("*") if p.is_file())
    shard_file.write_bytes(shard_file.read_bytes()[:-50])
    (res / "manifest" / "hela-0000.parquet").unlink()  # re-probe sources (sizes/mtimes)
    _, third = convert(ds)
    assert third["n_converted"] == 2 and third["n_kept"] == 1
    assert np.array_equal(zarr.open_group(store / "i0", mode="r")["s0"][1], new_green)
    assert is_complete(store / "i1")


def _uninterrupted(ds_root, cfg_path):
    cmd = [
        sys.executable,
        "-m",
        "hpa_batch.cli",
        "convert",
        "--config",
        str(cfg_path),
        "--shard",
        "hela-0000",
        "--threads",
        "1",
    ]
    return cmd


@pytest.mark.slow
def test_kill9_mid_shard_then_rerun_equals_uninterrupted(dataset, tmp_path):
    ds = dataset
    for k in range(14):
        ds.add(f"k{k:02d}", shape=(1024, 1024))
    cfg_path = ds.config_file(shard_size=100)
    cmd = _uninterrupted(ds.root, cfg_path)
    store = ds.root / "results" / "zarr" / "hela-0000.zarr"
    proc = subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [p for p in store.glob("k*")] if store.exists() else []
        if len(done) >= 3:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    published = sorted(store.glob("k*"))
    assert 3 <= len(published) < 14, "kill came too late to test anything"
    assert all(is_complete(p) for p in published)  # nothing half-written is in the store
    assert not (ds.root / "results" / "zarr" / "hela-0000.convert.json").exists()

    subprocess.run(cmd, env=tool_env(), check=True, capture_output=True)
    summary = json.loads((ds.root / "results" / "zarr" / "hela-0000.convert.json").read_text())
    assert summary["n_kept"] >= 3 and summary["n_kept"] + summary["n_converted"] == 14

    # the uninterrupted reference, in a separate results dir
    ref_cfg = ds.config_file(shard_size=100, results_dir=str(tmp_path / "ref"))
    subprocess.run(_uninterrupted(ds.root, ref_cfg), env=tool_env(), check=True, capture_output=True)
    ref = tmp_path / "ref" / "zarr" / "hela-0000.zarr"
    for k in range(14):
        got, want = zarr.open_group(store / f"k{k:02d}", mode="r"), zarr.open_group(ref / f"k{k:02d}", mode="r")
        for level in ("s0", "s1", "s2", "s3"):
            assert np.array_equal(got[level][...], want[level][...]), (k, level)
        verify_image(store / f"k{k:02d}")


def test_worker_processes_write_the_same_files_as_threads(dataset):
    """conversion.parallelism: processes (each image in a worker process) and threads give the same
    store, file for file and byte for byte (only the images' timing attributes may differ)."""
    import shutil

    for i in range(4):
        dataset.add(f"img{i}", shape=(300, 280))
    stores = {}
    for mode in ("processes", "threads"):
        conv = {"min_level_size": 128, "chunk": 128, "parallelism": mode}
        res, summary = convert(dataset, threads=2, shard_size=10, conversion=conv)
        assert summary["n_converted"] == 4
        stores[mode] = dataset.root / f"store-{mode}"
        shutil.move(res / "zarr" / "hela-0000.zarr", stores[mode])
        shutil.rmtree(res)
    a, b = stores["processes"], stores["threads"]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) > 20
    for rel in files:
        if rel.name != "zarr.json":
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        else:
            ja, jb = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
            for doc in (ja, jb):
                doc.get("attributes", {}).get("hpa_batch", {}).pop("written", None)
            assert ja == jb, rel


def test_an_over_exposed_channel_is_refused_with_its_share_and_the_limit_is_rechecked_on_reruns(dataset):
    """A channel with more than ``conversion.max_saturated_fraction`` of its pixels at the maximum
    (65535, or 255 in an 8-bit file) refuses its image with the channel and the share; a bright image
    with clipped structures is kept, its shares in the stamp; a later run with another limit refuses
    or admits the kept images without reading them again."""
    import imagecodecs

    ds = dataset
    rng = np.random.default_rng(4)
    for image_id, dtype, share in (("sat", "uint16", 0.9), ("sat8", "uint8", 0.6), ("bright", "uint16", 0.3)):
        ds.add(image_id, dtype=dtype)
        top = np.iinfo(dtype).max
        green = rng.integers(0, top // 2, (300, 280)).astype(dtype)
        green[rng.random((300, 280)) < share] = top
        ds.path(image_id, "green").write_bytes(imagecodecs.png_encode(green))
    res, summary = convert(ds)
    store = res / "zarr" / "hela-0000.zarr"
    assert summary["images"] == ["bright"] and summary["n_rejected"] == 2
    rej = read_rejected(res / "qc" / "hela-0000.rejected.tsv").set_index("image_id")
    assert rej.at["sat", "reason"].startswith("saturated: green 90% of pixels") and rej.at["sat", "stage"] == "convert"
    assert "green 60%" in rej.at["sat8", "reason"] and "max_saturated_fraction=0.5" in rej.at["sat8", "reason"]
    saturated = ImageStamp.from_attrs(dict(zarr.open_group(store / "bright", mode="r").attrs)).saturated
    assert saturated["green"] == pytest.approx(0.3, abs=0.01) and saturated["red"] < 0.01
    _, stricter = convert(ds, conversion={"min_level_size": 128, "chunk": 128, "max_saturated_fraction": 0.2})
    assert stricter["images"] == [] and stricter["n_converted"] == 0 and not (store / "bright").exists()
    _, looser = convert(ds, conversion={"min_level_size": 128, "chunk": 128, "max_saturated_fraction": 0.95})
    assert looser["images"] == ["bright", "sat", "sat8"]
