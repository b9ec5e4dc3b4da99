"""validate: damage after success (a truncated label shard, an image group moved out) is found."""

import shutil

from conftest import image_dirs

from hpa_batch.convert.validate import validate_store


def test_damaged_labels_and_missing_images_are_found(segmented, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr", store)
    assert validate_store(store, deep=True).ok
    images = image_dirs(store)
    shard_file = next(
        p for p in (images[0] / "labels" / "cells" / "s0").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    shard_file.write_bytes(shard_file.read_bytes()[: shard_file.stat().st_size // 2])  # truncated
    shutil.move(str(images[1]), str(tmp_path / images[1].name))  # an image group moved out
    report = validate_store(store, deep=True)
    assert any(f"{images[0].name}/labels/cells" in p for p in report.problems), report.problems
    assert any(f"{images[1].name}: in the store's record of its images but missing" in p for p in report.problems)


def test_repair_removes_exactly_the_damage_and_the_markers_that_claim_it_done(segmented, tmp_path):
    from hpa_batch.repair import repair_store

    store = tmp_path / "s.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr", store)
    convert_json, segment_json = tmp_path / "s.convert.json", tmp_path / "s.segment.json"
    for marker in (convert_json, segment_json):
        marker.write_text("{}")
    nothing = repair_store(store, convert_summary=convert_json, segment_summary=segment_json)
    assert not nothing.images and not nothing.labels and convert_json.is_file() and segment_json.is_file()
    images = image_dirs(store)
    label_shard = next(
        p for p in (images[0] / "labels" / "cells" / "s0").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    label_shard.write_bytes(label_shard.read_bytes()[:64])
    fixed = repair_store(store, convert_summary=convert_json, segment_summary=segment_json)
    assert fixed.labels == [images[0].name] and not fixed.images and fixed.markers == [segment_json]
    assert not (images[0] / "labels").exists() and (images[0] / "s0").exists() and convert_json.is_file()
    assert all((p / "labels").exists() for p in images[1:])
    image_shard = next(p for p in (images[1] / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    image_shard.write_bytes(image_shard.read_bytes()[:64])
    fixed = repair_store(store, convert_summary=convert_json, segment_summary=segment_json)
    assert fixed.images == [images[1].name] and not images[1].exists() and not convert_json.exists()


def _edit_attrs(group_dir, edit):
    import json

    meta = group_dir / "zarr.json"
    doc = json.loads(meta.read_text())
    edit(doc["attributes"])
    meta.write_text(json.dumps(doc))


def test_changed_scale_and_deleted_image_label_block_are_found(segmented, tmp_path):
    """The spec model accepts any positive scale and an image-label block is optional to it for a plain
    multiscale: validate compares each level with the pyramid's and validates label images as labels."""
    store = tmp_path / "s.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr", store)
    assert validate_store(store).ok
    first, second = image_dirs(store)[:2]

    def double_s1_scale(attrs):
        attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"][-1] *= 2

    def drop_image_label(attrs):
        del attrs["ome"]["image-label"]

    _edit_attrs(first, double_s1_scale)
    _edit_attrs(second / "labels" / "cells", drop_image_label)
    problems = validate_store(store).problems
    assert any(p.startswith(f"{first}/s1: scale") for p in problems), problems
    assert any(str(second / "labels" / "cells") in p and "image-label" in p for p in problems), problems


def test_label_levels_declare_where_their_pixels_are(segmented):
    """Levels coarser than the segmentation level are subsampled from it (every 2^j-th pixel): their
    pixel centres stay those of the segmentation level, and the labels carry colours and areas."""
    import zarr

    from hpa_batch.core.ngff import level_transforms

    store = segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr"
    image = min(image_dirs(store))
    labels = zarr.open_group(image / "labels", mode="r")
    made_at = labels.attrs["hpa_batch"]["level"]
    cells = zarr.open_group(image / "labels" / "cells", mode="r").attrs["ome"]
    for k, ds in enumerate(cells["multiscales"][0]["datasets"]):
        shift = ds["coordinateTransformations"][1]["translation"][-1]
        assert shift == level_transforms(k, None, made_at)[1] == (2 ** min(k, made_at) - 1) / 2
    values = [c["label-value"] for c in cells["image-label"]["colors"]]
    n_cells = int(zarr.open_group(image / "labels" / "cells", mode="r")["s0"][...].max())
    assert values == list(range(n_cells + 1)) and cells["image-label"]["colors"][0]["rgba"][3] == 0
    areas = {p["label-value"]: p["area (pixels)"] for p in cells["image-label"]["properties"]}
    s0 = zarr.open_group(image / "labels" / "cells", mode="r")["s0"][...]
    assert areas[1] == int((s0 == 1).sum())


def test_repair_removes_an_image_whose_metadata_no_longer_reads(segmented, tmp_path):
    """An image group whose zarr.json is overwritten is no image group any more; the store's record still
    lists it: repair removes its folder (it used to say "removed image" and leave it)."""
    from hpa_batch.repair import repair_store

    store = tmp_path / "s.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr", store)
    convert_json, segment_json = tmp_path / "s.convert.json", tmp_path / "s.segment.json"
    for marker in (convert_json, segment_json):
        marker.write_text("{}")
    victim = image_dirs(store)[0]
    (victim / "zarr.json").write_bytes(b"\x00garbage")
    fixed = repair_store(store, convert_summary=convert_json, segment_summary=segment_json)
    assert fixed.images == [victim.name] and not victim.exists() and not convert_json.exists()
    problems = validate_store(store).problems
    assert len(problems) == 1 and f"{victim.name}: in the store's record of its images but missing" in problems[0]
