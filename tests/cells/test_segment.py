"""Segmentation: registry, backends (watershed real; adapters with stand-in networks), labels in the
store (ome-zarr-models, napari-ome-zarr), quality against the synthetic truth, resume."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from conftest import SMALL_SEGMENTATION, image_dirs, touching_pair
from scipy import ndimage as ndi
from skimage.measure import label as measure_label

from hpa_batch.cells.segment import BackendUnavailable, create_segmenter, list_backends
from hpa_batch.cells.segment.adapters import (
    CellposeSegmenter,
    HPACellSegSegmenter,
    match_nuclei,
)
from hpa_batch.cells.segment.quality import average_precision, iou_matrix
from hpa_batch.cells.segment.stage import border_ids, filter_cells
from hpa_batch.config import load_config
from hpa_batch.core.labels import CATALOGS
from hpa_batch.core.ngff import label_levels
from hpa_batch.synth import STYLES, synthesize_image
from hpa_batch.synth.styles import SynthStyle


def synth(seed=0, size=384, line="A-431"):
    return synthesize_image(np.random.default_rng(seed), size, line, CATALOGS["hpa2021"])


def check_consistent(cells, nuclei):
    n = cells.max()
    assert set(range(1, n + 1)) <= set(np.unique(cells)) <= set(range(n + 1))
    assert set(np.unique(nuclei)) <= set(range(n + 1))
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])  # nucleus k lies inside cell k


def test_registry():
    assert {"watershed", "hpacellseg", "cellpose"} <= set(list_backends())
    with pytest.raises(ValueError, match="known"):
        create_segmenter("stardust")


def test_quality_metric_known_cases():
    a = np.zeros((10, 10), int)
    a[:5, :5], a[5:, 5:] = 1, 2
    assert average_precision(a, a, 0.5) == 1.0
    b = a.copy()
    b[b == 2] = 0  # one missed object
    assert average_precision(a, b, 0.5) == 0.5
    c = a.copy()
    c[:5, :3] = 0  # IoU of object 1 = 10/25
    assert average_precision(a, c, 0.5) == pytest.approx(1 / 3)
    assert iou_matrix(a, c)[0, 0] == pytest.approx(0.4)


@pytest.mark.parametrize("line", ["U-2 OS", "A-431", "U-251 MG"])
def test_watershed_finds_the_synthetic_cells(line):
    img = synth(3, 384, line)
    seg = create_segmenter("watershed")  # no option: every scale comes from the image
    cells, nuclei = seg.segment(img.channels, scale=1.0)
    check_consistent(cells, nuclei)
    assert average_precision(img.cells.astype(int), cells, 0.5) >= 0.9


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_segments_above_a_floor(style):
    """Default settings on every generator style (seed 47: never used for tuning, see BENCHMARKS.md)."""
    seg = create_segmenter("watershed")
    aps = []
    for i, line in enumerate(["U-2 OS", "A-431"]):
        img = synthesize_image(np.random.default_rng([47, i]), 512, line, "hpa2021", style=style)
        cells, nuclei = seg.segment(img.channels, scale=1.0)
        check_consistent(cells, nuclei)
        aps.append(average_precision(img.cells.astype(int), cells, 0.5))
    assert np.mean(aps) >= 0.85 and min(aps) >= 0.7, aps


def test_one_channel_outliers_cannot_shrink_the_cells():
    """A few saturated dots in every reference channel: cells keep their size (the collapse of #10)."""
    img = synth(4, 512, "U-2 OS")
    seg = create_segmenter("watershed", green_weight=1.0)
    ref, _ = seg.segment(img.channels, scale=1.0)
    spiked = img.channels.copy()
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(img.cells)
    pick = rng.choice(len(ys), 40, replace=False)
    for c in (0, 1, 3):
        spiked[c, ys[pick], xs[pick]] = 65535
    cells, _ = seg.segment(spiked, scale=1.0)
    assert average_precision(img.cells.astype(int), cells, 0.5) >= 0.9
    assert abs((cells > 0).mean() - (ref > 0).mean()) < 0.02


def test_working_level_at_half_resolution_matches_full():
    img = synth(5, 512, "HeLa")
    from hpa_batch.core.ngff import downsample2x

    seg = create_segmenter("watershed")
    low, _ = seg.segment(downsample2x(img.channels), scale=2.0)
    full = label_levels(low, 1, [(512, 512), (256, 256)])[0]
    assert average_precision(img.cells.astype(int), full.astype(int), 0.5) >= 0.85


def test_label_levels_are_exact():
    mask = np.arange(12, dtype=np.uint32).reshape(3, 4)
    levels = label_levels(mask, 1, [(5, 7), (3, 4), (2, 2)])
    assert [lv.shape for lv in levels] == [(5, 7), (3, 4), (2, 2)]
    assert np.array_equal(levels[1], mask) and np.array_equal(levels[2], mask[::2, ::2])
    assert np.array_equal(levels[0][::2, ::2], mask[:, :4][:3, :4]) and levels[0][4, 6] == mask[2, 3]


def test_filters_and_border():
    cells = np.zeros((20, 20), np.int32)
    cells[0:5, 0:5], cells[8:14, 8:14], cells[15:16, 15:16] = 1, 2, 3
    nuclei = np.where(cells > 0, cells, 0)
    assert border_ids(cells).tolist() == [1]
    kept, _ = filter_cells(cells, nuclei, 4, exclude_border=True)
    assert kept.max() == 1 and kept[10, 10] == 1  # 1 (border) and 3 (small) gone, 2 renumbered


class StandInHPA:
    """Same methods as hpacellseg's CellSegmentator, answering from ground truth (uint8 maps)."""

    def __init__(self, img):
        self.img = img

    def pred_nuclei(self, images):
        n = self.img.nuclei > 0
        border = n & ~np.pad(n, 1)[2:, 1:-1] | n & ~np.pad(n, 1)[:-2, 1:-1]
        return [np.stack([np.zeros_like(n), border, n], -1).astype(np.uint8) * 255]

    def pred_cells(self, images):
        assert len(images) == 3 and images[0][0].shape == self.img.cells.shape
        c = self.img.cells > 0
        edges = np.zeros_like(c)
        edges[:-1] |= self.img.cells[:-1] != self.img.cells[1:]
        edges[:, :-1] |= self.img.cells[:, :-1] != self.img.cells[:, 1:]
        return [np.stack([np.zeros_like(c), edges, c & ~edges], -1).astype(np.uint8) * 255]


class StandInCellpose:
    def __init__(self, masks):
        self.masks = masks

    def eval(self, x, **kwargs):
        assert x.ndim == 3 and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        return self.masks, None, None


def test_hpacellseg_adapter_contract_with_stand_in_network():
    img = synth(7)
    seg = HPACellSegSegmenter(network=StandInHPA(img), min_nucleus_area=20)
    cells, nuclei = seg.segment(img.channels)
    check_consistent(cells, nuclei)
    assert average_precision(img.cells.astype(int), cells, 0.6) >= 0.9


def test_cellpose_adapter_contract_with_stand_in_network():
    img = synth(8)
    nuclei_shifted = np.roll(img.nuclei, 1, axis=0)  # independent model: ids and borders differ
    nuclei_shifted = np.where(nuclei_shifted > 0, nuclei_shifted + 100, 0)
    seg = CellposeSegmenter(
        network=StandInCellpose(img.cells.astype(np.int32)),
        nuclei_network=StandInCellpose(nuclei_shifted.astype(np.int32)),
    )
    cells, nuclei = seg.segment(img.channels)
    check_consistent(cells, nuclei)
    assert cells.max() == img.cells.max() and average_precision(img.cells.astype(int), cells, 0.9) == 1.0


@pytest.mark.parametrize(
    "backend,opts,missing",
    [
        ("hpacellseg", {}, "segmentation.options.nuclei_model is required"),
        ("hpacellseg", {"nuclei_model": "/nope/n.pth", "cell_model": "/nope/c.pth"}, "/nope/n.pth"),
        ("cellpose", {"cell_model": "/nope/cyto", "nuclei_model": "/nope/nuc"}, "does not exist"),
    ],
)
def test_adapters_refuse_missing_weights(backend, opts, missing):
    with pytest.raises(BackendUnavailable, match=missing):
        create_segmenter(backend, **opts)


def test_adapters_name_a_missing_package(tmp_path):
    import importlib.util

    for backend, module, keys in (
        ("hpacellseg", "hpacellseg", ("nuclei_model", "cell_model")),
        ("cellpose", "cellpose", ("cell_model", "nuclei_model")),
    ):
        if importlib.util.find_spec(module) is not None:
            continue
        opts = {}
        for k in keys:
            (tmp_path / k).write_bytes(b"weights")
            opts[k] = str(tmp_path / k)
        with pytest.raises(BackendUnavailable, match=f"'{module}' package is not installed"):
            create_segmenter(backend, **opts)


def test_match_nuclei():
    cells = np.zeros((10, 10), np.int32)
    cells[:, :5], cells[:, 5:] = 4, 9
    nuclei = np.zeros_like(cells)
    nuclei[2:4, 2:7] = 1  # straddles both cells, mostly in cell 4
    nuclei[6:9, 6:9] = 2
    c, n = match_nuclei(cells, nuclei)
    check_consistent(c, n)
    assert c.max() == 2 and n[7, 7] == c[7, 7] and n[3, 3] == c[3, 3] and n[3, 6] == 0


def test_labels_in_store_are_valid_ngff_and_open_in_napari(segmented):
    from ome_zarr_models.v05 import Image

    store = segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr"
    image = min(image_dirs(store))
    model = Image.from_zarr(zarr.open_group(image, mode="r"))
    assert model.labels is not None and list(model.labels.label_paths) == ["cells", "nuclei"]
    from ome_zarr_models.v05 import ImageLabel

    for name in ("cells", "nuclei"):  # strict: colours and properties name the same label values
        block = ImageLabel.from_zarr(zarr.open_group(image / "labels" / name, mode="r")).attributes.ome.image_label
        assert block.colors and block.properties and len(block.colors) == len(block.properties)
    from napari_ome_zarr._reader import napari_get_reader

    layers = napari_get_reader(str(image))(str(image))
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 1 and kinds.count("labels") == 2
    g = zarr.open_group(image, mode="r")
    for k in range(3):
        assert g["labels/cells"][f"s{k}"].shape == g[f"s{k}"].shape[1:]
    cells, nuclei = g["labels/cells/s0"][...], g["labels/nuclei/s0"][...]
    check_consistent(cells.astype(int), nuclei.astype(int))


def test_stage_quality_against_truth(segmented):
    aps = []
    for shard in segmented["shards"]:
        store = segmented["results"] / "zarr" / f"{shard}.zarr"
        for image in image_dirs(store):
            truth = tifffile.imread(segmented["data"] / "truth" / f"{image.name}_cells.tif")
            pred = zarr.open_group(image, mode="r")["labels/cells/s0"][...]
            aps.append(average_precision(truth.astype(int), pred.astype(int), 0.5))
    assert len(aps) == 6 and np.mean(aps) >= 0.9


def test_zero_cell_image_is_kept_and_flagged(dataset, tmp_path):
    from hpa_batch.cli import main

    dataset.add("blank", shape=(256, 256))
    for c in ("red", "green", "blue", "yellow"):
        from conftest import write_channel

        write_channel(dataset.path("blank", c), np.full((256, 256), 100, np.uint16))
    dataset.add("blank2", shape=(256, 256))
    cfg = str(dataset.config_file(segmentation=SMALL_SEGMENTATION, shard_size=5))
    assert main(["convert", "--config", cfg, "--shard", "hela-0000"]) == 0
    assert main(["segment", "--config", cfg, "--shard", "hela-0000"]) == 0
    qc = pd.read_csv(dataset.root / "results" / "qc" / "hela-0000.segment.tsv", sep="\t").set_index("image_id")
    assert qc.at["blank", "n_cells"] == 0 and qc.at["blank", "flag"] == "zero cells"
    assert main(["measure", "--config", cfg, "--shard", "hela-0000"]) == 0
    cells = pd.read_parquet(dataset.root / "results" / "cells" / "hela-0000.parquet")
    assert "blank" not in set(cells["image_id"])


def test_resume_keeps_and_settings_change_redoes(segmented, tmp_path):
    import shutil

    from hpa_batch.cells.segment.stage import segment_shard

    shard = segmented["shards"][0]
    cfg = load_config(segmented["config"])
    # a copy: the shared store is read by tests on other workers while this one rewrites labels
    store = tmp_path / f"{shard}.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{shard}.zarr", store)
    image = min(image_dirs(store))
    before = (image / "labels" / "zarr.json").stat().st_mtime_ns
    segment_shard(cfg, store, tmp_path / "qc.tsv", tmp_path / "s.json")
    assert (image / "labels" / "zarr.json").stat().st_mtime_ns == before  # kept
    raw = json.loads(json.dumps(cfg.raw))
    raw["segmentation"]["options"]["cell_threshold"] = 0.2
    from hpa_batch.config import config_from_dict

    segment_shard(config_from_dict(raw), store, tmp_path / "qc.tsv", tmp_path / "s.json")
    assert (image / "labels" / "zarr.json").stat().st_mtime_ns != before  # redone


@pytest.mark.slow
def test_kill9_mid_segmentation_then_rerun_equals_uninterrupted(synth_data, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from conftest import synth_config, tool_env

    from hpa_batch.cli import main
    from hpa_batch.core.ngff import labels_complete

    runs = {}
    for name in ("killed", "reference"):
        root = tmp_path / name
        cfg = root / "config.yaml"
        root.mkdir()
        cfg.write_text(yaml.safe_dump(synth_config(root, synth_data, shard_size=10)))
        for shard in ("a-431-0000", "u-2-os-0000"):
            assert main(["convert", "--config", str(cfg), "--shard", shard]) == 0
        runs[name] = (root, cfg)
    # more images: copy the converted images of two shards into one store (ids made unique)
    for name, (root, _) in runs.items():
        store = root / "results" / "zarr" / "a-431-0000.zarr"
        other = root / "results" / "zarr" / "u-2-os-0000.zarr"
        for k, img in enumerate(image_dirs(other)):
            for rep in range(3):
                shutil.copytree(img, store / f"x{rep}-{img.name}")
    root, cfg = runs["killed"]
    store = root / "results" / "zarr" / "a-431-0000.zarr"
    cmd = [sys.executable, "-m", "hpa_batch.cli", "segment", "--config", str(cfg), "--shard", "a-431-0000"]
    proc = subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(store.glob("*/labels"))) < 2:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    images = image_dirs(store)
    done = [p for p in images if (p / "labels").exists()]
    assert 2 <= len(done) < len(images), "kill came too late to test anything"
    assert all(labels_complete(p, ("cells", "nuclei")) for p in done)  # nothing half-written
    subprocess.run(cmd, env=tool_env(), check=True, capture_output=True)
    ref_root, ref_cfg = runs["reference"]
    assert main(["segment", "--config", str(ref_cfg), "--shard", "a-431-0000"]) == 0
    ref = ref_root / "results" / "zarr" / "a-431-0000.zarr"
    for img in images:
        for name in ("cells", "nuclei"):
            for level in ("s0", "s1", "s2"):
                got = zarr.open_array(img / "labels" / name / level, mode="r")[...]
                want = zarr.open_array(ref / img.name / "labels" / name / level, mode="r")[...]
                assert np.array_equal(got, want), (img.name, name, level)
    a = pd.read_csv(root / "results" / "qc" / "a-431-0000.segment.tsv", sep="\t")
    b = pd.read_csv(ref_root / "results" / "qc" / "a-431-0000.segment.tsv", sep="\t")
    assert a.equals(b)


@pytest.mark.parametrize("ratio", [1.5, 2.0, 3.0])
def test_touching_cells_of_different_brightness_split_at_their_boundary(ratio):
    """The bright cell must not flood its dim neighbour (the failure of issue 24; at 1.5x, until the
    nuclei were lifted out of their dark moat in issue 35, the dim cell kept only its nucleus):
    IoU >= 0.8 each."""
    img, truth = touching_pair(ratio)
    cells, nuclei = create_segmenter("watershed").segment(img, scale=1.0)
    check_consistent(cells, nuclei)
    assert cells.max() == 2
    assert (iou_matrix(truth, cells).max(axis=1) >= 0.8).all(), iou_matrix(truth, cells)
    # the two peers in the segmentation bench fail here: the intensity flood and distance alone
    for boundary in ("flood", "distance"):
        peer, _ = create_segmenter("watershed", boundary=boundary).segment(img, scale=1.0)
        assert iou_matrix(truth, peer).max(axis=1).min() < 0.8, boundary


def test_unknown_boundary_method_is_named():
    with pytest.raises(ValueError, match="edges"):
        create_segmenter("watershed", boundary="voronoi")


def test_a_binucleate_cell_stays_one_cell():
    """Issue 35: a cell with two nuclei side by side and nothing between them is one cell (both
    nuclei in its nucleus label), while its neighbours keep their own (seed 47, never tuned on)."""
    two = SynthStyle("binucleate", binucleate_rate=(1.0, 1.0), coverage=(0.5, 0.5), radius=(150.0, 150.0))
    image = synthesize_image(np.random.default_rng([47, 3]), 1024, "U-2 OS", "hpa2021", style=two)
    truth = image.cells.astype(np.int64)
    binucleate = [k for k in range(1, int(truth.max()) + 1) if ndi.label(image.nuclei == k)[1] == 2]
    assert len(binucleate) >= 3  # the constructed field holds several
    cells, nuclei = create_segmenter("watershed").segment(image.channels, 1.0)
    iou = iou_matrix(truth, cells)
    whole = [k for k in binucleate if iou[k - 1].max() > 0.75]
    assert len(whole) >= 0.8 * len(binucleate), (len(whole), len(binucleate))
    for k in whole:  # the predicted cell holds both nuclei under its own id (joined, or never split)
        pred = int(np.argmax(iou[k - 1])) + 1
        parts, n_parts = ndi.label(image.nuclei == k)
        for j in range(1, n_parts + 1):
            assert (nuclei[parts == j] == pred).mean() > 0.5
    assert average_precision(truth, cells, 0.5) >= 0.9


def test_a_changed_backend_default_redoes_the_labels():
    """The digest kept labels are checked against holds the backend's resolved parameters, so a
    default changed in the code (not in the config) is not mistaken for the same settings."""
    from hpa_batch.cells.segment.stage import settings_digest
    from hpa_batch.cells.segment.watershed import WatershedSegmenter
    from hpa_batch.config import config_from_dict

    cfg = config_from_dict({})
    same = settings_digest(cfg, WatershedSegmenter()), settings_digest(cfg, WatershedSegmenter())
    assert same[0] == same[1]
    assert settings_digest(cfg, WatershedSegmenter(edge_weight=0.5)) != same[0]


@pytest.mark.parametrize("seed", [31, 61])
def test_nuclei_pressed_together_in_a_packed_field_are_split(seed):
    """Issue 35: in dense fields of big nuclei, nuclei pressed together leave a shallow neck; a clump of
    at least 1.5 typical nuclei is split at a shallower depth than a single irregular nucleus. The
    fraction of true nuclei found (IoU >= 0.5) must rise over the single depth and nothing is
    over-split (no more objects than true nuclei)."""
    packed = SynthStyle(
        "packed", nucleus_area_ratio=(0.45, 0.55), coverage=(0.8, 0.85), clustering=(0.9, 1.0), radius=(40.0, 50.0)
    )
    image = synthesize_image(np.random.default_rng([seed, 0]), 1024, "A-431", "hpa2021", style=packed)
    truth = measure_label(image.nuclei, connectivity=1).astype(np.int64)  # binucleate halves count apart
    found = {}
    for name, opts in {"clump depth": {}, "one depth": {"nucleus_split_big": 0.2}}.items():
        nuclei, _ = create_segmenter("watershed", **opts).nuclei(image.channels[2])
        found[name] = float((iou_matrix(truth, nuclei.astype(np.int64)).max(axis=1) >= 0.5).mean())
        assert nuclei.max() <= truth.max(), name
    assert found["clump depth"] >= found["one depth"] + 0.015, found
    assert found["clump depth"] >= 0.93, found
