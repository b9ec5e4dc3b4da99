"""The Snakemake workflow itself: real runs, rerun triggers, lint."""

import subprocess

import numpy as np
import pytest
import yaml
from conftest import image_dirs, planned_jobs, scverse_check, tool_env


def snakemake(wd, *args, check=True):
    proc = subprocess.run(["snakemake", *args], check=False, cwd=wd, env=tool_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_run_then_add_cell_line_reruns_only_new_shards(dataset, workflow_dir):
    ds = dataset
    for k in range(4):
        ds.add(f"h{k}", cell_line="HeLa")
    for k in range(3):
        ds.add(f"a{k}", cell_line="A549")
    ds.add("hbad", cell_line="HeLa", channels=("red", "green", "blue"))
    wd = workflow_dir()
    cfg = ds.config(shard_size=2, cell_lines=["HeLa"])
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    targets = ("convert", "tiles")  # the shard stages; training is covered by the synthetic run below
    plan = snakemake(wd, "-n", *targets, "--configfile", "run.yaml")
    assert planned_jobs(plan).count(("convert_shard", "hela-0000")) == 1
    out = snakemake(wd, "--cores", "2", *targets, "--configfile", "run.yaml")
    assert "1 image(s) refused" in out and "hbad" in out  # reported at the end of the run
    res = ds.root / "results"
    hela = sorted((res / "zarr").glob("hela-*.convert.json"))
    assert [p.name for p in hela] == ["hela-0000.convert.json", "hela-0001.convert.json", "hela-0002.convert.json"]
    assert (ds.root / "logs" / "convert" / "hela-0000.log").read_text().count("images") >= 1
    mtimes = {  # the tree's own records (receipts refreshed after Snakemake touched an output) aside
        p: p.stat().st_mtime_ns
        for p in res.rglob("*")
        if "hela" in p.name and p.is_file() and ".hpa_batch" not in p.parts
    }

    assert planned_jobs(snakemake(wd, "-n", *targets, "--configfile", "run.yaml")) == []
    cfg["cell_lines"] = ["HeLa", "A549"]
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(snakemake(wd, "-n", *targets, "--configfile", "run.yaml"))
    per_shard = ("manifest", "convert_shard", "segment_shard", "measure_shard", "tiles_shard")
    assert jobs == sorted(
        [(rule, s) for rule in per_shard for s in ("a549-0000", "a549-0001")]
        + [("qc", None), ("convert", None), ("tiles", None)]
    )
    snakemake(wd, "--cores", "2", *targets, "--configfile", "run.yaml")
    assert (res / "zarr" / "a549-0001.convert.json").is_file()
    after = {p: p.stat().st_mtime_ns for p in mtimes}
    assert after == mtimes, "existing shards were rewritten"

    # damage after success: a truncated label shard is found, repaired and redone through the workflow
    store = res / "zarr" / "a549-0001.zarr"
    image = min(image_dirs(store))
    victim = next(p for p in (image / "labels" / "nuclei" / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    victim.write_bytes(victim.read_bytes()[:100])
    check = subprocess.run(
        ["hpa-batch", "validate", "--deep", str(store)], capture_output=True, text=True, env=tool_env(), check=False
    )
    assert check.returncode == 1 and f"{image.name}/labels/nuclei" in check.stdout
    fix = subprocess.run(
        ["hpa-batch", "repair", "--config", str(wd / "run.yaml"), str(store)],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=True,
        cwd=wd,
    )
    marker = res / "zarr" / "a549-0001.segment.json"
    assert f"removed labels of {image.name}" in fix.stdout
    assert f"snakemake --cores all {marker} all --configfile {wd / 'run.yaml'}" in fix.stdout
    jobs = planned_jobs(snakemake(wd, "-n", str(marker), *targets, "--configfile", "run.yaml"))
    assert {j for j in jobs if j[1]} == {(r, "a549-0001") for r in ("segment_shard", "measure_shard", "tiles_shard")}
    snakemake(wd, "--cores", "2", str(marker), *targets, "--configfile", "run.yaml")
    again = subprocess.run(
        ["hpa-batch", "validate", "--deep", str(store)], capture_output=True, text=True, env=tool_env(), check=False
    )
    assert again.returncode == 0, again.stdout

    # a changed label reruns only that shard's manifest + conversion (params trigger)
    ds.rows[1] = ("h1", "3", "HeLa")
    ds.write_metadata()
    jobs = planned_jobs(snakemake(wd, "-n", *targets, "--configfile", "run.yaml"))
    assert ("manifest", "hela-0000") in jobs and not any(s and s != "hela-0000" for _, s in jobs)


def test_lint_is_clean(workflow_dir):
    wd = workflow_dir()
    out = snakemake(wd, "--lint", "--configfile", "config/demo.yaml", check=False)
    # demo metadata does not exist in the copy: lint must still parse; make a tiny one
    if "does not exist" in out:
        (wd / "resources" / "demo" / "images").mkdir(parents=True)
        (wd / "resources" / "demo" / "train.csv").write_text("ID,Label,Cell_line\nx,0,HeLa\n")
        out = snakemake(wd, "--lint", "--configfile", "config/demo.yaml")
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_a_missing_images_directory_is_refused_before_any_job(dataset, workflow_dir):
    ds = dataset
    ds.add("h0", cell_line="HeLa")
    wd = workflow_dir()
    cfg = ds.config(shard_size=2)
    cfg["dataset"]["images_dirs"] = [str(ds.root / "images"), str(ds.root / "no-such-dir")]
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "--configfile", "run.yaml", check=False)
    assert f"dataset.images_dirs: {ds.root / 'no-such-dir'} does not exist" in out


def test_a_fork_of_the_shared_upstream_is_up_to_date(upstream_2021, tmp_path):
    """A copy of the shared upstream run is a run: nothing upstream is planned again, and a downstream
    target plans only what follows the tiles."""
    from conftest import UPSTREAM_RULES, tiny_model

    wd, _ = upstream_2021.fork(tmp_path, splits={"n_folds": 3, "min_combination": 1}, models=[tiny_model()])
    assert planned_jobs(snakemake(wd, "-n", "tiles", "convert", "--configfile", "run.yaml")) == []
    rules = {rule for rule, _ in planned_jobs(snakemake(wd, "-n", "--configfile", "run.yaml"))}
    assert {"split", "train_model", "predict_shard", "report"} <= rules and not rules & set(UPSTREAM_RULES)
    # an upstream option reruns its stage in the fork (Snakemake's records came with the copy)
    edited = yaml.safe_load((wd / "run.yaml").read_text())
    edited["segmentation"] = {**edited["segmentation"], "min_cell_area": 61}
    (wd / "edited.yaml").write_text(yaml.safe_dump(edited))
    jobs = planned_jobs(snakemake(wd, "-n", "tiles", "--configfile", "edited.yaml"))
    assert {rule for rule, _ in jobs} == {"segment_shard", "measure_shard", "tiles_shard", "tiles"}


@pytest.mark.slow
def test_full_workflow_on_synthetic_data_trains_and_predicts(upstream_2021, tmp_path):
    from conftest import assert_upstream_reused, tiny_model

    synth_data = upstream_2021.data
    models = [
        tiny_model(folds=[0, 1], features=True, embeddings=True),  # a hybrid: tiles + feature rows
        {
            "name": "img",
            "level": "image",
            "arch": "test_resnet",
            "input_size": 32,
            "epochs": 1,
            "batch_size": 2,
            "num_workers": 0,
            "folds": [0, 1],
        },
    ]  # both levels feed the tables
    wd, cfg = upstream_2021.fork(
        tmp_path,
        splits={"n_folds": 3, "min_combination": 1},
        models=models,
        evaluation={"truth_dir": str(synth_data / "truth")},
        report={"umap_cells": 400},
        h5ad={"umap_cells": 400},
    )
    out = snakemake(wd, "--cores", "2", "--configfile", "run.yaml")
    assert "steps (100%) done" in out
    assert_upstream_reused(out)
    res = wd / "results"
    import pandas as pd

    assert (res / "splits.parquet").is_file()
    for fold in (0, 1):
        assert (res / "models" / "tiny" / f"fold{fold}" / "model.pt").is_file()
    preds = sorted((res / "predictions" / "tiny").glob("*.parquet"))
    cells = sorted((res / "cells").glob("*.parquet"))
    assert [p.name for p in preds] == [p.name for p in cells]
    for p, c in zip(preds, cells):
        assert len(pd.read_parquet(p)) == len(pd.read_parquet(c))
    assert planned_jobs(snakemake(wd, "-n", "--configfile", "run.yaml")) == []
    # each rule's params are its stage's keys: a report option reruns only the report, an evaluation
    # option evaluate and report (not the tables or the baseline), a merge option everything after it
    for section, key, value, expected in (
        ("report", "gallery_per_class", 3, {"report", "all"}),
        ("evaluation", "max_class_share", 0.7, {"evaluate", "report", "all"}),
        (
            "merge",
            "cell_weight",
            0.4,
            {"merge", "h5ad", "spatialdata_shard", "submit", "baseline", "evaluate", "report", "all"},
        ),
    ):
        edited = {**cfg, section: {**cfg.get(section, {}), key: value}}
        (wd / "edited.yaml").write_text(yaml.safe_dump(edited))
        jobs = {rule for rule, _ in planned_jobs(snakemake(wd, "-n", "--configfile", "edited.yaml"))}
        assert jobs == expected, (section, jobs)
    # merged tables: every cell of every shard, every image of the plan, truth attached
    import pyarrow.parquet as pq

    from hpa_batch.results.merge import images_schema

    cells_t = pd.read_parquet(res / "tables" / "cells.parquet")
    images_t = pd.read_parquet(res / "tables" / "images.parquet")
    assert len(cells_t) == sum(len(pd.read_parquet(c)) for c in cells)
    import anndata

    adata = anndata.read_h5ad(res / "tables" / "cells.h5ad")  # the same cells, as AnnData
    assert list(adata.obs_names) == [f"{i}_{c}" for i, c in zip(cells_t["image_id"], cells_t["cell_id"])]
    assert np.allclose(adata.obsm["fused_prob"], cells_t[[f"fused_prob_{k}" for k in range(19)]].to_numpy())
    from hpa_batch.core.tables import read_classes

    for table in ("cells", "images"):  # every prob_k column is named in the table's metadata
        assert read_classes(res / "tables" / f"{table}.parquet") == list(adata.uns["classes"])
    emb = adata.obsm["X_tiny"]  # the cell model's embeddings, what scanpy's neighbours and UMAP take
    assert emb.shape[0] == len(cells_t) and emb.shape[1] > 8 and np.isfinite(emb).all() and emb.std(0).max() > 0
    assert list(adata.obs["instance_id"]) == list(cells_t["cell_id"])  # SpatialData's link to the labels
    from hpa_batch.results.spatialdata import store_problem

    spatial = sorted((res / "spatialdata").glob("*.zarr"))  # one SpatialData store per shard, links only
    assert [p.stem for p in spatial] == sorted({p.stem for p in cells})
    assert all(store_problem(p, deep=True) is None for p in spatial)
    # Snakemake tracks each store by its zarr.json: no foreign .snakemake_timestamp inside for spatialdata
    assert not [p for p in spatial if (p / ".snakemake_timestamp").exists()]
    assert adata.obsm["X_umap"].shape == (len(cells_t), 2) and adata.uns["umap"]["key"] == "X_tiny"
    assert pq.read_schema(res / "tables" / "images.parquet").equals(images_schema(19), check_metadata=False)
    assert sorted(images_t["image_id"]) == sorted(pd.read_csv(synth_data / "train.csv")["ID"])
    image_preds = pd.concat([pd.read_parquet(p) for p in (res / "predictions" / "img").glob("*.parquet")])
    joined = images_t.merge(image_preds, on="image_id")
    assert len(joined) == 6 and np.allclose(
        joined[[f"image_prob_{k}" for k in range(19)]].to_numpy(), joined[[f"prob_{k}" for k in range(19)]].to_numpy()
    )
    fused = cells_t[[f"fused_prob_{k}" for k in range(19)]].to_numpy()
    prod = (
        cells_t[[f"cell_prob_{k}" for k in range(19)]].to_numpy()
        * cells_t[[f"image_prob_{k}" for k in range(19)]].to_numpy()
    )
    assert np.allclose(fused[:, :18], prod[:, :18])  # default fusion: cell x image (18 = Negative: derived)
    sub = pd.read_csv(res / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    assert len(sub) == len(images_t) and (sub["ImageWidth"] == 384).all()
    assert sub["PredictionString"].str.split().map(len).sum() == 3 * 19 * len(cells_t)
    import json

    metrics = json.loads((res / "metrics.json").read_text())
    assert 0 <= metrics["cell_map"] <= 1 and metrics["iou_threshold"] == 0.6 and metrics["images"] == 6
    # duckdb and polars read the tables by class name and metrics.json as strict JSON (TABLES.md's recipes)
    assert "19 classes named in SQL, metrics.json strict" in scverse_check("tables", res)
    # one source of confidences: scoring the submission file alone gives the metrics' cell mAP
    from hpa_batch.core.labels import CATALOGS
    from hpa_batch.results.evaluate import score_submission

    sub_map, _ = score_submission(res / "submission.csv", synth_data / "truth", CATALOGS["hpa2021"])
    assert sub_map == pytest.approx(metrics["cell_map"], abs=1e-4)
    # Negative is derived: a cell is Negative exactly when it has no other predicted class
    negative = cells_t["predicted"].map(lambda s: "18" in s.split("|"))
    others = cells_t["predicted"].map(lambda s: any(t != "18" for t in s.split("|") if t))
    assert (negative == ~others).all()
    assert ((cells_t["fused_prob_18"] >= 0.5) == negative).all()
    assert set(metrics["cell_map_per_cell_line"]) == set(pd.read_csv(synth_data / "train.csv")["Cell_line"])
    # the baseline is scored the same way; the report shows every section and renders in a browser
    assert set(metrics["baseline"]) == {"all"} and metrics["held_out_images"] == 0  # folds 0 and 1 trained
    assert 0 <= metrics["baseline"]["all"]["cell_map"] <= 1
    assert len(pd.read_parquet(res / "baseline" / "cells.parquet")) == len(cells_t)
    check_report(res / "report.html", tmp_path / "report.png")
    check_snakemake_report(wd, tmp_path / "snakemake-report.zip", res)
    check_a_damaged_table_is_refused_then_repaired(wd, res)


def check_a_damaged_table_is_refused_then_repaired(wd, res):
    """20 kB of random bytes over the merged cells table: Snakemake is refused before any job is
    scheduled (so the good h5ad and submission are not deleted by a rerun that fails on the table),
    ``repair`` removes that table alone and the command it prints redoes it and what follows."""
    import shlex

    table = res / "tables" / "cells.parquet"
    kept = {p: p.read_bytes() for p in (res / "tables" / "cells.h5ad", res / "submission.csv")}
    table.write_bytes(np.random.default_rng(0).bytes(20_000))
    out = snakemake(wd, "--cores", "2", "--configfile", "run.yaml", check=False)
    named = "results/tables/cells.parquet: not a readable parquet table"  # results_dir as configured
    assert named in out and "no job was started" in out and "run: hpa-batch repair results" in out, out[-3000:]
    assert planned_jobs(out) == [] and all(p.read_bytes() == b for p, b in kept.items())
    repair = ["hpa-batch", "repair", "results"]  # as the refusal says, in the working directory
    fix = subprocess.run(repair, capture_output=True, text=True, env=tool_env(), check=True, cwd=wd)
    assert "removed results/tables/cells.parquet: not a readable parquet table" in fix.stdout
    assert not table.exists()
    command = next(ln.strip() for ln in fix.stdout.splitlines() if ln.strip().startswith("snakemake "))
    assert command == "snakemake --cores all results/tables/cells.parquet all --configfile run.yaml"
    rules = {rule for rule, _ in planned_jobs(snakemake(wd, *shlex.split(command)[1:]))}  # run as printed
    assert {"merge", "h5ad", "submit", "evaluate", "report"} <= rules and "train_model" not in rules
    assert len(pd_read(table)) and planned_jobs(snakemake(wd, "-n", "--configfile", "run.yaml")) == []


def pd_read(path):
    import pandas as pd

    return pd.read_parquet(path)


def check_snakemake_report(wd, out, res):
    """Snakemake's own report carries the marked outputs, with their captions and categories."""
    import zipfile

    snakemake(wd, "--configfile", "run.yaml", "--report", str(out))
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        text = "".join(z.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for produced in ("report.html", "metrics.json", "rejected.tsv", "history.csv", "submission.csv"):
        assert any(n.endswith(produced) for n in names), (produced, names[:40])
    figures = sorted(p.name for p in (res / "report_figures").glob("*.png"))
    assert {"training-0.png", "per-class-0.png"} <= set(figures), figures
    assert all(any(n.endswith(f) for n in names) for f in figures)
    for words in ("Quality control", "Training", "Figures", "Metrics", "prediction guard", "segmentation_qc.doubtful"):
        assert words in text, words


@pytest.mark.slow
def test_image_level_only_workflow_runs_every_stage(upstream_2018, tmp_path):
    """The 2018 task as distributed (28 classes; 8-bit PNGs; train.csv Id,Target with no cell-line
    column) with no cell-level model (study 003's small CNN at image level): shards unknown-000k,
    tables, the 2018 submission (Id,Predicted), baseline, metrics and report come out; every cell
    carries its image's probabilities; the submission re-scores to the metrics' image macro-F1."""
    from conftest import assert_upstream_reused, synth_config

    from hpa_batch.synth import synthesize_dataset

    data = upstream_2018.data
    assert (data / "train.csv").read_text().startswith("Id,Target\n")
    model = {
        "name": "img",
        "level": "image",
        "arch": "hpa_small_cnn",
        "input_size": 32,
        "epochs": 1,
        "batch_size": 2,
        "num_workers": 0,
        "folds": [0],
    }
    wd, _ = upstream_2018.fork(
        tmp_path,
        splits={"n_folds": 3, "min_combination": 1},
        models=[model],
        evaluation={"truth_dir": str(data / "truth")},
    )
    out = snakemake(wd, "--cores", "2", "--configfile", "run.yaml")
    assert "steps (100%) done" in out
    assert_upstream_reused(out)
    import json

    import pandas as pd

    res = wd / "results"
    images_t = pd.read_parquet(res / "tables" / "images.parquet")
    assert sorted(set(images_t["shard"])) == ["unknown-0000", "unknown-0001"] and len(images_t) == 6
    assert not images_t["rejected"].any()
    manifest = pd.read_parquet(res / "manifest" / "unknown-0000.parquet")
    assert set(manifest["source_dtype"]) == {"uint8"}
    cells_t = pd.read_parquet(res / "tables" / "cells.parquet")
    assert len(pd.read_parquet(res / "predictions" / "img" / f"{images_t.shard.iloc[0]}.parquet")) > 0
    probs = [f"image_prob_{k}" for k in range(28)]
    assert images_t[probs].notna().all().all() and (images_t[probs].to_numpy() > 0).any()
    joined = cells_t.merge(images_t[["image_id", *probs]], on="image_id", suffixes=("", "_img"))
    assert np.allclose(joined[probs].to_numpy(), joined[[f"{p}_img" for p in probs]].to_numpy())
    # no cell model: the cells' confidences ARE their image's (not cell 0 x image = 0), cell_prob is NaN
    fused = [f"fused_prob_{k}" for k in range(28)]
    assert np.allclose(joined[fused].to_numpy(), joined[[f"{p}_img" for p in probs]].to_numpy())
    assert cells_t["cell_prob_0"].isna().all() and images_t.loc[~images_t["rejected"], "cells_max_prob_0"].isna().all()
    from hpa_batch.core.metrics import macro_f1
    from hpa_batch.models.split import multi_hot
    from hpa_batch.results.submit import read_image_submission

    sub = read_image_submission(res / "submission.csv")
    assert sorted(sub) == sorted(images_t["image_id"])
    metrics = json.loads((res / "metrics.json").read_text())
    assert 0 <= metrics["image_map"] <= 1 and 0 <= metrics["cell_map"] <= 1
    ok = images_t[~images_t["rejected"]]
    y = multi_hot([list(v) for v in ok["image_labels"]], 28)
    pred = multi_hot([sub[i] for i in ok["image_id"]], 28).astype(float)
    assert macro_f1(y, pred, 0.5) == pytest.approx(metrics["image_macro_f1"])
    assert (res / "report.html").stat().st_size > 10_000

    # an unlabelled test set (Id only, label_column: null) predicted with the model trained above
    test = synthesize_dataset(
        tmp_path / "test2018", 4, seed=13, sizes=(384,), catalog="hpa2018", depth=8, table="hpa2018"
    ).out
    ids = pd.read_csv(test / "train.csv")["Id"]
    ids.to_frame().to_csv(test / "test.csv", index=False)
    tcfg = synth_config(tmp_path / "testrun", test)
    tcfg["dataset"].update(
        {"id_column": "Id", "label_column": None, "cell_line_column": None, "metadata": str(test / "test.csv")}
    )
    tcfg["labels"] = {"catalog": "hpa2018"}
    tcfg["models"] = [{"name": "img", "level": "image", "trained": str(res / "models" / "img")}]
    (wd / "test.yaml").write_text(yaml.safe_dump(tcfg))
    jobs = {rule for rule, _ in planned_jobs(snakemake(wd, "-n", "--configfile", "test.yaml"))}
    assert "predict_shard" in jobs and not jobs & {"train_model", "baseline"}
    snakemake(wd, "--cores", "2", "--configfile", "test.yaml")
    tres = tmp_path / "testrun" / "results"
    assert sorted(read_image_submission(tres / "submission.csv")) == sorted(ids)
    tmetrics = json.loads((tres / "metrics.json").read_text())
    assert "label_column: null" in tmetrics["skipped"] and tmetrics["images"] == 4 and "image_map" not in tmetrics
    assert "nothing is scored" in (tres / "report.html").read_text()
    timages = pd.read_parquet(tres / "tables" / "images.parquet")
    assert timages[probs].notna().all().all() and not (tres / "models").exists()


def check_report(report, png):
    """Every section is there with its figures; headless Chromium renders the page (CI requires it)."""
    import os
    import re

    from PIL import Image

    from hpa_batch.results.report import SECTIONS, find_browser, screenshot

    doc = report.read_text()
    assert re.findall(r'<section id="([a-z-]+)">', doc) == list(SECTIONS)
    for sid in ("labels", "training", "per-class", "confusion", "segmentation", "gallery", "umap"):
        body = doc.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]
        assert "data:image/png;base64," in body, sid
    assert "baseline, all images" in doc and "git revision" in doc and "snakemake" in doc
    if find_browser() is None:
        if os.environ.get("HPA_BATCH_REQUIRE_BROWSER"):
            pytest.fail("HPA_BATCH_REQUIRE_BROWSER is set but no headless Chromium was found")
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")
    img = np.asarray(Image.open(screenshot(report, png)).convert("RGB"))
    assert img.shape[1] == 1200 and img.shape[0] > 2000  # the whole page, cropped below its content
    assert (img.std(axis=(0, 1)) > 20).all()  # not a blank or single-colour page
    blue = (img[..., 2] > 150) & (img[..., 0] < 100)
    assert blue.mean() > 0.001  # the composites' nuclei (blue) made it into the rendered page


#: A folder name a shell would split and run: a space, quotes and ``;touch``.
HOSTILE = "res 'q\" x;touch INJECTED;y"


@pytest.mark.slow
def test_paths_with_spaces_quotes_and_semicolons_run_every_rule_and_inject_nothing(upstream_2021, tmp_path):
    """Every rule's shell line quotes what it interpolates: the whole workflow (every rule forced, the
    stores' images kept) runs from a checkout path and results / logs folders holding a space, quotes
    and ``;touch INJECTED;``, and no ``INJECTED`` file appears anywhere."""
    from conftest import tiny_model

    checkout = tmp_path / "check out 'it';now"
    wd, cfg = upstream_2021.fork(checkout, splits={"n_folds": 3, "min_combination": 1}, models=[tiny_model()])
    (wd / "results").rename(wd / HOSTILE)
    cfg = {**cfg, "results_dir": HOSTILE, "logs_dir": f"logs {HOSTILE}"}
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "--cores", "2", "--forceall", "--configfile", "run.yaml")
    ran = {rule for rule, _ in planned_jobs(out)}
    rules = {"manifest", "convert_shard", "qc", "segment_shard", "measure_shard", "tiles_shard", "split"}
    rules |= {"train_model", "predict_shard", "merge", "h5ad", "submit", "baseline", "evaluate", "report"}
    assert rules <= ran, sorted(rules - ran)
    assert not list(tmp_path.rglob("INJECTED")), "a shell line ran part of a path as a command"
    res = wd / HOSTILE
    for name in ("submission.csv", "metrics.json", "report.html", "tables/cells.h5ad"):
        assert (res / name).is_file(), name
    assert (wd / f"logs {HOSTILE}" / "merge.log").is_file()


def test_a_results_dir_with_a_control_character_is_refused(upstream_2021, tmp_path):
    """A newline in a directory key would forge lines of every log and summary: the schema refuses it."""
    wd, cfg = upstream_2021.fork(tmp_path)
    (wd / "bad.yaml").write_text(yaml.safe_dump({**cfg, "results_dir": "res\nults"}))
    out = snakemake(wd, "-n", "--configfile", "bad.yaml", check=False)
    assert "results_dir" in out and "does not match" in out, out[-2000:]


@pytest.mark.slow
def test_an_image_missing_an_array_is_repaired_in_one_pass(upstream_2021, tmp_path):
    """A pyramid level removed from one image of a copied project: one ``repair`` removes that image and
    the stage files claiming it done; the printed command (run where the project now is, with its config
    file) is accepted as printed, and redoing the shard's stages gives a store that validates deep."""
    import shlex
    import shutil

    wd, _ = upstream_2021.fork(tmp_path)
    store = min((wd / "results" / "zarr").glob("*.zarr"))
    image = max(image_dirs(store))
    shutil.rmtree(image / "s1")
    fix = subprocess.run(
        ["hpa-batch", "repair", "results"], check=False, capture_output=True, text=True, env=tool_env(), cwd=wd
    )
    assert fix.returncode == 0 and f"removed image {image.name}" in fix.stdout, fix.stdout + fix.stderr
    command = next(ln.strip() for ln in fix.stdout.splitlines() if ln.strip().startswith("snakemake "))
    shard = store.name.removesuffix(".zarr")
    assert command == (
        f"snakemake --cores all results/zarr/{shard}.convert.json results/zarr/{shard}.segment.json all "
        "--configfile run.yaml"
    )
    words = shlex.split(command)[1:]
    planned = planned_jobs(snakemake(wd, "-n", *words))  # accepted as printed: not refused
    assert ("convert_shard", shard) in planned and ("segment_shard", shard) in planned
    target = words.index("all", 2)  # the target `all` (not `--cores all`): its upstream part, `tiles`
    snakemake(wd, *words[:target], "tiles", *words[target + 1 :])
    check = subprocess.run(
        ["hpa-batch", "validate", "--deep", str(store)], check=False, capture_output=True, text=True, env=tool_env()
    )
    assert check.returncode == 0 and image.is_dir(), check.stdout
