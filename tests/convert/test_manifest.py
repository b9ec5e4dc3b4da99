"""Every refusal reason of the manifest stage, and that good images are all admitted."""

import numpy as np
import tifffile
from PIL import Image

from hpa_batch.config import config_from_dict
from hpa_batch.convert.manifest import (
    MANIFEST_SCHEMA,
    build_manifest,
    read_manifest,
    read_rejected,
    write_manifest,
)
from hpa_batch.convert.plan import plan_shards, read_metadata
from hpa_batch.core.labels import CATALOGS
from hpa_batch.core.tables import read_classes


def run(ds, **cfg_extra):
    cfg = config_from_dict(ds.config(shard_size=100, **cfg_extra))
    meta = read_metadata(cfg.dataset)
    out = {}
    for shard in plan_shards(meta, None, cfg.shard_size):
        m = build_manifest(cfg, shard, meta)
        out[shard.name] = m
    return cfg, out


def reasons(manifests):
    return {r.image_id: r.reason for m in manifests.values() for r in m.rejected.itertuples()}


def test_bad_inputs_each_refused_with_reason(dataset):
    ds = dataset
    ds.add("good16")
    ds.add("good8", dtype="uint8")
    ds.add("goodtif", ext="tif")
    ds.add("nochan", channels=("red", "green", "blue"))
    ds.add("garbage")
    ds.path("garbage", "green").write_bytes(b"this is not a png")
    ds.add("rgb")
    Image.fromarray(np.zeros((300, 280, 3), np.uint8)).save(ds.path("rgb", "blue"))
    ds.add("float", ext="tif")
    tifffile.imwrite(ds.path("float", "red", "tif"), np.zeros((300, 280), np.float32))
    ds.add("stack", ext="tif")
    tifffile.imwrite(ds.path("stack", "red", "tif"), np.zeros((3, 300, 280), np.uint16), photometric="minisblack")
    ds.add("shapes")
    ds.add("shapes_y", shape=(200, 200))  # a second image to borrow a wrong-shaped channel from
    ds.path("shapes", "yellow").write_bytes(ds.path("shapes_y", "yellow").read_bytes())
    ds.add("huge", shape=(400, 400))
    ds.add("tiny", shape=(40, 300))
    ds.add("badlabel", label="0|19")
    ds.add("nolabel", label="")
    ds.add("dup")
    ds.rows.append(("dup", "1", "HeLa"))  # conflicting labels: refused, both rows quoted
    ds.add("twin")
    ds.rows.append(ds.rows[-1])  # identical row twice: admitted once, with a warning
    ds.add("zero")
    ds.path("zero", "blue").write_bytes(b"")
    ds.add("bad..id")
    _, manifests = run(ds, qc={"max_pixels": 350 * 350, "min_side": 64})
    r = reasons(manifests)
    admitted = {i for m in manifests.values() for i in m.admitted["image_id"]}
    assert admitted == {"good16", "good8", "goodtif", "shapes_y", "twin"}
    rows = {r.image_id: r for m in manifests.values() for r in m.admitted.itertuples()}
    assert "listed 2 times" in rows["twin"].warning and "one kept" in rows["twin"].warning
    assert not isinstance(rows["good16"].warning, str)
    expect = {
        "nochan": "missing yellow channel",
        "garbage": "unreadable header",
        "rgb": "not a 2-D grayscale",
        "float": "unsupported dtype float32",
        "stack": "not a 2-D grayscale",
        "shapes": "channel shapes differ",
        "huge": "exceeds qc.max_pixels",
        "tiny": "below qc.min_side",
        "badlabel": "outside catalog",
        "nolabel": "no labels",
        "dup": "conflicting rows",
        "zero": "empty file (0 bytes)",
        "bad..id": "not safe as a path",
    }
    assert set(r) == set(expect)
    for image_id, text in expect.items():
        assert text in r[image_id], (image_id, r[image_id])
    assert "garbage_green.png" in r["garbage"]  # the file is named
    assert "zero_blue.png" in r["zero"]
    assert "labels '0|16'" in r["dup"] and "labels '1'" in r["dup"]  # both rows quoted


def test_manifest_round_trip_types(dataset, tmp_path):
    dataset.add("a")
    dataset.add("b", dtype="uint8", label="3")
    _, manifests = run(dataset)
    m = manifests["hela-0000"]
    write_manifest(m, tmp_path / "m.parquet", tmp_path / "r.tsv", CATALOGS["hpa2021"])
    back = read_manifest(tmp_path / "m.parquet")
    assert list(back.columns) == MANIFEST_SCHEMA.names
    assert read_classes(tmp_path / "m.parquet") == list(CATALOGS["hpa2021"].classes)  # names its label ids
    assert back["labels"].map(list).tolist() == [[0, 16], [3]]
    assert back["source_dtype"].tolist() == ["uint16", "uint8"] and back["height"].tolist() == [300, 300]
    assert read_rejected(tmp_path / "r.tsv").empty


def test_empty_manifest_keeps_schema(dataset, tmp_path):
    dataset.add("x", channels=("red",))
    _, manifests = run(dataset)
    m = manifests["hela-0000"]
    assert m.admitted.empty and len(m.rejected) == 1
    write_manifest(m, tmp_path / "m.parquet", tmp_path / "r.tsv", CATALOGS["hpa2021"])
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "m.parquet").equals(MANIFEST_SCHEMA, check_metadata=False)


def test_unlabelled_dataset(dataset):
    dataset.add("t1", label="")
    cfg = dataset.config(shard_size=10)
    cfg["dataset"]["label_column"] = None
    cfg["models"] = []  # nothing can be trained on it
    c = config_from_dict(cfg)
    meta = read_metadata(c.dataset)
    m = build_manifest(c, plan_shards(meta, None, 10)[0], meta)
    assert m.admitted["image_id"].tolist() == ["t1"] and m.admitted["labels"].iloc[0] == []
