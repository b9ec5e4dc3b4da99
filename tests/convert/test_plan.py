import pandas as pd
import pytest

from hpa_batch.convert.plan import PlanError, plan_shards, slugify


def meta(rows):
    return pd.DataFrame(
        [(i, lab, cl, n) for n, (i, lab, cl) in enumerate(rows)],
        columns=["image_id", "label_string", "cell_line", "row"],
    )


def test_slugify():
    assert slugify("U-2 OS") == "u-2-os" and slugify("Hep G2") == "hep-g2" and slugify("  ") == "unknown"


def test_shards_are_per_cell_line_sorted_and_bounded():
    m = meta([(f"id{k:02d}", "0", "HeLa" if k % 2 else "U-2 OS") for k in range(11)][::-1])
    shards = plan_shards(m, None, 2)
    assert [s.name for s in shards] == [
        "hela-0000",
        "hela-0001",
        "hela-0002",
        "u-2-os-0000",
        "u-2-os-0001",
        "u-2-os-0002",
    ]
    for s in shards:
        assert list(s.ids) == sorted(s.ids) and 1 <= len(s.ids) <= 2
        assert {m.set_index("image_id").at[i, "cell_line"] for i in s.ids} == {s.cell_line}
    assert sorted(i for s in shards for i in s.ids) == sorted(m["image_id"])


def test_adding_a_cell_line_leaves_other_shards_untouched():
    rows = [(f"a{k}", "0", "HeLa") for k in range(5)] + [(f"b{k}", "1", "A549") for k in range(4)]
    only = {s.name: s for s in plan_shards(meta(rows), ["HeLa"], 2)}
    both = {s.name: s for s in plan_shards(meta(rows), ["HeLa", "A549"], 2)}
    assert set(both) - set(only) == {"a549-0000", "a549-0001"}
    assert all(both[n] == only[n] for n in only)


def test_digest_changes_only_with_rows():
    rows = [(f"a{k}", "0", "HeLa") for k in range(4)]
    before = plan_shards(meta(rows), None, 2)
    rows[3] = ("a3", "0|1", "HeLa")
    after = plan_shards(meta(rows), None, 2)
    assert before[0].digest == after[0].digest and before[1].digest != after[1].digest


def test_unknown_cell_line_and_slug_collision():
    with pytest.raises(PlanError, match="not in the metadata"):
        plan_shards(meta([("a", "0", "HeLa")]), ["HeLaa"], 5)
    with pytest.raises(PlanError, match="same slug"):
        plan_shards(meta([("a", "0", "HEK 293"), ("b", "0", "HEK-293")]), None, 5)


def test_duplicate_ids_are_planned_once():
    shards = plan_shards(meta([("a", "0", "HeLa"), ("a", "1", "A549"), ("b", "0", "HeLa")]), None, 5)
    ids = [i for s in shards for i in s.ids]
    assert sorted(ids) == ["a", "b"] and [s.name for s in shards] == ["hela-0000"]


def test_a_table_without_cell_lines_plans_unknown_shards(tmp_path):
    """The public 2021 table has only ID,Label: with cell_line_column null every image is in cell line
    `unknown`, cut into shard_size shards in id order; with the column named but absent, the error
    names the file and the fix."""
    from hpa_batch.config import config_from_dict
    from hpa_batch.convert.plan import plan_from_config

    table = tmp_path / "train.csv"
    table.write_text("ID,Label\n" + "".join(f"img{k:02d},{k % 19}\n" for k in range(5)))
    base = {"dataset": {"images_dirs": [str(tmp_path)], "metadata": str(table)}, "shard_size": 2}
    with pytest.raises(PlanError, match=r"train.csv.*Cell_line.*cell_line_column: null"):
        plan_from_config(config_from_dict(base))
    cfg = config_from_dict({**base, "dataset": {**base["dataset"], "cell_line_column": None}})
    shards = plan_from_config(cfg)
    assert [s.name for s in shards] == ["unknown-0000", "unknown-0001", "unknown-0002"]
    assert [list(s.ids) for s in shards] == [["img00", "img01"], ["img02", "img03"], ["img04"]]
