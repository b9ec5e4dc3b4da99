"""validate: damage after success (a truncated label shard, an image group moved out) is found."""

import shutil

from hpa_batch.convert.validate import validate_store


def test_damaged_labels_and_missing_images_are_found(segmented, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr", store)
    assert validate_store(store, deep=True).ok
    images = sorted(p for p in store.iterdir() if p.is_dir())
    shard_file = next(
        p for p in (images[0] / "labels" / "cells" / "s0").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    shard_file.write_bytes(shard_file.read_bytes()[: shard_file.stat().st_size // 2])  # truncated
    shutil.move(str(images[1]), str(tmp_path / images[1].name))  # an image group moved out
    report = validate_store(store, deep=True)
    assert any(f"{images[0].name}/labels/cells" in p for p in report.problems), report.problems
    assert any(f"{images[1].name}: in the store's record of its images but missing" in p for p in report.problems)


def test_repair_removes_exactly_the_damage_and_the_markers_that_claim_it_done(segmented, tmp_path):
    from hpa_batch.convert.validate import repair_store

    store = tmp_path / "s.zarr"
    shutil.copytree(segmented["results"] / "zarr" / f"{segmented['shards'][0]}.zarr", store)
    convert_json, segment_json = tmp_path / "s.convert.json", tmp_path / "s.segment.json"
    for marker in (convert_json, segment_json):
        marker.write_text("{}")
    nothing = repair_store(store, convert_summary=convert_json, segment_summary=segment_json)
    assert not nothing.images and not nothing.labels and convert_json.is_file() and segment_json.is_file()
    images = sorted(p for p in store.iterdir() if p.is_dir())
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
