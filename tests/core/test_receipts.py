"""Write receipts (hpa_batch.core.receipts): damage that still decodes is refused before a run, a copy
or a touch is not damage, a failed stage leaves no receipt."""

import os
import shutil

import numpy as np
import pytest
import yaml

from hpa_batch.core.receipts import receipts
from hpa_batch.integrity import DamagedOutputsError, refuse_damaged, scan


@pytest.fixture
def tree(segmented, tmp_path):
    """A private copy of the segmented shared run, whose stages wrote receipts (times kept)."""
    results = tmp_path / "results"
    shutil.copytree(segmented["results"], results, symlinks=True)
    return {"results": results, "shards": segmented["shards"], "config": segmented["config"], "tmp": tmp_path}


def refused(results):
    with pytest.raises(DamagedOutputsError) as err:
        refuse_damaged(results)
    return str(err.value)


def test_every_stage_output_has_a_receipt_and_a_sound_tree_passes(tree):
    res = tree["results"]
    have = {path.relative_to(res) for path, _ in receipts(res)}
    for shard in tree["shards"]:
        for rel in (f"manifest/{shard}.parquet", f"cells/{shard}.parquet", f"tiles/{shard}.zarr"):
            assert rel in {str(p) for p in have}, rel
    refuse_damaged(res)  # nothing raised


def test_bytes_overwritten_in_place_are_refused_though_the_footer_reads(tree):
    """The middle of a cells table overwritten (footer intact: readers open it): refused before any job,
    listed by validate, and removed by repair."""
    import pyarrow.parquet as pq

    res = tree["results"]
    cells = res / "cells" / f"{tree['shards'][0]}.parquet"
    data = bytearray(cells.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = np.random.default_rng(1).bytes(64)
    cells.write_bytes(bytes(data))
    pq.ParquetFile(cells)  # the footer still reads: the old pre-run check passed it
    assert f"{cells}: changed since it was written: same size, other content" in refused(res)
    _, damaged = scan(res)
    assert [d.path for d in damaged] == [cells]


def test_a_truncated_tile_chunk_is_refused_before_a_run(tree):
    res = tree["results"]
    tiles = res / "tiles" / f"{tree['shards'][0]}.zarr"
    chunk = next(p for p in sorted((tiles / "cells").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:100])
    assert f"{tiles}: changed since it was written: cells/" in refused(res)


def test_a_touch_or_a_copy_is_not_damage_and_the_receipt_follows(tree):
    res = tree["results"]
    cells = res / "cells" / f"{tree['shards'][0]}.parquet"
    os.utime(cells)  # a touch
    refuse_damaged(res)
    entry = next(e for p, e in receipts(res) if p == cells)
    assert entry["mtime_ns"] == cells.stat().st_mtime_ns  # refreshed: the digest is not recomputed next time
    copy = tree["tmp"] / "copy" / "results"
    shutil.copytree(res, copy, copy_function=shutil.copy)  # new mtimes everywhere
    refuse_damaged(copy)


def test_a_failed_stage_leaves_no_receipt(tree):
    """The receipt of an output is dropped when its verb starts; a verb that fails writes none."""
    from hpa_batch.cli import main

    res = tree["results"]
    shard = tree["shards"][0]
    cfg = yaml.safe_load(tree["config"].read_text())
    cfg["results_dir"] = str(res)
    config = tree["tmp"] / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = res / "cells" / f"{shard}.parquet"
    assert any(p == target for p, _ in receipts(res))
    shutil.rmtree(res / "zarr" / f"{shard}.zarr")  # measure reads the store and fails
    assert main(["measure", "--config", str(config), "--shard", shard]) != 0
    assert not any(p == target for p, _ in receipts(res))
