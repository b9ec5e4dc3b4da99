"""The HTML report's parts, the held-out view and the baseline view of the evaluation, and
``metrics.json`` as strict JSON (a score that cannot be computed is ``null``, never a bare ``NaN``)."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from hpa_batch.config import ReportConfig
from hpa_batch.core.atomic import json_text, strict
from hpa_batch.core.labels import CATALOGS
from hpa_batch.results.evaluate import baseline_view, evaluate_all, held_out_images
from hpa_batch.results.metrics_file import read_metrics, write_metrics
from hpa_batch.results.report import (
    SECTIONS,
    ReportInputs,
    build_report,
    confusion_matrix,
    git_revision,
)

CAT = CATALOGS["hpa2021"]
N = CAT.n_classes


def test_confusion_matrix_counts_multilabel_pairs_and_misses():
    m = confusion_matrix([{0}, {0, 2}, {1}], [{0}, {2}, set()], 3)
    assert m.shape == (3, 4)
    assert m[0].tolist() == [1, 0, 1, 0]  # class 0: once predicted 0, once predicted 2
    assert m[2].tolist() == [0, 0, 1, 0] and m[1].tolist() == [0, 0, 0, 1]  # class 1 missed


def tables():
    images = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "r"],
            "shard": "s-0000",
            "cell_line": ["X", "X", "Y", "Y"],
            "n_cells": [2, 1, 0, 0],
            "rejected": [False, False, False, True],
            "zero_cells": [False, False, True, False],
            "reject_reason": [None, None, None, "missing channel: yellow"],
            "fold": [0, 1, 2, -1],
            "image_labels": [[0], [16], [0, 16], []],
            "predicted": ["0", "16", "", None],
            **{f"image_prob_{k}": [0.9 if k == 0 else 0.1, 0.8 if k == 16 else 0.1, 0.1, np.nan] for k in range(N)},
        }
    )
    cells = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "cell_id": [1, 2, 1],
            "predicted": ["0", "0|16", "16"],
            **{
                f"fused_prob_{k}": [0.9 if k == 0 else 0.05, 0.6 if k in (0, 16) else 0.05, 0.7 if k == 16 else 0.05]
                for k in range(N)
            },
        }
    )
    return cells, images


def test_held_out_images_only_with_a_single_trained_fold():
    _, images = tables()
    assert held_out_images(images, {0}) == {"a"}
    assert held_out_images(images, {0, 1}) == set()  # a CV ensemble has seen every image
    assert held_out_images(images, {5}) == set()


def test_baseline_view_puts_baseline_probabilities_in_place_of_the_fused_ones():
    cells, images = tables()
    base = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "cell_id": [1, 2, 1],
            "predicted": ["16", "", "0"],
            **{f"prob_{k}": [0.2, 0.3 if k == 16 else 0.0, 0.4] for k in range(N)},
        }
    )
    c, i = baseline_view(cells, images, base, np.full(N, 0.35), CAT)
    assert c["fused_prob_16"].tolist() == [0.2, 0.3, 0.4] and c["predicted"].tolist() == ["16", "", "0"]
    assert i.set_index("image_id").at["a", "image_prob_16"] == pytest.approx(0.3)  # max over the image's cells
    assert i.set_index("image_id").at["b", "predicted"] == "|".join(str(k) for k in range(N))  # 0.4 >= 0.35
    assert i.set_index("image_id").at["c", "predicted"] == ""  # no cells
    assert pd.isna(i.set_index("image_id").at["r", "predicted"])  # refused stays refused
    result = evaluate_all(
        cells, images, [], None, CAT, trained_folds={0}, baseline=base, baseline_thresholds=np.full(N, 0.35)
    )
    assert result["held_out_images"] == 1 and result["held_out"]["images"] == 1
    assert set(result["baseline"]) == {"all", "held_out"} and result["baseline"]["all"]["images"] == 3
    assert result["image_macro_f1"] > result["baseline"]["all"]["image_macro_f1"]


def test_compared_models_score_on_the_same_cells_and_only_their_own_held_out_images(tmp_path):
    from hpa_batch.results.evaluate import Compared
    from hpa_batch.results.metrics_file import write_metrics
    from hpa_batch.results.report.scores import models_table

    cells, images = tables()
    perfect = pd.DataFrame(
        {
            "image_id": ["a", "a", "b"],
            "cell_id": [1, 2, 1],
            "predicted": ["0", "0", "16"],
            **{
                f"prob_{k}": [0.9 if k == 0 else 0.0, 0.9 if k == 0 else 0.0, 0.9 if k == 16 else 0.0] for k in range(N)
            },
        }
    )
    wrong = perfect.assign(predicted="16", **{f"prob_{k}": 0.9 if k == 16 else 0.0 for k in range(N)})
    same = {"arch": "linear", "encoder": "vit", "random_init": True, "folds": [0]}
    compared = {
        "head": Compared(perfect, np.full(N, 0.5), same),
        "other-folds": Compared(wrong, np.full(N, 0.5), {"arch": "resnet18", "encoder": None, "folds": [1]}),
    }
    result = evaluate_all(cells, images, [], None, CAT, trained_folds={0}, compared=compared)
    head, other = result["models"]["head"], result["models"]["other-folds"]
    assert head["kind"] == "encoder head" and head["random_init"] and other["kind"] == "timm"
    assert head["all"]["images"] == other["all"]["images"] == result["images"]  # the same images
    assert head["all"]["image_macro_f1"] > other["all"]["image_macro_f1"]
    assert head["held_out"]["images"] == 1
    assert "held_out" not in other and "folds [1]" in other["held_out_note"]  # fold 0 was not held out for it
    assert other["prediction_guard"]["single_prediction"]  # one label set for every cell: flagged
    write_metrics(tmp_path / "m.json", result)  # the schema accepts it
    html = models_table(result)
    assert "RANDOM-INIT" in html and "one label set for every cell" in html and "not held out" in html


def test_report_has_every_section_without_models_tiles_or_baseline(tmp_path):
    cells, images = tables()
    images.to_parquet(tmp_path / "images.parquet")
    cells.to_parquet(tmp_path / "cells.parquet")
    metrics = evaluate_all(cells, images, [], None, CAT, trained_folds=set())
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    inp = ReportInputs(
        cells=tmp_path / "cells.parquet",
        images=tmp_path / "images.parquet",
        metrics=tmp_path / "metrics.json",
        baseline=None,
        histories=[tmp_path / "missing.csv"],
        tile_stores=[],
        zarr_stores=[],
        rejected=None,
        config={"dataset": {"name": "t<x>"}},
        workdir=tmp_path,
    )
    out = build_report(
        inp, CAT, ReportConfig(overlays=2, gallery_per_class=3, max_rejected=10, umap_cells=0), tmp_path / "r.html"
    )
    doc = out.read_text()
    assert re.findall(r'<section id="([a-z-]+)">', doc) == list(SECTIONS)
    assert "t&lt;x&gt;" in doc  # config values are escaped
    assert "missing channel: yellow" in doc and "segmentation found no cell" in doc
    assert "No held-out images" in doc and "Baseline disabled" in doc
    assert "no training history found" in doc
    n_refused = int(images["rejected"].sum())
    assert f"{len(images)} images: {len(images) - n_refused} admitted, {n_refused} refused" in doc  # the overview
    assert doc.count("data:image/png;base64,") >= 4  # labels x2, per-class, confusion
    assert git_revision(tmp_path).startswith("unknown")


def test_segmentation_section_ranks_doubtful_images_first_and_says_why():
    import pandas as pd

    from hpa_batch.results.report import qc_ranking, segmentation_section

    images = pd.DataFrame(
        {
            "image_id": ["ok1", "ok2", "bad", "gone"],
            "shard": "s-0000",
            "cell_line": "X",
            "n_cells": [20, 22, 18, 0],
            "rejected": [False, False, False, True],
            "zero_cells": [False, False, False, False],
            "coverage": [0.4, 0.42, 0.05, None],
            "median_cell_area": [40000.0, 42000.0, 5000.0, None],
            "cell_nucleus_ratio": [4.0, 4.2, 1.1, None],
            "doubtful": [False, False, True, False],
            "fold": [0, 1, -2, -1],
            "qc_flag": [None, None, "cells barely larger than nuclei (median cell/nucleus area 1.10 < 1.6)", None],
        }
    )
    ranked = qc_ranking(images)
    assert ranked["image_id"].tolist()[0] == "bad" and "gone" not in set(ranked["image_id"])
    html = segmentation_section(images, [], 6)
    assert "1 doubtful" in html and "cells barely larger than nuclei" in html
    assert 'class="sortable"' in html and "1 of them are excluded from training" in html


def test_figures_are_exported_per_section_and_replaced_as_a_whole(tmp_path):
    from hpa_batch.results.report import Figures

    figures = Figures()
    figures.add("training", b"one")
    figures.add("training", b"two")
    out = tmp_path / "figures"
    (out).mkdir()
    (out / "stale.png").write_bytes(b"old")
    assert [p.name for p in figures.write(out)] == ["training-0.png", "training-1.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        "training-0.png",
        "training-1.png",
    ]  # the stale file: not there
    assert (out / "training-1.png").read_bytes() == b"two"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_summary_marks_training_images_warns_on_a_ranking_flip_and_lists_cell_lines():
    """The all-images columns say they include training images; a deep model that leads on all images
    but trails the baseline on held-out ones gets a warning; per-cell-line mAP is a table."""
    from hpa_batch.results.report.scores import summary_section

    run = {"images": 10, "image_macro_f1": 0.5, "image_per_class_f1": {}, "image_ap_per_class": {}}
    metrics = {
        **run,
        "image_map": 0.9,
        "images_per_cell_line": {"A-431": 6, "U-2 OS": 4},
        "image_map_per_cell_line": {"A-431": 0.8, "U-2 OS": 0.6},
        "held_out_images": 4,
        "trained_folds": [0],
        "held_out": {**run, "image_map": 0.4, "image_map_per_cell_line": {"A-431": 0.45}},
        "baseline": {"all": {**run, "image_map": 0.7}, "held_out": {**run, "image_map": 0.6}},
        "prediction_guard": {
            "max_class_share": 0.6,
            "class_share": {},
            "over_predicted": [],
            "single_prediction": False,
        },
    }
    doc = summary_section(metrics)
    assert "deep model, all images (incl. training)" in doc and "baseline, held-out" in doc
    assert "WARNING: on image mAP the deep model leads on all images but the baseline on the held-out" in doc
    assert "<h3>Per cell line</h3>" in doc and "U-2 OS" in doc and "0.450" in doc
    metrics["held_out"]["image_map"] = 0.65  # the deep model leads on both: no warning
    assert "WARNING" not in summary_section(metrics)


def test_the_fusion_rule_is_said_next_to_the_thresholds():
    from hpa_batch.config import MergeConfig
    from hpa_batch.results.report.sections import fusion_rule

    product = fusion_rule(MergeConfig(None, None, "product", 0.5, "derived"))
    assert "cell_prob x image_prob >= t_k^2" in product and "fused 0.25" in product
    assert "0.7 x cell_prob + 0.3 x image_prob" in fusion_rule(MergeConfig(None, None, "mean", 0.7, "derived"))


def test_the_umap_separates_what_the_embeddings_separate_and_names_its_source(tmp_path):
    """Two groups of cells far apart in the model's embedding space stay apart on the map (a cell's
    nearest map neighbour is of its own group); the section says what was mapped and how to redo it."""
    import anndata as ad

    from hpa_batch.results.report import Figures
    from hpa_batch.results.report.embedding import umap_2d, umap_section

    rng = np.random.default_rng(3)
    n = 120
    group = np.repeat([0, 1], n // 2)
    emb = rng.normal(size=(n, 32)).astype(np.float32) + group[:, None] * 6.0
    xy = umap_2d(emb)
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1) + np.eye(n) * 1e9
    assert (group[d.argmin(1)] == group).mean() > 0.97
    cells = pd.DataFrame(
        {
            "predicted": np.where(group == 1, "16", ""),
            "cell_line": np.where(group == 1, "A-431", "U-2 OS"),
            **{f"fused_prob_{k}": np.full(n, 0.6 if k == 16 else 0.1) for k in range(N)},
        }
    )
    obsm = {"X_tiny": emb, "X_a-vit": rng.normal(size=(n, 8)).astype(np.float32), "spatial": rng.random((n, 2))}
    uns = {"embeddings": {"X_tiny": "cell model", "X_a-vit": "encoder a-vit"}}
    ad.AnnData(X=rng.random((n, 4)).astype(np.float32), obsm=obsm, uns=uns).write_h5ad(tmp_path / "cells.h5ad")
    figures = Figures()
    body = umap_section(cells, tmp_path / "cells.h5ad", CAT, max_cells=100, figures=figures)
    assert "100 of 120 cells" in body and "obsm[&#x27;X_tiny&#x27;]" in body and "use_rep=&#x27;X_tiny&#x27;" in body
    assert len(figures.by_section["umap"]) == 2 and "data:image/png;base64," in body  # one map per embedding
    assert body.index("cell model") < body.index("encoder a-vit")  # the cell model's map first
    del obsm["X_tiny"]
    uns = {"embeddings": {"X_a-vit": "encoder a-vit"}}
    ad.AnnData(X=rng.random((n, 4)).astype(np.float32), obsm=obsm, uns=uns).write_h5ad(tmp_path / "cells.h5ad")
    body = umap_section(cells, tmp_path / "cells.h5ad", CAT, max_cells=100, figures=Figures())
    assert body.index("standardised measurements (X)") < body.index("encoder a-vit")  # no cell model: X first
    off = umap_section(cells, tmp_path / "cells.h5ad", CAT, max_cells=0)
    assert "off" in off and "base64" not in off


def strict_loads(text: str):
    """A parser as strict as ``JSON.parse``: ``NaN`` / ``Infinity`` are refused."""

    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_strict_turns_non_finite_floats_into_null_at_any_depth():
    obj = {"a": float("nan"), "b": [1.5, np.float32("inf"), {"c": np.float64("nan")}], "d": (np.int64(3), True)}
    assert strict(obj) == {"a": None, "b": [1.5, None, {"c": None}], "d": [3, True]}
    assert strict_loads(json_text(obj))["b"][1] is None
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps(obj["a"]))  # the check above can fail: the standard library writes NaN


def test_metrics_with_a_score_that_cannot_be_computed_are_strict_json(tmp_path):
    cells, images = tables()
    result = evaluate_all(cells, images, [], None, CAT, trained_folds={0})
    per_line = result["held_out"]["image_map_per_cell_line"]
    assert any(np.isnan(v) for v in per_line.values())  # one held-out image: its line's mAP is NaN in memory
    write_metrics(tmp_path / "metrics.json", result)
    data = strict_loads((tmp_path / "metrics.json").read_text())
    assert None in data["held_out"]["image_map_per_cell_line"].values()
    assert data["held_out"]["images_per_cell_line"] == {"X": 1}  # the n beside it
    assert read_metrics(tmp_path / "metrics.json")["images"] == 3
    # every per-class score has its n beside it, in metrics.json and in the report's table
    assert data["images_per_class"] == {CAT.classes[0]: 2, CAT.classes[16]: 2}
    from hpa_batch.results.report.scores import class_table

    html = class_table(result, None, CAT)
    assert "images" in html and CAT.classes[16] in html and html.count("<tr") == 3  # header + 2 classes
