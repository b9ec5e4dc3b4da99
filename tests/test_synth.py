"""Tests of the synthetic HPA dataset generator (hpa_batch.synth)."""

from __future__ import annotations

import csv
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from hpa_batch import CHANNELS, synth
from hpa_batch.core.labels import HPA2021, format_labels, get_catalog, parse_labels

CAT21 = get_catalog("hpa2021")
CAT18 = get_catalog("hpa2018")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _read_image(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        return np.asarray(tifffile.imread(path))
    return np.asarray(imagecodecs.imread(path.read_bytes()))


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthSummary:
    out = tmp_path_factory.mktemp("synth_png")
    return synth.synthesize_dataset(out, 4, seed=3, sizes=(256, 384), cell_lines=("U-2 OS", "A-431", "U-251 MG"))


# --- layout ---------------------------------------------------------------------------


def test_layout_and_csv_columns(png_dataset: synth.SynthSummary) -> None:
    s = png_dataset
    assert s.metadata == s.out / "train.csv"
    assert s.images_dir == s.out / "images" and s.truth_dir == s.out / "truth"
    assert len(s.ids) == 4 and len(set(s.ids)) == 4
    with s.metadata.open() as fh:
        assert fh.readline().strip() == "ID,Label,Cell_line"
    rows = _read_csv(s.metadata)
    assert [r["ID"] for r in rows] == list(s.ids)
    for image_id in s.ids:
        for ch in CHANNELS:
            assert (s.images_dir / f"{image_id}_{ch}.png").is_file()
        assert (s.truth_dir / f"{image_id}_cells.tif").is_file()
        assert (s.truth_dir / f"{image_id}_nuclei.tif").is_file()
        assert len(image_id) == 36 and image_id[14] == "4"  # UUID version 4
    with (s.truth_dir / "cells.csv").open() as fh:
        header = fh.readline().strip()
    assert header == "ID,cell_id,Label,Cell_line,area,nucleus_area,border"
    cells = _read_csv(s.truth_dir / "cells.csv")
    assert len(cells) == s.n_cells > 0
    assert {r["border"] for r in cells} <= {"True", "False"}
    assert "True" in {r["border"] for r in cells}
    assert (s.truth_dir / "README.txt").read_text().strip()


def test_png_images_read_back_as_uint16(png_dataset: synth.SynthSummary) -> None:
    s = png_dataset
    for i, image_id in enumerate(s.ids):
        size = (256, 384)[(i + i // 3) % 2]
        for ch in CHANNELS:
            path = s.images_dir / f"{image_id}_{ch}.png"
            a = _read_image(path)
            assert a.dtype == np.uint16 and a.shape == (size, size)
            with Image.open(path) as im:
                assert im.size == (size, size) and im.mode.startswith("I")
        for kind in ("cells", "nuclei"):
            m = tifffile.imread(s.truth_dir / f"{image_id}_{kind}.tif")
            assert m.dtype == np.uint16 and m.shape == (size, size)


@pytest.mark.parametrize("fmt, dtype", [("tif", np.uint16), ("jpg", np.uint8)])
def test_other_formats(tmp_path: Path, fmt: str, dtype: type) -> None:
    s = synth.synthesize_dataset(tmp_path, 2, seed=1, sizes=(256,), fmt=fmt)
    for image_id in s.ids:
        for ch in CHANNELS:
            a = _read_image(s.images_dir / f"{image_id}_{ch}.{fmt}")
            assert a.dtype == dtype and a.shape == (256, 256)
            assert a.max() > a.min()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synth.synthesize_dataset(tmp_path, 1, fmt="bmp", sizes=(256,))
    with pytest.raises(ValueError):
        synth.synthesize_dataset(tmp_path, 1, catalog="hpa1999", sizes=(256,))
    with pytest.raises(ValueError):
        synth.synthesize_image(np.random.default_rng(0), 256, "HeLa", CAT18, patterns=[])


# --- determinism ----------------------------------------------------------------------


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    kw = {"sizes": (256,), "cell_lines": ("HeLa", "A549")}
    a = synth.synthesize_dataset(tmp_path / "a", 3, seed=11, **kw)
    b = synth.synthesize_dataset(tmp_path / "b", 3, seed=11, **kw)
    c = synth.synthesize_dataset(tmp_path / "c", 3, seed=12, **kw)
    ta, tb = _tree_bytes(a.out), _tree_bytes(b.out)
    assert ta == tb
    assert a.ids != c.ids
    green = f"images/{c.ids[0]}_green.png"
    assert _tree_bytes(c.out)[green] != ta[f"images/{a.ids[0]}_green.png"]


def test_workers_do_not_change_output(tmp_path: Path) -> None:
    kw = {"sizes": (256, 320), "cell_lines": ("U-2 OS", "MCF7"), "fmt": "tif"}
    one = synth.synthesize_dataset(tmp_path / "w1", 4, seed=5, workers=1, **kw)
    two = synth.synthesize_dataset(tmp_path / "w2", 4, seed=5, workers=2, **kw)
    assert _tree_bytes(one.out) == _tree_bytes(two.out)


def test_synthesize_image_is_a_function_of_the_rng() -> None:
    a = synth.synthesize_image(np.random.default_rng(7), 256, "HeLa", CAT21)
    b = synth.synthesize_image(np.random.default_rng(7), 256, "HeLa", CAT21)
    assert np.array_equal(a.channels, b.channels) and np.array_equal(a.cells, b.cells)
    assert a.cell_labels == b.cell_labels


# --- labels ---------------------------------------------------------------------------


def _check_union(out: Path, catalog_name: str) -> None:
    cat = get_catalog(catalog_name)
    images = _read_csv(out / "train.csv")
    cells = _read_csv(out / "truth" / "cells.csv")
    for row in images:
        img_labels = set(parse_labels(row["Label"], cat, cat.separator))
        cell_rows = [c for c in cells if c["ID"] == row["ID"]]
        assert cell_rows
        union: set[int] = set()
        for c in cell_rows:
            if c["Label"] == "":
                assert cat.negative is None
                continue
            ids = set(parse_labels(c["Label"], cat, cat.separator))
            if cat.negative is not None and ids == {cat.negative}:
                continue
            union |= ids
            assert c["Cell_line"] == row["Cell_line"]
        if cat.negative is not None and not union:
            union = {cat.negative}
        assert img_labels == union, row


def test_image_labels_are_union_of_cell_labels(png_dataset: synth.SynthSummary) -> None:
    _check_union(png_dataset.out, "hpa2021")


def test_hpa2018_catalog(tmp_path: Path) -> None:
    s = synth.synthesize_dataset(tmp_path, 6, seed=2, sizes=(256,), catalog="hpa2018")
    _check_union(s.out, "hpa2018")
    labels = [r["Label"] for r in _read_csv(s.metadata)]
    assert all(lab and "|" not in lab for lab in labels)
    valid = {CAT18.index(n) for n in synth.PATTERN_RENDERERS if n in CAT18.classes}
    for lab in labels:
        assert set(parse_labels(lab, CAT18, " ")) <= valid
    img = synth.synthesize_image(np.random.default_rng(0), 256, "HeLa", CAT18, patterns=["Nucleoplasm", "Cytosol"])
    assert img.image_labels == (0, 25)
    assert format_labels(img.image_labels, CAT18) == "0 25"
    assert all(v == () or set(v) <= {0, 25} for v in img.cell_labels.values())


def test_negative_only_and_spindle_images() -> None:
    neg = synth.synthesize_image(np.random.default_rng(1), 256, "A-431", CAT21, patterns=[])
    assert neg.image_labels == (18,)
    assert set(neg.cell_labels.values()) == {(18,)}
    sp = synth.synthesize_image(np.random.default_rng(2), 384, "HeLa", CAT21, patterns=["Mitotic spindle"])
    assert sp.image_labels == (11,)
    with_spindle = [k for k, v in sp.cell_labels.items() if 11 in v]
    assert with_spindle and set(with_spindle) <= set(sp.mitotic)


def test_renderer_registry_matches_hpa2021() -> None:
    assert list(synth.PATTERN_RENDERERS) == list(HPA2021)
    for name in synth.PATTERN_RENDERERS:
        if name != "Negative":
            rng = np.random.default_rng(3)
            img = synth.synthesize_image(rng, 256, "U-2 OS", CAT21, patterns=[name])
            assert img.image_labels == (CAT21.index(name),)


# --- masks and signal -----------------------------------------------------------------


def test_masks(png_dataset: synth.SynthSummary) -> None:
    s = png_dataset
    cells_csv = _read_csv(s.truth_dir / "cells.csv")
    for image_id in s.ids:
        cells = tifffile.imread(s.truth_dir / f"{image_id}_cells.tif")
        nuclei = tifffile.imread(s.truth_dir / f"{image_id}_nuclei.tif")
        n = int(cells.max())
        assert n >= 3
        assert set(np.unique(cells).tolist()) == set(range(n + 1))
        assert set(np.unique(nuclei).tolist()) == set(range(n + 1))
        for k in range(1, n + 1):
            nk = nuclei == k
            assert (cells[nk] == k).mean() >= 0.95
            assert (cells == k).sum() > nk.sum()
        rows = [r for r in cells_csv if r["ID"] == image_id]
        assert [int(r["cell_id"]) for r in rows] == list(range(1, n + 1))
        areas = np.bincount(cells.ravel(), minlength=n + 1)
        nareas = np.bincount(nuclei.ravel(), minlength=n + 1)
        edge = set(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]).tolist())
        for r in rows:
            k = int(r["cell_id"])
            assert int(r["area"]) == areas[k] and int(r["nucleus_area"]) == nareas[k]
            assert (r["border"] == "True") == (k in edge)


def _cell_means(img: synth.SynthImage, channel: str, k: int) -> tuple[float, float]:
    ch = img.channels[CHANNELS.index(channel)].astype(float)
    nuc = img.nuclei == k
    cyto = ndi.binary_erosion((img.cells == k) & ~nuc, iterations=1)
    cyto &= ~ndi.binary_dilation(nuc, iterations=2)
    return float(ch[nuc].mean()), float(ch[cyto].mean())


def test_blue_marks_nuclei() -> None:
    img = synth.synthesize_image(np.random.default_rng(4), 384, "HeLa", CAT21)
    for k in img.cell_labels:
        if k in img.mitotic:
            continue
        nuc, cyto = _cell_means(img, "blue", k)
        assert nuc > 3 * cyto


@pytest.mark.parametrize("pattern, nuclear", [("Nucleoplasm", True), ("Cytosol", False)])
def test_green_follows_the_pattern(pattern: str, nuclear: bool) -> None:
    cid = CAT21.index(pattern)
    img = synth.synthesize_image(np.random.default_rng(8), 384, "U-2 OS", CAT21, patterns=[pattern])
    checked = 0
    for k, labels in img.cell_labels.items():
        if labels != (cid,):
            continue
        nuc, cyto = _cell_means(img, "green", k)
        assert (nuc > 1.5 * cyto) if nuclear else (cyto > 1.5 * nuc), (k, nuc, cyto)
        checked += 1
    assert checked >= 2


def test_background_is_offset_plus_noise() -> None:
    img = synth.synthesize_image(np.random.default_rng(6), 384, "U-251 MG", CAT21)
    far = ~ndi.binary_dilation(img.cells > 0, iterations=8)
    assert far.mean() > 0.05
    for c in range(4):
        bg = img.channels[c][far].astype(float)
        assert 250 <= img.offset[c] <= 650
        assert img.offset[c] - 20 < np.median(bg) < img.offset[c] + 150
        assert bg.std() > 2
        inside = img.channels[c][img.cells > 0]
        assert np.percentile(inside, 99) > np.median(bg) + 1000
    assert img.channels.dtype == np.uint16 and img.channels.shape == (4, 384, 384)


# --- cell lines -----------------------------------------------------------------------


def test_every_cell_line_gets_images(tmp_path: Path) -> None:
    lines = ("HeLa", "RT4", "Made-Up Line 7")
    s = synth.synthesize_dataset(tmp_path, 4, seed=9, sizes=(256,), cell_lines=lines)
    assert {r["Cell_line"] for r in _read_csv(s.metadata)} == set(lines)


def test_default_cell_lines_and_unknown_profiles() -> None:
    assert len(synth.DEFAULT_CELL_LINES) >= 6
    assert {"U-2 OS", "A-431", "U-251 MG"} <= set(synth.DEFAULT_CELL_LINES)
    p1, p2 = synth.cell_line_profile("Zebra-1"), synth.cell_line_profile("Zebra-1")
    assert p1 == p2 and p1 != synth.cell_line_profile("Zebra-2")
    assert 100 < p1.radius < 200 and p1.aspect >= 1.0


def test_cell_size_depends_on_cell_line() -> None:
    def areas(line: str) -> list[int]:
        out: list[int] = []
        for seed in range(3):
            img = synth.synthesize_image(np.random.default_rng(seed), 384, line, CAT21)
            c = img.cells
            edge = set(np.concatenate([c[0], c[-1], c[:, 0], c[:, -1]]).tolist())
            counts = np.bincount(img.cells.ravel())
            inner = [k for k in img.cell_labels if k not in edge and k not in img.mitotic]
            out += [int(counts[k]) for k in inner]
        return out

    big, small = areas("U-2 OS"), areas("A-431")
    assert len(big) >= 10 and len(small) >= 10
    assert np.mean(big) / np.mean(small) > 1.4


def test_cell_count_scales_with_image_size() -> None:
    n256 = len(synth.synthesize_image(np.random.default_rng(0), 256, "HeLa", CAT21).cell_labels)
    assert 6 <= n256 <= 40


# --- contact sheet --------------------------------------------------------------------


def test_contact_sheet(png_dataset: synth.SynthSummary, tmp_path: Path) -> None:
    out = synth.contact_sheet(png_dataset.out, tmp_path / "sheet.png", n=4, size=128)
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (256, 256)
        a = np.asarray(im)
    assert a.max() > 100 and a.mean() < 128


def test_the_2018_layout_is_8_bit_png_with_id_target(tmp_path: Path) -> None:
    """`synth --labels hpa2018` writes that set as distributed: 8-bit PNG channels, train.csv with
    Id,Target (space-separated) and no cell-line column; labels equal the 16-bit set's."""
    s8 = synth.synthesize_dataset(tmp_path / "a", 2, seed=4, sizes=(128,), catalog="hpa2018", depth=8, table="hpa2018")
    s16 = synth.synthesize_dataset(tmp_path / "b", 2, seed=4, sizes=(128,), catalog="hpa2018")
    rows = _read_csv(s8.metadata)
    assert list(rows[0]) == ["Id", "Target"]
    assert [r["Target"] for r in rows] == [r["Label"] for r in _read_csv(s16.metadata)]
    i = rows[0]["Id"]
    a8 = imagecodecs.png_decode((s8.images_dir / f"{i}_green.png").read_bytes())
    a16 = imagecodecs.png_decode((s16.images_dir / f"{i}_green.png").read_bytes())
    assert a8.dtype == np.uint8 and a16.dtype == np.uint16
    assert np.array_equal(a8, np.minimum(a16 >> 7, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="depth"):
        synth.synthesize_dataset(tmp_path / "c", 1, depth=12)
