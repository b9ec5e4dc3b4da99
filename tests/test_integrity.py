"""Damaged outputs (hpa_batch.integrity): found by ``validate --deep`` over the whole results tree,
removed exactly by ``repair``, named in one line by the stage that reads them; hostile checkpoints,
a full disk and ids that would forge lines."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import image_dirs, tool_env

from hpa_batch.cli import main
from hpa_batch.convert.validate import validate_store
from hpa_batch.core.errors import DamagedFileError, printable
from hpa_batch.integrity import scan


def hpa(*args, cwd=None):
    """``hpa-batch ARGS`` in a subprocess: (exit code, stdout, stderr)."""
    env = {**tool_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["hpa-batch", *map(str, args)], check=False, capture_output=True, text=True, env=env, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def run(segmented, tmp_path):
    """A private copy of the segmented shared run (manifests, stores, cells, tiles) and its config."""
    root = tmp_path / "run"
    shutil.copytree(segmented["results"], root / "results")
    cfg = yaml.safe_load(segmented["config"].read_text())
    cfg.update(results_dir=str(root / "results"), logs_dir=str(root / "logs"))
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "results": root / "results", "config": root / "config.yaml", "shards": segmented["shards"]}


def chunk_files(store: Path, array: str) -> list[Path]:
    return sorted(p for p in (store / array).rglob("*") if p.is_file() and p.name != "zarr.json")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_a_sound_results_tree_has_nothing_damaged(run):
    checked, damaged = scan(run["results"], deep=True)
    assert checked >= 4 * len(run["shards"]) and damaged == []


def test_a_truncated_tile_chunk_is_found_named_and_repaired(run):
    """One chunk file of a tile store cut to half: ``validate --deep`` lists the store with the array
    and rows, the reader names the store in one line, ``repair`` removes exactly that store."""
    shard = run["shards"][0]
    tiles = run["results"] / "tiles" / f"{shard}.zarr"
    truncate(chunk_files(tiles, "cells")[0])
    before = {p for p in run["results"].rglob("*") if p.is_file()}

    code, out, _ = hpa("validate", "--deep", run["results"])
    assert code == 1
    assert f"DAMAGED {tiles}: array cells, rows 0-" in out and "1 damaged" in out

    from hpa_batch.cells.tiles import TileReader

    with pytest.raises(DamagedFileError) as err:
        TileReader(tiles).read_rows(0, 4)
    assert str(err.value).startswith(f"{tiles} is damaged (") and f"run hpa-batch repair {tiles}" in str(err.value)

    code, out, _ = hpa("repair", run["results"])
    assert code == 0 and f"snakemake --cores all {tiles} all" in out
    assert not tiles.exists()
    after = {p for p in run["results"].rglob("*") if p.is_file()}
    assert after == {p for p in before if tiles not in p.parents}  # nothing else removed
    assert scan(run["results"], deep=True)[1] == []


def test_a_tile_store_with_a_missing_chunk_or_rows_off_its_table_is_damaged(run):
    from hpa_batch.integrity import check_output

    res = run["results"]
    first, second = run["shards"][:2]
    chunk_files(res / "tiles" / f"{first}.zarr", "features")[0].unlink()  # zarr reads it back as zeros
    assert "chunks are missing" in check_output(res / "tiles" / f"{first}.zarr", res)
    cells = res / "cells" / f"{second}.parquet"
    table = pd.read_parquet(cells)
    table.drop(index=table.index[~table["border"]][-1]).to_parquet(cells)  # a tiled cell is gone
    assert "cell tiles, but" in check_output(res / "tiles" / f"{second}.zarr", res)


def test_validate_lists_every_damaged_kind_and_repair_removes_exactly_those(run):
    res = run["results"]
    shard = run["shards"][0]
    manifest = res / "manifest" / f"{shard}.parquet"
    manifest.write_bytes(np.random.default_rng(0).bytes(20_000))  # 20 kB of random bytes
    metrics = res / "metrics.json"
    metrics.write_text('{"mean_ap": 0.5,')  # cut mid-write
    qc = res / "qc" / f"{shard}.segment.tsv"
    qc.write_bytes(b"\xff\xfe\x00bad\x00" * 50)
    cells = res / "cells" / f"{run['shards'][1]}.parquet"
    pd.DataFrame({"image_id": ["a"]}).to_parquet(cells)  # a table without the columns its readers need
    before = {p for p in res.rglob("*") if p.is_file()}

    code, out, _ = hpa("validate", "--deep", res)
    assert code == 1
    for path, reason in (
        (manifest, "not a readable parquet table"),
        (metrics, "not valid JSON"),
        (qc, "not a readable TSV table"),
        (cells, "no column cell_id"),
    ):
        assert f"DAMAGED {path}: {reason}" in out, out
    assert "4 damaged" in out

    code, out, _ = hpa("repair", res)
    assert code == 0
    removed = {manifest, metrics, qc, cells}
    assert {p for p in res.rglob("*") if p.is_file()} == before - removed
    command = next(line for line in out.splitlines() if line.strip().startswith("snakemake --cores all"))
    assert all(str(p) in command for p in removed) and command.split("  # ")[0].endswith(" all")
    assert "this tree was moved since it was written" in command  # a copy of the shared run: its config is not ours


def test_a_damaged_table_is_named_by_the_stage_that_reads_it(run):
    """The tiles stage over a cells table overwritten with random bytes: one line naming the table and
    the repair command, no codec traceback."""
    shard = run["shards"][0]
    cells = run["results"] / "cells" / f"{shard}.parquet"
    cells.write_bytes(np.random.default_rng(1).bytes(20_000))
    code, _, err = hpa("tiles", "--config", run["config"], "--shard", shard, "--out", run["root"] / "t.zarr")
    assert code == 1 and "Traceback" not in err
    assert f"{cells} is damaged (" in err and "magic bytes" in err and f"run hpa-batch repair {cells}" in err
    assert not (run["root"] / "t.zarr").exists()


@pytest.fixture(scope="module")
def trained(segmented, tmp_path_factory):
    """A tiny cell model trained one epoch on the segmented shards (fold 0): its config and model.pt."""
    from conftest import tiny_model

    from hpa_batch.config import load_config
    from hpa_batch.models.split import make_splits, write_splits

    root = tmp_path_factory.mktemp("trained")
    cfg = yaml.safe_load(segmented["config"].read_text())
    cfg["splits"] = {"n_folds": 3, "min_combination": 1}
    cfg["models"] = [tiny_model()]
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    c = load_config(root / "config.yaml")
    manifests = [c.results_dir / "manifest" / f"{s}.parquet" for s in segmented["shards"]]
    write_splits(make_splits(manifests, c.catalog, 3, 0, 1), root / "splits.parquet", c.catalog)
    stores = [c.results_dir / "tiles" / f"{s}.zarr" for s in segmented["shards"]]
    args = ["train", "--config", root / "config.yaml", "--model", "tiny", "--fold", "0"]
    code, _, err = hpa(*args, "--splits", root / "splits.parquet", "--out", root / "fold0", "--tiles", *stores)
    assert code == 0, err[-3000:]
    return {"config": root / "config.yaml", "model": root / "fold0" / "model.pt", "shards": segmented["shards"]}


def test_prediction_over_a_truncated_tile_chunk_names_the_store(trained, segmented, tmp_path):
    shard = trained["shards"][0]
    tiles = tmp_path / "tiles" / f"{shard}.zarr"
    shutil.copytree(segmented["results"] / "tiles" / f"{shard}.zarr", tiles)
    truncate(chunk_files(tiles, "cells")[0])
    args = ["predict", "--config", trained["config"], "--model", "tiny", "--shard", shard, "--device", "cpu"]
    code, _, err = hpa(*args, "--models", trained["model"], "--tiles", tiles, "--out", tmp_path / "p.parquet")
    assert code == 1 and "Traceback" not in err and "checksum" in err  # the chunk's CRC32C no longer matches
    assert f"{tiles} is damaged (" in err and f"run hpa-batch repair {tiles}" in err
    assert not (tmp_path / "p.parquet").exists()


class Evil:
    """A pickle that runs a command when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_checkpoint_is_refused_naming_the_file_and_the_global(trained, tmp_path):
    import torch

    marker = tmp_path / "PWNED"
    evil = tmp_path / "models" / "tiny" / "fold0" / "model.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"model": Evil(marker), "spec": {}, "catalog": "hpa2021"}, evil)
    shard = trained["shards"][0]
    args = ["predict", "--config", trained["config"], "--model", "tiny", "--shard", shard, "--device", "cpu"]
    code, _, err = hpa(*args, "--models", evil, "--out", tmp_path / "p.parquet")
    assert code == 1 and "Traceback" not in err, err
    assert f"{evil} is not a safe checkpoint ({os.system.__module__}.system)" in err
    assert "weights_only" not in err and not marker.exists()
    code, out, _ = hpa("validate", "--deep", evil)
    assert code == 1 and "not a safe checkpoint" in out and not marker.exists()
    # a checkpoint cut short is damaged, named the same way
    cut = tmp_path / "cut.pt"
    cut.write_bytes(trained["model"].read_bytes()[:5000])
    code, _, err = hpa(*args, "--models", cut, "--out", tmp_path / "p.parquet")
    assert code == 1 and f"{cut} is damaged (not a torch checkpoint" in err and "Traceback" not in err


def test_ids_and_reasons_are_escaped_where_printed():
    from hpa_batch.convert.qc import summarise

    rejected = pd.DataFrame(
        [("ab\nQC: 0 image(s) refused", "s-0000", "x", "manifest", "unsafe id\r\x1b[2J")],
        columns=["image_id", "shard", "cell_line", "stage", "reason"],
    )
    text = summarise(rejected)
    assert len(text.splitlines()) == 3 and "ab\\nQC" in text and "\\x1b[2J" in text
    assert printable("a\u2028b\tc") == "a\\u2028b\\tc"
    err = DamagedFileError(Path("x\ny.parquet"), "bad\nline")
    assert "\n" not in str(err)


# ------------------------------------------------------------------------------------- disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs mounted for the test (root only): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=False, capture_output=True
    )
    if proc.returncode != 0:  # not root, or a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


@pytest.mark.parametrize("verb", ["convert", "tiles", "measure"])
def test_a_full_disk_is_named_and_leaves_no_staging(verb, run, small_disk):
    """Each stage on a disk that fills up mid-write: "no space left on <folder> (writing <file>)", no
    traceback, no staging or temporary left, nothing marked complete."""
    shard = run["shards"][0]
    res = run["results"]
    out = small_disk / "out"
    if verb == "convert":
        args = ["--manifest", res / "manifest" / f"{shard}.parquet", "--store", out / f"{shard}.zarr"]
        args += ["--manifest-rejected", res / "qc" / f"{shard}.manifest.tsv", "--rejected", out / "r.tsv"]
        args += ["--summary", out / f"{shard}.convert.json"]
    elif verb == "tiles":
        args = ["--out", out / f"{shard}.zarr"]
    else:
        args = ["--out", out / f"{shard}.parquet"]
    out.mkdir()
    fill(small_disk, 40_000)
    code, _, err = hpa(verb, "--config", run["config"], "--shard", shard, *args)
    assert code == 1 and "Traceback" not in err, err[-2000:]
    assert f"no space left on {out}" in err and "(writing " in err, err
    left = sorted(p.name for p in out.iterdir())
    # no staging, no temporary, no summary: nothing partial, nothing marked complete (conversion keeps
    # its store, whose finished images a rerun reuses)
    assert left == ([f"{shard}.zarr"] if verb == "convert" else []), left
    if verb == "convert":
        store = out / f"{shard}.zarr"
        assert not any(p.is_dir() for p in store.iterdir()) or validate_store(store).ok  # images in it are whole


def test_validate_says_why_a_path_does_not_exist(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'}: no such file or directory" in capsys.readouterr().err


def test_json_summaries_are_checked(run):
    from hpa_batch.integrity import check_output

    summary = run["results"] / "zarr" / f"{run['shards'][0]}.convert.json"
    assert check_output(summary, run["results"]) is None
    summary.write_text(json.dumps([1, 2]))
    assert check_output(summary, run["results"]) == "a JSON list, not an object"


def test_a_damaged_image_chunk_is_named_by_the_stage_that_reads_it(run):
    """A label chunk of a segmented image cut to half: measure names the shard store in one line, and
    ``repair`` of that store removes the image's labels alone (resegmented by the printed command)."""
    shard = run["shards"][0]
    store = run["results"] / "zarr" / f"{shard}.zarr"
    image = min(image_dirs(store))
    truncate(chunk_files(image / "labels" / "cells", "s0")[0])
    code, _, err = hpa("measure", "--config", run["config"], "--shard", shard, "--out", run["root"] / "c.parquet")
    assert code == 1 and "Traceback" not in err, err[-2000:]
    assert f"{store} is damaged (" in err and f"run hpa-batch repair {store}" in err
    code, out, _ = hpa("repair", store)
    assert code == 0 and f"removed labels of {image.name}" in out and (image / "s0").is_dir()


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    k = int(len(data) * at)
    data[k] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_tile_or_image_chunk_fails_to_decode_and_is_named(run):
    """Chunks carry a CRC32C (zarr's crc32c codec after Blosc): one flipped bit in a tile chunk or in an
    image's shard no longer decodes to other values silently but fails, named with its store."""
    from hpa_batch.cells.tiles import TileReader

    res = run["results"]
    tiles = res / "tiles" / f"{run['shards'][0]}.zarr"
    meta = json.loads((tiles / "cells" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"
    flip(chunk_files(tiles, "cells")[0])
    with pytest.raises(DamagedFileError, match="crc32c|checksum|Checksum"):
        TileReader(tiles).read_rows(0, 4)
    store = res / "zarr" / f"{run['shards'][1]}.zarr"
    image = min(image_dirs(store))
    shard = next(p for p in (image / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    flip(shard, 0.1)  # inside the first chunks, not the index
    problems = validate_store(store, deep=True).problems
    assert problems and image.name in problems[0], problems


def test_every_output_kind_has_a_check_or_a_reason_for_none():
    """A new entry in layout.RESULTS (or a new fold file) must get a check in integrity.CHECKS or a
    reason in integrity.NO_CHECK; no kind is in both, and every reason says something."""
    from hpa_batch.integrity import CHECKS, NO_CHECK
    from hpa_batch.layout import FOLD_FILES, RESULTS

    kinds = set(RESULTS) | {f"fold:{name}" for name in FOLD_FILES}
    assert set(CHECKS) | set(NO_CHECK) == kinds
    assert not set(CHECKS) & set(NO_CHECK)
    assert all(len(reason) > 20 for reason in NO_CHECK.values())


def test_a_copied_tile_store_is_told_by_its_stamp_and_checked(tmp_path):
    """Outside a results tree the stamp picks the check: a tile store stamped incomplete is damage, the
    same store stamped complete with matching rows is sound, and an unstamped group is an image store."""
    import zarr

    from hpa_batch.core.stamps import TileStamp, store_kind
    from hpa_batch.integrity import check_output, is_image_store

    store = tmp_path / "copy.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.create_array("cells", shape=(3, 4), dtype="uint8", chunks=(2, 4))[:] = 1
    root.create_array("images", shape=(1, 4), dtype="uint8", chunks=(1, 4))[:] = 1
    root.attrs.update(TileStamp(n_cells=3, n_images=1, complete=False).to_attrs())
    assert store_kind(store) == "tiles" and not is_image_store(store)
    assert "not stamped complete" in check_output(store)
    root.attrs.update(TileStamp(n_cells=3, n_images=1, complete=True).to_attrs())
    assert check_output(store, deep=True) is None
    root.attrs.update(TileStamp(n_cells=4, n_images=1, complete=True).to_attrs())
    assert "array cells has 3 rows, the store's stamp says 4 cells" in check_output(store)
    plain = zarr.open_group(tmp_path / "plain.zarr", mode="w", zarr_format=3)
    assert plain is not None and is_image_store(tmp_path / "plain.zarr")
