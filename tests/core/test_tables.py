"""The one atomic-write helper: nothing partial at the path, the previous content kept on failure."""

import errno

import pandas as pd
import pyarrow as pa
import pytest

from hpa_batch.core.atomic import atomic_path, atomic_write_text


def test_atomic_file_and_directory_writes(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    store = tmp_path / "t.zarr"
    for value in ("x", "y"):  # a directory is replaced whole, also over an existing one
        with atomic_path(store) as tmp:
            tmp.mkdir()
            (tmp / "data").write_text(value)
    assert (store / "data").read_text() == "y" and sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t.zarr"]


def test_a_full_disk_is_named_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    atomic_write_text(target, "previous")
    with pytest.raises(OSError, match=f"no space left on {tmp_path}"), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_tables_name_their_classes_in_the_schema_metadata(tmp_path):
    """A table's ``*prob_k`` columns are named by the catalog in its parquet metadata (also when empty,
    and through a streamed writer), readable by any parquet reader."""
    import pyarrow.parquet as pq

    from hpa_batch.core.labels import CATALOGS
    from hpa_batch.core.tables import read_classes, to_arrow, with_classes, write_table

    cat = CATALOGS["hpa2018"]
    schema = with_classes(pa.schema([("prob_0", pa.float32())]), cat)
    write_table(pd.DataFrame({"prob_0": [0.5]}), schema, tmp_path / "a.parquet")
    write_table(pd.DataFrame({"prob_0": []}), schema, tmp_path / "empty.parquet")
    with pq.ParquetWriter(tmp_path / "s.parquet", schema) as w:
        w.write_table(to_arrow(pd.DataFrame({"prob_0": [0.1, 0.2]}), schema))
    for name in ("a", "empty", "s"):
        assert read_classes(tmp_path / f"{name}.parquet") == list(cat.classes), name
    import json

    meta = json.loads(pq.read_schema(tmp_path / "a.parquet").metadata[b"hpa_batch.classes"])
    assert meta["catalog"] == "hpa2018" and len(meta["classes"]) == 28
    write_table(pd.DataFrame({"x": [1]}), pa.schema([("x", pa.int64())]), tmp_path / "plain.parquet")
    assert read_classes(tmp_path / "plain.parquet") is None
