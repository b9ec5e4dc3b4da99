import pkgutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from conftest import REPO

from hpa_batch.config import MergeConfig
from hpa_batch.core.labels import CATALOGS
from hpa_batch.models.split import REFUSED
from hpa_batch.results.merge import ShardInputs, cells_schema, fuse, merge_tables


def test_fusion_methods():
    c, i = np.array([[0.8, 0.2]]), np.array([[0.5, 1.0]])
    assert np.allclose(fuse(c, i, "product", 0.5), [[0.4, 0.2]])
    assert np.allclose(fuse(c, i, "mean", 0.75), [[0.725, 0.4]])
    assert np.allclose(fuse(c, i, "cell", 0.5), c)


def test_merge_keeps_rejected_and_zero_cell_images(segmented, tmp_path):
    from hpa_batch.models.split import make_splits, write_splits

    res = segmented["results"]
    cat = CATALOGS["hpa2021"]
    shards = [
        ShardInputs(
            s,
            res / "manifest" / f"{s}.parquet",
            res / "qc" / f"{s}.rejected.tsv",
            res / "qc" / f"{s}.segment.tsv",
            res / "cells" / f"{s}.parquet",
            None,
            None,
        )
        for s in segmented["shards"]
    ]
    # one extra refused image in the first shard's QC table
    rej = pd.read_csv(shards[0].rejected, sep="\t")
    extra = tmp_path / "rejected.tsv"
    pd.concat(
        [
            rej,
            pd.DataFrame(
                [
                    {
                        "image_id": "bad1",
                        "shard": segmented["shards"][0],
                        "cell_line": "X",
                        "stage": "manifest",
                        "reason": "missing yellow channel",
                    }
                ]
            ),
        ]
    ).to_csv(extra, sep="\t", index=False)
    shards[0] = ShardInputs(
        *[extra if f == "rejected" else getattr(shards[0], f) for f in shards[0].__dataclass_fields__]
    )
    write_splits(make_splits([s.manifest for s in shards], cat, 3, 0, 1), tmp_path / "splits.parquet", cat)
    opts = MergeConfig(cell_model=None, image_model=None, fusion="product", cell_weight=0.5, negative="derived")
    n_cells, n_images = merge_tables(
        shards,
        tmp_path / "splits.parquet",
        cat,
        opts,
        thresholds=np.full(19, 0.5),
        out_cells=tmp_path / "cells.parquet",
        out_images=tmp_path / "images.parquet",
    )
    assert n_images == 7 and n_cells == sum(len(pd.read_parquet(s.cells)) for s in shards)
    assert pq.read_schema(tmp_path / "cells.parquet").equals(cells_schema(19, False), check_metadata=False)
    images = pd.read_parquet(tmp_path / "images.parquet").set_index("image_id")
    assert images.at["bad1", "rejected"] and images.at["bad1", "reject_reason"] == "missing yellow channel"
    assert (images.drop("bad1")["n_cells"] > 0).all() and not images["zero_cells"].any()


def one_shard_with_predictions(res, s, pred, tmp_path):
    """Shard ``s`` of the segmented results with ``pred`` as its cell model's predictions, and splits."""
    from hpa_batch.models.split import make_splits, write_splits

    pred.to_parquet(tmp_path / "pred.parquet")
    shard = ShardInputs(
        s,
        res / "manifest" / f"{s}.parquet",
        res / "qc" / f"{s}.rejected.tsv",
        res / "qc" / f"{s}.segment.tsv",
        res / "cells" / f"{s}.parquet",
        tmp_path / "pred.parquet",
        None,
    )
    cat = CATALOGS["hpa2021"]
    write_splits(make_splits([shard.manifest], cat, 3, 0, 1), tmp_path / "splits.parquet", cat)
    return shard


def merge_one(shard, tmp_path, cat, fusion="product", negative_confidence="model"):
    """Merge one shard against ``tmp_path/splits.parquet`` with thresholds 0.5 and derived Negative,
    into ``tmp_path/c.parquet`` and ``tmp_path/i.parquet``."""
    merge_tables(
        [shard],
        tmp_path / "splits.parquet",
        cat,
        MergeConfig(None, None, fusion, 0.5, "derived", negative_confidence),
        thresholds=np.full(19, 0.5),
        out_cells=tmp_path / "c.parquet",
        out_images=tmp_path / "i.parquet",
    )


def test_product_fusion_thresholds_are_fused_too(segmented, tmp_path):
    """cell 0.6 x image 0.6 = 0.36 passes the threshold 0.5 fused the same way (0.25), not 0.5 itself."""

    res, cat, s = segmented["results"], CATALOGS["hpa2021"], segmented["shards"][0]
    cells = pd.read_parquet(res / "cells" / f"{s}.parquet")
    pred = cells[["image_id", "cell_id"]].assign(**{f"prob_{k}": 0.6 if k == 0 else 0.1 for k in range(19)})
    shard = one_shard_with_predictions(res, s, pred, tmp_path)
    for fusion, expected in (("product", "0"), ("cell", "0"), ("mean", "0")):
        merge_one(shard, tmp_path, cat, fusion)
        out = pd.read_parquet(tmp_path / "c.parquet")
        assert (out["predicted"] == expected).all(), fusion
        assert np.allclose(out["fused_prob_0"], {"product": 0.36, "cell": 0.6, "mean": 0.6}[fusion])


def test_label_sets_carry_class_names_and_an_image_with_only_negative_cells_is_negative(segmented, tmp_path):
    """Every label-id column has its names beside it; an image whose cells are all Negative is
    predicted Negative too (the cells' rule), never an empty string beside labelled cells."""

    res, cat, s = segmented["results"], CATALOGS["hpa2021"], segmented["shards"][0]
    cells = pd.read_parquet(res / "cells" / f"{s}.parquet")
    first = cells["image_id"] == cells["image_id"].iloc[0]  # one image's cells say Nucleoplasm, the rest nothing
    pred = cells[["image_id", "cell_id"]].assign(
        **{f"prob_{k}": np.where(first, 0.9, 0.1) if k == 0 else 0.1 for k in range(19)}
    )
    shard = one_shard_with_predictions(res, s, pred, tmp_path)
    merge_one(shard, tmp_path, cat)
    out = pd.read_parquet(tmp_path / "c.parquet")
    names = out["predicted_names"].map(list)
    assert names[first.to_numpy()].map(lambda v: v == ["Nucleoplasm"]).all()
    assert names[~first.to_numpy()].map(lambda v: v == ["Negative"]).all()
    assert [list(v) for v in out["image_label_names"]] == [[cat.classes[k] for k in v] for v in out["image_labels"]]
    images = pd.read_parquet(tmp_path / "i.parquet").set_index("image_id")
    top = cells["image_id"].iloc[0]
    assert images.at[top, "predicted"] == "0" and list(images.at[top, "cells_predicted_names"]) == ["Nucleoplasm"]
    for image_id in images.index.drop(top):
        assert images.at[image_id, "predicted"] == "18", image_id  # was "" while its cells said Negative
        assert (
            list(images.at[image_id, "predicted_names"])
            == list(images.at[image_id, "cells_predicted_names"])
            == ["Negative"]
        )
    assert "labels" not in images and "image_labels" in images  # one name per idea, as in cells.parquet


def test_image_refused_after_admission_appears_once_and_never_in_splits(segmented, tmp_path):
    """An admitted image refused during conversion (e.g. a truncated PNG) is one refused row in
    images.parquet and is absent from splits.parquet (so from training and metrics)."""
    from hpa_batch.models.split import make_splits, write_splits

    res, cat, s = segmented["results"], CATALOGS["hpa2021"], segmented["shards"][0]
    manifest = pd.read_parquet(res / "manifest" / f"{s}.parquet")
    victim = manifest["image_id"].iloc[0]
    rej = pd.DataFrame(
        [
            {
                "image_id": victim,
                "shard": s,
                "cell_line": manifest["cell_line"].iloc[0],
                "stage": "convert",
                "reason": "red: truncated PNG",
            }
        ]
    )
    rej.to_csv(tmp_path / "rejected.tsv", sep="\t", index=False)
    shard = ShardInputs(
        s,
        res / "manifest" / f"{s}.parquet",
        tmp_path / "rejected.tsv",
        res / "qc" / f"{s}.segment.tsv",
        res / "cells" / f"{s}.parquet",
        None,
        None,
    )
    splits = make_splits([shard.manifest], cat, 3, 0, 1, rejected=[tmp_path / "rejected.tsv"])
    assert victim not in set(splits["image_id"]) and len(splits) == len(manifest) - 1
    write_splits(splits, tmp_path / "splits.parquet", cat)
    merge_one(shard, tmp_path, cat)
    images = pd.read_parquet(tmp_path / "i.parquet")
    assert images["image_id"].is_unique and len(images) == len(manifest)
    row = images.set_index("image_id").loc[victim]
    assert row["rejected"] and row["reject_reason"] == "red: truncated PNG" and row["fold"] == REFUSED
    assert {"coverage", "median_cell_area", "cell_nucleus_ratio", "doubtful", "qc_flag"} <= set(images.columns)
    assert not images.loc[~images["rejected"], "doubtful"].any()


def test_negative_membership_is_derived_and_its_confidence_is_the_models_own(segmented, tmp_path):
    """Under ``negative: derived`` a cell is Negative exactly when no protein class reaches its
    threshold, whatever the model's Negative says; the column the submission ranks by is the model's
    fused Negative (``negative_confidence: model``) or the derived confidence (``derived``)."""
    res, cat, s = segmented["results"], CATALOGS["hpa2021"], segmented["shards"][0]
    cells = pd.read_parquet(res / "cells" / f"{s}.parquet")
    rng = np.random.default_rng(5)
    own = rng.uniform(0.0, 1.0, len(cells)).astype(np.float32)  # the model's Negative, unrelated to the rest
    protein = np.where(np.arange(len(cells)) % 2 == 0, 0.9, 0.1).astype(np.float32)  # class 0 on every other cell
    pred = cells[["image_id", "cell_id"]].assign(
        **{f"prob_{k}": (protein if k == 0 else own if k == 18 else 0.05) for k in range(19)}
    )
    shard = one_shard_with_predictions(res, s, pred, tmp_path)
    merge_one(shard, tmp_path, cat, "cell")
    out = (
        pd.read_parquet(tmp_path / "c.parquet")
        .set_index(["image_id", "cell_id"])
        .loc[list(zip(pred["image_id"], pred["cell_id"]))]
    )
    expected = np.where(protein > 0.5, "0", "18")
    assert (out["predicted"].to_numpy() == expected).all()  # membership: derived, not the model's own
    np.testing.assert_allclose(out["fused_prob_18"], own, atol=1e-6)  # confidence: the model's own
    merge_one(shard, tmp_path, cat, "cell", negative_confidence="derived")
    out = (
        pd.read_parquet(tmp_path / "c.parquet")
        .set_index(["image_id", "cell_id"])
        .loc[list(zip(pred["image_id"], pred["cell_id"]))]
    )
    assert (out["predicted"].to_numpy() == expected).all()
    np.testing.assert_allclose(out["fused_prob_18"], np.where(protein > 0.5, 0.1, 0.9), atol=1e-6)  # 1 - r / 2


def test_negative_is_derived_from_the_protein_classes():
    from hpa_batch.results.merge import derive_negative

    t = np.array([0.2, 0.4, 0.5])  # class 2 = Negative
    fused = np.array(
        [
            [0.0, 0.0, 0.9],  # nothing: Negative 1
            [0.1, 0.2, 0.9],  # both at half their thresholds: 0.75
            [0.2, 0.0, 0.9],  # class 0 at its threshold: 0.5 (boundary)
            [0.4, 0.0, 0.0],
        ],
        np.float32,
    )  # twice its threshold: 0
    out = derive_negative(fused, t, 2)
    assert np.allclose(out[:, 2], [1.0, 0.75, 0.5, 0.0]) and np.array_equal(out[:, :2], fused[:, :2])
    assert derive_negative(np.zeros((0, 3), np.float32), t, 2).shape == (0, 3)


def test_merge_reads_thresholds_without_torch(tmp_path):
    """rule merge runs in envs/cpu.yaml (no torch): thresholds come from thresholds.json."""
    import json
    import subprocess
    import sys

    from hpa_batch.results.merge import model_thresholds

    for k, values in enumerate(([0.2, 0.4], [0.4, 0.6])):
        d = tmp_path / f"fold{k}"
        d.mkdir()
        (d / "thresholds.json").write_text(json.dumps({"classes": ["a", "b"], "thresholds": values}))
    got = model_thresholds([tmp_path / "fold0" / "model.pt", tmp_path / "fold1" / "model.pt"], 2)
    assert np.allclose(got, [0.3, 0.5]) and got.dtype == np.float32
    # every module a CPU rule (envs/cpu.yaml, no torch) runs imports without torch, torch made unimportable
    # (every module of the CPU stages' packages, the CLI, and what the split rule runs)
    cpu = ["hpa_batch." + m for m in ("cli", "config", "layout", "models.split", "models.checkpoint")] + [
        m.name
        for pkg in ("core", "convert", "cells", "results")
        for m in pkgutil.walk_packages([str(REPO / "hpa_batch" / pkg)], prefix=f"hpa_batch.{pkg}.")
    ]
    assert "hpa_batch.cells.segment.watershed" in cpu and "hpa_batch.results.report" in cpu
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
        "            raise ImportError('no torch in envs/cpu.yaml: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"[importlib.import_module(m) for m in {cpu!r}]\n"
        "print('ok')"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "ok"
    )


def test_stages_import_only_what_they_use():
    """Inference does not import the trainer; the report and its pictures do not import the generator."""
    import subprocess
    import sys

    code = (
        "import sys, hpa_batch.models.predict, hpa_batch.results.report, hpa_batch.results.viz\n"
        "print(sorted(m for m in ('hpa_batch.models.train', 'hpa_batch.synth') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
