"""hpa_batch.results.submit: competition RLE tokens, prediction strings and the submission CSV."""

from __future__ import annotations

import base64
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from pycocotools import mask as coco_mask
from scipy import ndimage as ndi

from hpa_batch.results.submit import (
    HEADER,
    decode_mask,
    encode_cells,
    encode_mask,
    prediction_string,
    write_submission,
)

N_CLASSES = 19


def random_cells(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """``(h, w)`` uint32 labels: touching Voronoi-like cells, one on the border, one of 1 pixel."""
    rng = np.random.default_rng(seed)
    h, w = shape
    seeds = np.zeros(shape, np.uint32)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = np.arange(1, n + 1, dtype=np.uint32)
    seeds[0, 0] = n + 1  # a cell on the image corner
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = np.where(dist < max(h, w) / 4, seeds[iy, ix], 0).astype(np.uint32)
    cells[h - 1, :] = n + 2  # a cell along the bottom border, touching others
    cells[h // 2, w // 2] = n + 3  # a one-pixel cell
    return cells


def coco_decode(token: str, h: int, w: int) -> np.ndarray:
    """How the competition decoded a token."""
    counts = zlib.decompress(base64.b64decode(token))
    return coco_mask.decode({"size": [h, w], "counts": counts}).astype(bool)


def probs_frame(cell_ids, n_classes: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"cell_id": np.asarray(cell_ids, np.int32)})
    values = rng.random((len(df), n_classes)).astype(np.float32)
    for k in range(n_classes):
        df[f"prob_{k}"] = values[:, k]
    return df


def parse(text: str) -> list[tuple[int, float, str]]:
    tokens = text.split()
    assert len(tokens) % 3 == 0
    return [(int(tokens[i]), float(tokens[i + 1]), tokens[i + 2]) for i in range(0, len(tokens), 3)]


# ----------------------------------------------------------------------------------------------------
# tokens


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (101, 29), (1, 7), (5, 1)])
def test_encode_cells_round_trip(shape):
    cells = random_cells(shape, 6, seed=sum(shape))
    tokens = encode_cells(cells)
    assert list(tokens) == sorted(int(k) for k in np.unique(cells) if k)
    for k, token in tokens.items():
        token.encode("ascii")
        expected = cells == k
        np.testing.assert_array_equal(decode_mask(token, *shape), expected)
        np.testing.assert_array_equal(coco_decode(token, *shape), expected)
        assert token == encode_mask(expected)


def test_encode_cells_edge_cases():
    assert encode_cells(np.zeros((8, 9), np.uint32)) == {}
    full = np.ones((4, 6), np.uint32)
    np.testing.assert_array_equal(decode_mask(encode_cells(full)[1], 4, 6), full == 1)
    gaps = np.zeros((5, 5), np.uint32)
    gaps[[0, 4], [0, 4]] = 7  # non-contiguous cell, missing ids below it
    tokens = encode_cells(gaps)
    assert list(tokens) == [7]
    np.testing.assert_array_equal(coco_decode(tokens[7], 5, 5), gaps == 7)


def test_encode_mask_round_trip_bool_and_uint8():
    rng = np.random.default_rng(1)
    mask = rng.random((33, 47)) > 0.5
    for m in (mask, mask.astype(np.uint8)):
        np.testing.assert_array_equal(decode_mask(encode_mask(m), 33, 47), mask)


def test_encode_cells_is_fast():
    cells = random_cells((2048, 2048), 40, seed=3)
    encode_cells(cells)
    start = time.perf_counter()
    tokens = encode_cells(cells)
    assert len(tokens) == 43
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------------------------------------
# prediction strings


def test_prediction_string_all_triples():
    cells = random_cells((40, 50), 4, seed=2)
    tokens = encode_cells(cells)
    ids = list(tokens)
    probs = probs_frame(ids[::-1], N_CLASSES)  # rows out of order
    text = prediction_string(tokens, probs, N_CLASSES)
    assert len(text.split()) == 3 * len(ids) * N_CLASSES
    triples = parse(text)
    expected = probs.set_index("cell_id")
    for i, (k, p, token) in enumerate(triples):
        cell_id = ids[i // N_CLASSES]
        assert k == i % N_CLASSES
        assert token == tokens[cell_id]
        assert p == pytest.approx(expected.loc[cell_id, f"prob_{k}"], abs=1e-6)


def test_prediction_string_filters():
    tokens = encode_cells(random_cells((30, 30), 3, seed=5))
    probs = probs_frame(list(tokens), N_CLASSES, seed=1)
    values = probs[[f"prob_{k}" for k in range(N_CLASSES)]].to_numpy()
    triples = parse(prediction_string(tokens, probs, N_CLASSES, min_confidence=0.5))
    assert len(triples) == int((values >= 0.5).sum())
    assert all(p >= 0.5 for _, p, _ in triples)
    triples = parse(prediction_string(tokens, probs, N_CLASSES, classes=[7, 2]))
    assert [k for k, _, _ in triples] == [2, 7] * len(tokens)
    assert prediction_string(tokens, probs, N_CLASSES, min_confidence=1.1) == ""
    with pytest.raises(ValueError):
        prediction_string(tokens, probs, N_CLASSES, classes=[N_CLASSES])


def test_prediction_string_skips_unmatched_cells():
    tokens = {1: "AAAA", 3: "BBBB"}
    probs = probs_frame([1, 2], 2)
    triples = parse(prediction_string(tokens, probs, 2))
    assert [(k, t) for k, _, t in triples] == [(0, "AAAA"), (1, "AAAA")]
    assert prediction_string({}, probs, 2) == ""


# ----------------------------------------------------------------------------------------------------
# the submission file


def make_store(path: Path, images: dict[str, np.ndarray | None]) -> None:
    """A shard store with ``{image_id}/labels/cells/s0`` (or only an ``s0`` image when None)."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    for image_id, cells in images.items():
        group = root.create_group(image_id)
        if cells is None:
            group.create_array("s0", shape=(4, 12, 21), dtype="uint16")
            continue
        arr = group.create_array("labels/cells/s0", shape=cells.shape, dtype="uint32", chunks=(16, 16))
        arr[...] = cells


def make_predictions(path: Path, images: dict[str, np.ndarray], seed: int) -> pd.DataFrame:
    frames = []
    for i, (image_id, cells) in enumerate(images.items()):
        df = probs_frame([k for k in np.unique(cells) if k], N_CLASSES, seed + i)
        df.insert(0, "image_id", image_id)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.insert(2, "level", "cell")
    out["predicted"] = ""
    out["n_predicted"] = np.int16(0)
    out.to_parquet(path, index=False)
    return out


def test_write_submission(tmp_path):
    shard_a = {"img_b": random_cells((30, 45), 3, 10), "img_empty": np.zeros((17, 23), np.uint32)}
    shard_b = {"img_a": random_cells((41, 19), 2, 11), "img_nopred": random_cells((20, 20), 2, 12)}
    make_store(tmp_path / "a.zarr", shard_a)
    make_store(tmp_path / "b.zarr", {**shard_b, "img_nolabels": None})
    preds_a = make_predictions(tmp_path / "a.parquet", {"img_b": shard_a["img_b"]}, 0)
    preds_b = make_predictions(tmp_path / "b.parquet", {"img_a": shard_b["img_a"]}, 5)
    out = tmp_path / "sub" / "submission.csv"

    n = write_submission(
        [tmp_path / "a.parquet", tmp_path / "b.parquet"], [tmp_path / "a.zarr", tmp_path / "b.zarr"], out, N_CLASSES
    )

    assert n == 5
    assert out.read_text().splitlines()[0] == ",".join(HEADER)
    sub = pd.read_csv(out, keep_default_na=False, dtype={"PredictionString": str})
    assert list(sub.columns) == list(HEADER)
    assert list(sub["ID"]) == sorted(["img_a", "img_b", "img_empty", "img_nolabels", "img_nopred"])
    sub = sub.set_index("ID")
    for image_id, cells in {**shard_a, **shard_b}.items():
        assert (sub.loc[image_id, "ImageWidth"], sub.loc[image_id, "ImageHeight"]) == cells.shape[::-1]
    assert (sub.loc["img_nolabels", "ImageWidth"], sub.loc["img_nolabels", "ImageHeight"]) == (21, 12)
    for image_id in ("img_empty", "img_nolabels", "img_nopred"):
        assert sub.loc[image_id, "PredictionString"] == ""

    preds = pd.concat([preds_a, preds_b]).set_index(["image_id", "cell_id"])
    for image_id, cells in (("img_b", shard_a["img_b"]), ("img_a", shard_b["img_a"])):
        triples = parse(sub.loc[image_id, "PredictionString"])
        assert len(triples) == N_CLASSES * (len(np.unique(cells)) - 1)
        h, w = cells.shape
        for i in range(0, len(triples), N_CLASSES):
            decoded = coco_decode(triples[i][2], h, w)
            cell_id = int(np.unique(cells[decoded])[0])
            np.testing.assert_array_equal(decoded, cells == cell_id)
            for k, p, token in triples[i : i + N_CLASSES]:
                assert token == triples[i][2]
                assert p == pytest.approx(preds.loc[(image_id, cell_id), f"prob_{k}"], abs=1e-6)
    assert not list(out.parent.glob(".*tmp"))


def test_write_submission_any_store_order_and_min_confidence(tmp_path):
    images = {"x1": random_cells((25, 31), 3, 20)}
    make_store(tmp_path / "s.zarr", images)
    make_store(tmp_path / "t.zarr", {"x0": np.zeros((5, 6), np.uint32)})
    make_predictions(tmp_path / "s.parquet", images, 0)
    out = tmp_path / "submission.csv"
    n = write_submission(
        [tmp_path / "s.parquet"], [tmp_path / "t.zarr", tmp_path / "s.zarr"], out, N_CLASSES, min_confidence=0.9
    )
    assert n == 2
    sub = pd.read_csv(out, keep_default_na=False).set_index("ID")
    assert list(sub.index) == ["x0", "x1"]
    assert all(p >= 0.9 for _, p, _ in parse(sub.loc["x1", "PredictionString"]))


def test_write_submission_rejects_unknown_image(tmp_path):
    make_store(tmp_path / "s.zarr", {"x1": random_cells((10, 10), 2, 1)})
    make_predictions(tmp_path / "p.parquet", {"ghost": random_cells((10, 10), 2, 1)}, 0)
    with pytest.raises(ValueError, match="ghost"):
        write_submission([tmp_path / "p.parquet"], [tmp_path / "s.zarr"], tmp_path / "o.csv", N_CLASSES)
    assert not (tmp_path / "o.csv").exists()


def test_encode_cells_matches_pycocotools_on_random_labels():
    rng = np.random.default_rng(7)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        cells = rng.integers(0, 4, (h, w)).astype(np.uint32)  # scattered, touching, border pixels
        for k, token in encode_cells(cells).items():
            assert token == encode_mask(cells == k)
            np.testing.assert_array_equal(coco_decode(token, h, w), cells == k)


def test_write_submission_rejects_image_level_predictions(tmp_path):
    images = {"x1": random_cells((10, 10), 2, 1)}
    make_store(tmp_path / "s.zarr", images)
    df = make_predictions(tmp_path / "p.parquet", images, 0)
    df.assign(level="image").to_parquet(tmp_path / "p.parquet", index=False)
    with pytest.raises(ValueError, match="cell-level"):
        write_submission([tmp_path / "p.parquet"], [tmp_path / "s.zarr"], tmp_path / "o.csv", N_CLASSES)


def test_2018_submission_is_id_and_space_separated_classes(tmp_path):
    """Id,Predicted per image, classes ascending and space-separated whatever the table's separator; a
    refused image keeps its row with no classes; a malformed file is refused naming the line."""
    import pandas as pd

    from hpa_batch.results.submit import read_image_submission, write_image_submission

    images = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "predicted": ["25|0|2", "", None], "rejected": [False, False, True]}
    )
    images.to_parquet(tmp_path / "images.parquet")
    assert write_image_submission(tmp_path / "images.parquet", tmp_path / "sub.csv") == 3
    assert (tmp_path / "sub.csv").read_text() == "Id,Predicted\na,0 2 25\nb,\nc,\n"
    assert read_image_submission(tmp_path / "sub.csv") == {"a": [0, 2, 25], "b": [], "c": []}
    (tmp_path / "bad.csv").write_text("Id,Predicted\na,0 x\n")
    with pytest.raises(ValueError, match="bad.csv: line 2"):
        read_image_submission(tmp_path / "bad.csv")
