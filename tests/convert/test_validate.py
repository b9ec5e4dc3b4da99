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
