"""The one atomic-write helper: nothing partial at the path, the previous content kept on failure."""

import errno

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
