"""Training and inference: loader plans, model factory, checkpoints, bit-exact resume, signals,
a tiny end-to-end run on the synthetic tiles."""

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tool_env

from hpa_batch.config import load_config
from hpa_batch.core.labels import CATALOGS
from hpa_batch.models.factory import WeightsUnavailable, create_model
from hpa_batch.models.loader import build_index, epoch_plan
from hpa_batch.models.split import make_splits, write_splits
from hpa_batch.spec import AugmentSpec, RefineSpec

TINY = {
    "name": "tiny",
    "arch": "test_resnet",
    "input_size": 32,
    "epochs": 2,
    "batch_size": 16,
    "num_workers": 0,
    "schedule": {"kind": "seed"},
    "folds": [0],
    "early_stopping_patience": 0,
}


@pytest.fixture(scope="module")
def trainable(segmented, tmp_path_factory):
    """Config + splits over the segmented synthetic shards, for a tiny model."""
    root = tmp_path_factory.mktemp("train")
    cfg = yaml.safe_load(segmented["config"].read_text())
    cfg["splits"] = {"n_folds": 3, "min_combination": 1}
    cfg["models"] = [TINY]
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c = load_config(path)
    manifests = [c.results_dir / "manifest" / f"{s}.parquet" for s in segmented["shards"]]
    splits = make_splits(manifests, c.catalog, 3, 0, 1)
    write_splits(splits, root / "splits.parquet", c.catalog)
    stores = [c.results_dir / "tiles" / f"{s}.zarr" for s in segmented["shards"]]
    return {"root": root, "config": path, "splits": root / "splits.parquet", "stores": stores, "cfg": c}


def run_train(t, out, env_extra=None, check=True, config=None):
    cmd = [
        sys.executable,
        "-m",
        "hpa_batch.cli",
        "train",
        "--config",
        str(config or t["config"]),
        "--model",
        "tiny",
        "--fold",
        "0",
        "--splits",
        str(t["splits"]),
        "--out",
        str(out),
        "--tiles",
        *map(str, t["stores"]),
    ]
    env = {**tool_env(), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_epoch_plan_covers_rows_once_and_ranks_are_disjoint(trainable):
    splits = pd.read_parquet(trainable["splits"])
    index = build_index(trainable["stores"], splits, "cell", 19)
    pos = np.arange(len(index))
    plan = epoch_plan(index, pos, 8, seed=0, epoch=1, buffer_chunks=2)
    flat = np.concatenate([b for g in plan for b in g])
    assert sorted(flat.tolist()) == pos.tolist() and flat.tolist() != pos.tolist()
    assert all(len(b) >= 2 for g in plan for b in g)
    again = np.concatenate([b for g in epoch_plan(index, pos, 8, seed=0, epoch=1, buffer_chunks=2) for b in g])
    assert np.array_equal(flat, again)
    r0 = [b for g in epoch_plan(index, pos, 8, seed=0, epoch=1, buffer_chunks=1, rank=0, world=2) for b in g]
    r1 = [b for g in epoch_plan(index, pos, 8, seed=0, epoch=1, buffer_chunks=1, rank=1, world=2) for b in g]
    assert len(r0) == len(r1) and not set(np.concatenate(r0)) & set(np.concatenate(r1))
    # weak labels: a tile carries its image's labels
    row = splits.set_index("image_id").loc[index.image_id[0]]
    assert np.flatnonzero(index.y[0]).tolist() == sorted(row["labels"])


def test_pretrained_weights_from_a_local_file_only(tmp_path):
    import timm

    ref = timm.create_model("resnet18", num_classes=10)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    m = create_model("resnet18", ["red", "green", "blue", "yellow"], 19, str(tmp_path / "resnet18.pth"))
    w, w0 = m.conv1.weight.detach(), ref.conv1.weight.detach()
    assert torch.allclose(w[:, :3], w0 * 3 / 4) and torch.allclose(w[:, 3], w0[:, 0] * 3 / 4)
    assert torch.equal(m.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    assert m.get_classifier().out_features == 19
    with pytest.raises(WeightsUnavailable, match="no downloads"):
        create_model("resnet18", ["green"], 19, str(tmp_path / "missing.pth"))


def test_tiny_training_end_to_end_and_predict(trainable, tmp_path):
    out = tmp_path / "fold0"
    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [{**TINY, "log_every_s": 0}]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_train(trainable, out, config=path)
    steps = [ln for ln in proc.stderr.splitlines() if "epoch 1/2: step " in ln]
    assert steps and all("loss " in ln and " img/s, eta " in ln for ln in steps), proc.stderr[-2000:]
    assert re.match(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} INFO", steps[0])  # dated log lines
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns[:4]) == ["epoch", "lr", "train_loss", "val_loss"]
    assert {"val_macro_f1", "val_map", "val_auc"} <= set(history.columns) and len(history) == 2
    assert history["lr"].tolist() == [0.005, pytest.approx(0.0037)]  # Table 4 schedule
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["thresholds"].shape == (19,) and ckpt["spec"]["arch"] == "test_resnet"
    assert len(json.loads((out / "thresholds.json").read_text())["thresholds"]) == 19
    from hpa_batch.models.predict import predict_shard

    pred_path = tmp_path / "pred.parquet"
    n = predict_shard([out / "model.pt"], trainable["stores"][0], pred_path, CATALOGS["hpa2021"], "tiny")
    pred = pd.read_parquet(pred_path)
    assert len(pred) == n > 0 and {f"prob_{k}" for k in range(19)} <= set(pred.columns)
    probs = pred[[f"prob_{k}" for k in range(19)]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    hits = probs >= ckpt["thresholds"].numpy()
    assert (pred["n_predicted"].to_numpy() == hits.sum(1)).all()
    from hpa_batch.models.predict import predict_shard

    # checkpoints of another catalog or level (e.g. a wrong trained: folder) are refused by name
    with pytest.raises(ValueError, match="trained for label catalog 'hpa2021'"):
        predict_shard([out / "model.pt"], trainable["stores"][0], tmp_path / "x.parquet", CATALOGS["hpa2018"], "t")
    with pytest.raises(ValueError, match="is a cell-level model; the config declares level: image"):
        predict_shard(
            [out / "model.pt"], trainable["stores"][0], tmp_path / "x.parquet", CATALOGS["hpa2021"], "t", level="image"
        )


def assert_uses_own_feature_row(models, x, feats):
    """Changing row 0's features changes row 0's probabilities and no other row's."""
    from hpa_batch.models.predict import run_models

    p, _ = run_models(models, x, False, False, feats)
    changed = feats.clone()
    changed[0] = changed[0] * 3 + 5
    q, _ = run_models(models, x, False, False, changed)
    assert not np.allclose(p[0], q[0]) and np.allclose(p[1:], q[1:], atol=1e-6)


def test_hybrid_model_learns_from_features_and_predicts_with_them(trainable, tmp_path):
    """A hybrid (features: true) standardises with the training cells' statistics, saves them in its
    weights and uses each cell's own feature row at prediction: changing a row changes that cell only."""
    from hpa_batch.cells.measure import FEATURE_COLUMNS
    from hpa_batch.models.factory import HybridNet
    from hpa_batch.models.predict import load_folds, run_models

    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [{**TINY, "features": True}]
    path = tmp_path / "hybrid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "fold0"
    run_train(trainable, out, config=path)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    f = len(FEATURE_COLUMNS)
    assert ckpt["spec"]["features"] and ckpt["model"]["feature_mean"].shape == (f,)
    assert ckpt["model"]["feature_std"].min() > 0 and ckpt["model"]["feature_mean"].abs().sum() > 0
    folds = load_folds([out / "model.pt"], torch.device("cpu"))
    models, spec = folds.models, folds.spec
    assert isinstance(models[0], HybridNet) and spec.features
    import zarr

    g = zarr.open_group(trainable["stores"][0], mode="r")
    x = torch.from_numpy(g["cells"][:4]).float() / 255
    feats = torch.from_numpy(g["features"][:4])
    p, e = run_models(models, x, False, True, feats)
    assert p.shape == (4, 19) and e.shape == (4, models[0].num_features)
    assert_uses_own_feature_row(models, x, feats)
    from hpa_batch.models.predict import predict_shard

    n = predict_shard([out / "model.pt"], trainable["stores"][0], tmp_path / "p.parquet", CATALOGS["hpa2021"], "h")
    assert n == g["cells"].shape[0]


def test_image_hybrid_with_study_002_weights_and_mixed_channels(trainable, tmp_path):
    """An image-level hybrid (study 002: the image's ten features joined to the embedding, weighted)
    with study 001's channel combinations (red+blue grey, green twice) trains and predicts: the
    weights are folded into the stored scale, each image's own feature row is used."""
    import zarr

    from hpa_batch.cells.measure import IMAGE_FEATURE_COLUMNS, STUDY_002_FEATURE_WEIGHTS
    from hpa_batch.models.predict import load_folds, predict_shard
    from hpa_batch.models.transforms import channel_map, prepare

    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [
        {
            **TINY,
            "level": "image",
            "features": True,
            "batch_size": 2,
            "input_size": 32,
            "feature_weights": list(STUDY_002_FEATURE_WEIGHTS),
            "channels": ["red+blue", "green", "green"],
        }
    ]
    path = tmp_path / "image_hybrid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "fold0"
    run_train(trainable, out, config=path)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    f = len(IMAGE_FEATURE_COLUMNS)
    assert ckpt["model"]["feature_mean"].shape == (f,) and ckpt["model"]["backbone.conv1.0.weight"].shape[1] == 3
    g = zarr.open_group(trainable["stores"][0], mode="r")
    rows = g["image_features"][:]
    assert rows.shape == (g["images"].shape[0], f) and np.isfinite(rows).all() and (rows.std(0) > 0).sum() >= 5
    folds = load_folds([out / "model.pt"], torch.device("cpu"))
    models, spec = folds.models, folds.spec
    cmap = channel_map(spec.channels)
    assert spec.features and cmap.gather == [0, 1, 2] and cmap.mix.shape == (3, 3)
    x = prepare(torch.from_numpy(g["images"][:2][:, cmap.gather]), 32, cmap.mix)
    feats = torch.from_numpy(rows[:2])
    assert_uses_own_feature_row(models, x, feats)
    n = predict_shard([out / "model.pt"], trainable["stores"][0], tmp_path / "p.parquet", CATALOGS["hpa2021"], "h")
    assert n == g["images"].shape[0]


def test_feature_weights_must_match_the_features(trainable, tmp_path):
    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [{**TINY, "level": "image", "features": True, "feature_weights": [1.0, 2.0]}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_train(trainable, tmp_path / "bad", config=path, check=False)
    assert proc.returncode != 0 and "feature_weights: need 10 positive numbers" in proc.stderr


def test_checkpoint_round_trip(trainable, tmp_path):
    from hpa_batch.models.train import Trainer

    splits = pd.read_parquet(trainable["splits"])
    spec = trainable["cfg"].models[0]
    a = Trainer(spec, 0, trainable["stores"], splits, CATALOGS["hpa2021"], out=tmp_path)
    a.train_epoch(0)
    a.state.epoch = 1
    a.save_state()
    expected_rand = torch.rand(3)
    b = Trainer(spec, 0, trainable["stores"], splits, CATALOGS["hpa2021"], out=tmp_path)
    assert b.load_state()
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(v, w), k
    assert b.state == a.state and torch.equal(torch.rand(3), expected_rand)  # RNG restored
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert all(torch.equal(sa["state"][k]["exp_avg"], sb["state"][k]["exp_avg"]) for k in sa["state"])
    raw = torch.load(tmp_path / "state" / "last.pt", weights_only=True)  # loads with weights_only
    assert raw["run"]["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"dropout": 0.0, "augment": {"flips": False, "rot90": False, "brightness": 0.0}},
        {"dropout": 0.3},
        {"drop_path": 0.2},
        {"augment": {"flips": True, "rot90": True, "brightness": 0.3, "only_rare_below": 1000}},
    ],
    ids=["plain", "dropout", "drop_path", "augment"],
)
def test_interrupted_training_resumes_bit_exact(trainable, tmp_path, options):
    """A stop mid-epoch and a resume give the uninterrupted run's weights bit for bit, with every option
    that draws random numbers: dropout and stochastic depth (masks from torch's global generator: nothing
    else may draw from it on a resume) and augmentation (refinement: the test below; DDP: further down)."""
    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [{**TINY, **options}]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_train(trainable, tmp_path / "straight", config=path)
    stopped = run_train(trainable, tmp_path / "resumed", {"HPA_BATCH_STOP_AT_STEP": "3"}, check=False, config=path)
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert (tmp_path / "resumed" / "state" / "last.pt").is_file()
    assert not (tmp_path / "resumed" / "model.pt").exists()
    run_train(trainable, tmp_path / "resumed", config=path)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["thresholds"], b["thresholds"])
    la = torch.load(tmp_path / "straight" / "state" / "last.pt", weights_only=True)
    lb = torch.load(tmp_path / "resumed" / "state" / "last.pt", weights_only=True)
    for k in la["model"]:
        assert torch.equal(la["model"][k], lb["model"][k]), k  # last weights too
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns="seconds"),
        pd.read_csv(tmp_path / "resumed" / "history.csv").drop(columns="seconds"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_resume_around_label_refinement_is_bit_exact(trainable, tmp_path, when):
    """A stop before the refinement refines with the same best weights (read back from best.pt); a stop
    after it resumes with the refined targets from the checkpoint."""
    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"][0].update(epochs=3, refine_labels={"after_epochs": 1, "keep_ratio": 0.6})
    config = tmp_path / "refine.yaml"
    config.write_text(yaml.safe_dump(cfg))
    c = load_config(config)
    index = build_index(trainable["stores"], pd.read_parquet(trainable["splits"]), "cell", 19)
    from hpa_batch.models.train import training_positions

    train_pos, _ = training_positions(index, 0, c.models[0], None)
    per_epoch = sum(
        len(g) for g in epoch_plan(index, train_pos, 16, seed=0, epoch=0, buffer_chunks=c.models[0].buffer_chunks)
    )
    run_train(trainable, tmp_path / "straight", config=config)
    step = 3 if when == "before" else per_epoch + 2
    stopped = run_train(
        trainable, tmp_path / "resumed", {"HPA_BATCH_STOP_AT_STEP": str(step)}, check=False, config=config
    )
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    saved = torch.load(tmp_path / "resumed" / "state" / "last.pt", weights_only=True)
    assert saved["run"]["refined"] == (when == "after") and (saved["targets"] is None) == (when == "before")
    run_train(trainable, tmp_path / "resumed", config=config)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["thresholds"], b["thresholds"])


def test_refine_weak_labels_keeps_each_image_label_on_its_best_cells():
    from hpa_batch.models.train import refine_weak_labels

    # image a: labels {0, 1}, three cells; image b: Negative (class 2) only, two cells
    y = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)
    prob = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.05, 0.02, 0.3], [0.1, 0.0, 0.7], [0.6, 0.0, 0.2]], np.float32)
    ids = np.array(["a", "a", "a", "b", "b"], object)
    out = refine_weak_labels(y, prob, ids, 0.5, negative=2)
    assert out.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]]
    # class 0 of a third image never leaves its top cell, even with tiny probabilities
    one = refine_weak_labels(
        np.array([[1, 0, 0]] * 2, np.float32),
        np.array([[1e-4, 0, 0], [1e-6, 0, 0]], np.float32),
        np.array(["c", "c"], object),
        0.5,
        negative=None,
    )
    assert one.tolist() == [[1, 0, 0], [0, 0, 0]]
    # keep_ratio 1e-9 keeps every weak label (for cells with any probability)
    assert np.array_equal(refine_weak_labels(y[:3], prob[:3], ids[:3], 1e-9, 2), y[:3])


def test_refined_targets_round_trip_through_the_checkpoint(trainable, tmp_path):
    from hpa_batch.models.train import Trainer

    splits = pd.read_parquet(trainable["splits"])
    spec = replace(trainable["cfg"].models[0], refine_labels=RefineSpec(after_epochs=1, keep_ratio=0.5))
    a = Trainer(spec, 0, trainable["stores"], splits, CATALOGS["hpa2021"], out=tmp_path)
    weak = a.index.y.copy()
    a.refine_labels()
    assert a.state.refined and (a.index.y.sum(1) >= 1).all()  # every cell keeps a class or becomes Negative
    assert ((a.index.y > 0) & (weak == 0))[:, :18].sum() == 0  # never a class its image does not have
    a.save_state()
    b = Trainer(spec, 0, trainable["stores"], splits, CATALOGS["hpa2021"], out=tmp_path)
    assert np.array_equal(b.index.y, weak) and b.load_state()
    assert np.array_equal(b.index.y, a.index.y) and torch.equal(b.weights, a.weights)


def test_refinement_uses_the_best_weights_also_after_a_restart(trainable, tmp_path):
    from hpa_batch.models.train import Trainer

    splits = pd.read_parquet(trainable["splits"])
    spec = replace(trainable["cfg"].models[0], refine_labels=RefineSpec(after_epochs=2, keep_ratio=0.5))
    a = Trainer(spec, 0, trainable["stores"], splits, CATALOGS["hpa2021"], out=tmp_path)
    row, prob, y = a.validate(0, a.train_epoch(0))
    assert a._track_best(row, prob, y) and a._best is not None
    a.state.epoch = 1
    a.train_epoch(1)  # the weights move on; the best stays epoch 0's
    a.save_state()
    b = Trainer(spec, 0, trainable["stores"], splits, CATALOGS["hpa2021"], out=tmp_path)
    assert b.load_state() and b._best is None
    from_file = b.best_weights()
    for k, v in a._best.items():
        assert torch.equal(v, from_file[k]), k
    assert any(not torch.equal(v, a.model.state_dict()[k]) for k, v in a._best.items() if v.is_floating_point())


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_requeueable(trainable, tmp_path):
    """The trainer is signalled while it waits after its first epoch's checkpoint (the hold hook: a known
    point, not a race against a long training): it saves after its next step and exits 75."""
    from hpa_batch.models.train import HOLD_ENV

    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"][0]["epochs"] = 3
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "hpa_batch.cli",
        "train",
        "--config",
        str(path),
        "--model",
        "tiny",
        "--fold",
        "0",
        "--splits",
        str(trainable["splits"]),
        "--out",
        str(out),
        "--tiles",
        *map(str, trainable["stores"]),
    ]
    hold = tmp_path / "hold"
    hold.touch()
    env = {**tool_env(), HOLD_ENV: str(hold)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    held = tmp_path / "hold.held"
    deadline = time.monotonic() + 300
    while not held.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # first epoch done and saved; the trainer waits
    assert json.loads(held.read_text()) == {"epoch": 0, "pid": proc.pid}
    first = torch.load(out / "state" / "last.pt", weights_only=True)["run"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 75
    ckpt = torch.load(out / "state" / "last.pt", weights_only=True)
    assert ckpt["run"]["global_step"] > 0 and ckpt["run"]["epoch"] < 3
    assert ckpt["run"]["epoch"] == first["epoch"] == 1 and ckpt["run"]["global_step"] == first["global_step"] + 1


@pytest.fixture(scope="module")
def ddp_straight(trainable, tmp_path_factory):
    """An uninterrupted 2-process DDP training (torchrun, gloo on CPU): its output folder."""
    out = tmp_path_factory.mktemp("ddp") / "straight"
    proc = _torchrun(trainable, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(ddp_straight):
    """torchrun with 2 CPU processes (gloo): both ranks train on disjoint buffers, rank 0 writes."""
    out = ddp_straight
    history = pd.read_csv(out / "history.csv")
    assert (out / "model.pt").is_file() and len(history) == 2
    assert history["train_loss"].notna().all()  # both ranks took training steps (a nan = none)


def test_augment_is_deterministic_and_label_preserving():
    from hpa_batch.models.transforms import augment

    spec = AugmentSpec(flips=True, rot90=True, brightness=0.2, only_rare_below=0)
    x = torch.rand(16, 4, 8, 8)
    a, b = augment(x, spec, 7), augment(x, spec, 7)
    assert torch.equal(a, b) and not torch.equal(a, augment(x, spec, 8))
    off = augment(x, AugmentSpec(flips=False, rot90=False, brightness=0.0, only_rare_below=0), 7)
    assert torch.equal(off, x)
    geo = augment(x, AugmentSpec(flips=True, rot90=True, brightness=0.0, only_rare_below=0), 7)
    for i in range(16):  # every output is one of the 8 dihedral transforms of its input
        views = [torch.rot90(v, k, dims=(-2, -1)) for v in (x[i], x[i].flip(-1)) for k in range(4)]
        assert any(torch.equal(geo[i], v) for v in views)
    only = torch.arange(16) % 2 == 0  # study 001: only samples with a rare class are augmented
    some = augment(x, spec, 7, only)
    assert torch.equal(some[1::2], x[1::2]) and torch.equal(some[0::2], a[0::2])


def test_excluded_images_are_never_trained_or_validated_on():
    """fold -2 (doubtful segmentation) is in neither the training nor the validation rows of any fold."""
    from hpa_batch.models.loader import TileIndex
    from hpa_batch.models.train import training_positions

    fold = np.array([0, 1, -1, -2, 0, -2], np.int8)
    n = len(fold)
    index = TileIndex(
        stores=[],
        array="cells",
        store=np.zeros(n, int),
        row=np.arange(n),
        chunk=np.full(n, 64),
        image_id=np.array([f"i{k}" for k in range(n)], object),
        cell_id=np.arange(n, dtype=np.int32),
        y=np.eye(n, 19, dtype=np.float32),
        fold=fold,
        n_labels=np.ones(n, int),
    )
    spec = replace(load_config(None).models[0], single_label_only=False, negative_oversample=1)
    for k in (0, 1):
        train, val = training_positions(index, k, spec, None)
        assert not set(train) & {3, 5} and not set(val) & {3, 5}
    train, val = training_positions(index, 0, spec, None)
    assert train.tolist() == [1, 2] and val.tolist() == [0, 4]


def test_early_stopping_is_logged_with_its_reason(trainable, tmp_path):
    """lr 0: only BatchNorm statistics move and the validation loss drifts up, so patience 1 stops the
    (deterministic) run early and says why; the summary and thresholds.json record the rule."""
    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [
        {
            **TINY,
            "epochs": 4,
            "early_stopping_patience": 1,
            "selection": "val_loss",
            "schedule": {"kind": "constant", "lr": 0.0},
        }
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "fold0"
    proc = run_train(trainable, out, config=path)
    history = pd.read_csv(out / "history.csv")
    assert len(history) < 4 and history["val_loss"].iloc[-1] >= history["val_loss"].min()
    assert f"stopped at epoch {len(history)} of 4: no val_loss improvement for 1 epochs" in proc.stderr
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["summary"]["stopped_early_at_epoch"] == len(history)
    assert ckpt["summary"]["selection"] == "val_loss"
    rule = json.loads((out / "thresholds.json").read_text())
    assert rule["rule"]["min_positives"] == 10 and len(rule["validation_positives"]) == 19
    assert all(0.05 <= t <= 0.95 for t in rule["thresholds"])
    assert len(rule["reasons"]) == 19 and set(rule["reasons"]) <= {
        "tuned",
        "few positives",
        "below low",
        "clipped high",
    }


def test_an_edited_spec_starts_over_instead_of_resuming(trainable, tmp_path):
    """A finished run's state belongs to its spec: after an edit (which is why Snakemake reruns the
    training) the next run starts from scratch, says so, and keeps the old state aside."""
    out = tmp_path / "fold0"
    run_train(trainable, out)
    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [{**TINY, "epochs": 1}]
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_train(trainable, out, config=path)
    assert "it was written for another model spec or fold: starting over" in proc.stderr
    assert len(pd.read_csv(out / "history.csv")) == 1 and (out / "state" / "last.stale.pt").is_file()
    assert torch.load(out / "model.pt", weights_only=True)["spec"]["epochs"] == 1


@pytest.mark.slow
def test_changed_training_data_starts_over_and_equals_a_fresh_training(trainable, tmp_path):
    """A finished fold's state is not resumed on other data: with other splits (another seed moves
    images between folds) the rerun starts over, says what changed, and ends with the weights of a
    fresh training on the new splits, not the old model."""
    c = trainable["cfg"]
    manifests = sorted((c.results_dir / "manifest").glob("*.parquet"))
    old = pd.read_parquet(trainable["splits"])

    def fold0(frame):
        return set(frame.loc[frame.fold == 0, "image_id"])

    new = next(s for s in (make_splits(manifests, c.catalog, 3, k, 1) for k in range(1, 40)) if fold0(s) != fold0(old))
    write_splits(new, tmp_path / "splits7.parquet", c.catalog)
    reseeded = {**trainable, "splits": tmp_path / "splits7.parquet"}
    out = tmp_path / "fold0"
    run_train(trainable, out)
    before = torch.load(out / "model.pt", weights_only=True)["model"]
    proc = run_train(reseeded, out)
    assert "its training data changed since (folds): starting over" in proc.stderr, proc.stderr[-2000:]
    assert "resuming" not in proc.stderr and (out / "state" / "last.stale.pt").is_file()
    run_train(reseeded, tmp_path / "fresh")
    after = torch.load(out / "model.pt", weights_only=True)["model"]
    fresh = torch.load(tmp_path / "fresh" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(after[k], fresh[k]) for k in fresh)
    assert not all(torch.equal(after[k], before[k]) for k in before if before[k].is_floating_point())
    # the same data again: the finished state is the one to resume (nothing left to train)
    again = run_train(reseeded, out)
    assert "resuming tiny fold 0 at epoch 2" in again.stderr, again.stderr[-2000:]


def test_data_digest_names_what_changed(trainable):
    """Each part of what a training reads has its own digest: another store set, other labels or folds
    are named; the same data gives the same digest."""
    from hpa_batch.models.loader import data_changes, data_digest

    splits = pd.read_parquet(trainable["splits"])
    classes = CATALOGS["hpa2021"].classes

    def digest(stores, frame):
        index = build_index(stores, frame, "cell", 19)
        pos = np.arange(len(index))
        return data_digest(index, pos[index.fold != 0], pos[index.fold == 0], classes)

    base = digest(trainable["stores"], splits)
    assert data_changes(base, digest(trainable["stores"], splits)) == []
    fewer = trainable["stores"][:-1]
    dropped = f"input store(s) {trainable['stores'][-1].name}"
    assert data_changes(base, digest(fewer, splits)) == ["folds", "labels", "tile rows", dropped]
    relabelled = splits.copy()
    relabelled["labels"] = [[(k + 1) % 18 for k in v] for v in relabelled["labels"]]
    assert data_changes(base, digest(trainable["stores"], relabelled)) == ["labels"]
    assert "older hpa-batch" in data_changes(None, base)[0]


def test_small_cnn_of_study_003_is_a_timm_model(tmp_path):
    """`arch: hpa_small_cnn` goes through timm's registry like any timm name: six 3x3 convolutions
    32/64/32/64/32/64, dense 128, a head per class, headless use for hybrids, local weights only."""
    import timm

    m = create_model("hpa_small_cnn", ["red", "green", "blue", "yellow"], 28, dropout=0.5)
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 32, 64, 32, 64] and {c.kernel_size for c in convs} == {(3, 3)}
    assert "hpa_small_cnn" in timm.list_models("hpa_*")
    m.eval()
    x = torch.rand(2, 4, 128, 128)
    assert m(x).shape == (2, 28) and m(torch.rand(2, 4, 96, 96)).shape == (2, 28)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 128) == (2, m.num_features)
    hybrid = create_model("hpa_small_cnn", ["green"], 19, n_features=5)
    hybrid.eval()
    assert hybrid(torch.rand(3, 1, 64, 64), torch.rand(3, 5)).shape == (3, 19)
    torch.save(m.state_dict(), tmp_path / "small.pth")
    again = create_model("hpa_small_cnn", ["red", "green", "blue", "yellow"], 28, str(tmp_path / "small.pth"))
    assert torch.equal(again.state_dict()["features.0.weight"], m.state_dict()["features.0.weight"])
    with pytest.raises(WeightsUnavailable):
        create_model("hpa_small_cnn", ["green"], 19, str(tmp_path / "missing.pth"))


def test_densenet_with_the_head_of_study_001(tmp_path):
    """`hpa_densenet121_study`: timm DenseNet-121 maps -> 1x1 conv to 128 -> dense 512 -> classes; its
    DenseNet part takes local ImageNet-style weights (the classifier of the file is not used)."""
    import timm

    ref = timm.create_model("densenet121", num_classes=10)
    torch.save(ref.state_dict(), tmp_path / "densenet121.pth")
    m = create_model("hpa_densenet121_study", ["red", "green", "blue"], 28, str(tmp_path / "densenet121.pth"), 0.5)
    assert m.reduce[0].out_channels == 128 and m.dense[0].out_features == 512 and m.head.out_features == 28
    assert torch.equal(m.backbone.state_dict()["features.conv0.weight"], ref.state_dict()["features.conv0.weight"])
    m.eval()
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 28)


def test_a_tile_store_without_feature_rows_is_refused_by_name(tmp_path):
    """A hybrid on tiles written before feature rows existed: the error names the store and the fix."""
    import zarr

    from hpa_batch.cells.tiles import TileReader
    from hpa_batch.models.loader import GroupDataset, TileIndex, feature_moments

    store = tmp_path / "old-0000.zarr"
    g = zarr.open_group(store, mode="w", zarr_format=3)
    g.create_array("cells", shape=(4, 4, 8, 8), dtype="uint8", chunks=(2, 4, 8, 8))
    index = TileIndex(
        stores=[store],
        array="cells",
        store=np.zeros(4, int),
        row=np.arange(4),
        chunk=np.full(4, 2),
        image_id=np.array(list("abcd"), object),
        cell_id=np.arange(4, dtype=np.int32),
        y=np.zeros((4, 19), np.float32),
        fold=np.zeros(4, np.int8),
        n_labels=np.ones(4, int),
    )
    with pytest.raises(ValueError, match="old-0000.zarr has no 'features' array: rebuild the tiles"):
        GroupDataset(index, [[np.arange(4)]], [0, 1, 2, 3], features=True)[0]
    with pytest.raises(ValueError, match="old-0000.zarr has no 'features'"):
        feature_moments(index, np.arange(4))
    with pytest.raises(ValueError, match="no 'features' array"):
        TileReader(store).read_features(0, 2)
    assert GroupDataset(index, [[np.arange(4)]], [0, 1, 2, 3])[0]["x"].shape == (4, 4, 8, 8)


def test_a_full_disk_during_a_checkpoint_is_named_and_leaves_the_previous_one(tmp_path):
    """On a 1 MiB tmpfs: the error says "no space left on <folder>", no temporary stays behind and the
    previous checkpoint still loads."""
    import os
    import subprocess

    from hpa_batch.models.checkpoint import atomic_save

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        atomic_save({"w": torch.ones(10)}, disk / "last.pt")
        with pytest.raises(OSError, match=f"no space left on {disk}"):
            atomic_save({"w": torch.ones(1_000_000)}, disk / "last.pt")  # 4 MB
        assert [p.name for p in disk.iterdir()] == ["last.pt"]
        assert torch.equal(torch.load(disk / "last.pt", weights_only=True)["w"], torch.ones(10))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _torchrun(t, out, env_extra=None):
    cmd = ["torchrun", "--standalone", "--nproc-per-node=2", "-m", "hpa_batch.cli", "train"]
    cmd += ["--config", str(t["config"]), "--model", "tiny", "--fold", "0", "--splits", str(t["splits"])]
    cmd += ["--out", str(out), "--device", "cpu", "--tiles", *map(str, t["stores"])]
    env = {**tool_env(), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_ddp_stop_on_one_rank_stops_both_and_the_resume_is_bit_exact(trainable, ddp_straight, tmp_path):
    """The stop hook fires on rank 0 only (as a signal to one process would): both ranks stop at the
    same step (else rank 1 would hang in its next all-reduce), each rank's RNG state is saved, and the
    resumed DDP run ends with the uninterrupted DDP run's weights bit for bit."""
    stopped = _torchrun(trainable, tmp_path / "resumed", {"HPA_BATCH_STOP_AT_STEP": "2"})
    assert stopped.returncode != 0 and "exiting with 75" in stopped.stderr, stopped.stderr[-3000:]
    saved = torch.load(tmp_path / "resumed" / "state" / "last.pt", weights_only=True)
    assert saved["run"]["global_step"] == 2 and len(saved["rng_ranks"]) == 2
    resumed = _torchrun(trainable, tmp_path / "resumed")
    assert resumed.returncode == 0 and "resuming tiny fold 0" in resumed.stderr, resumed.stderr[-3000:]
    a = torch.load(ddp_straight / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_ddp_plan_gives_every_rank_batches_even_with_one_buffer(trainable):
    """A set smaller than one buffer: the ranks share its batches (whole buffers per rank would leave
    rank 1 with nothing, and equal step counts would then make both ranks train zero steps)."""
    index = build_index(trainable["stores"], pd.read_parquet(trainable["splits"]), "cell", 19)
    positions = np.arange(len(index.fold))
    one = epoch_plan(index, positions, 16, seed=0, epoch=0, buffer_chunks=10_000)
    assert len(one) == 1
    plans = [epoch_plan(index, positions, 16, seed=0, epoch=0, buffer_chunks=10_000, rank=r, world=2) for r in (0, 1)]
    steps = [sum(len(g) for g in p) for p in plans]
    assert steps[0] == steps[1] > 0
    seen = [np.concatenate([b for g in p for b in g]) for p in plans]
    assert not set(seen[0]) & set(seen[1])  # disjoint


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_channels_last_and_compile_train_and_predict_on_a_gpu(trainable, tmp_path, amp):
    """The GPU-only paths (mixed precision with its grad scaler, channels_last, torch.compile) on one
    tiny epoch, then inference from the checkpoint: finite losses and probabilities in [0, 1]."""
    from hpa_batch.models.predict import predict_shard

    cfg = yaml.safe_load(trainable["config"].read_text())
    cfg["models"] = [{**TINY, "epochs": 1, "amp": amp, "channels_last": True, "compile": True}]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_train(trainable, tmp_path / "fold0", config=config, env_extra={"CUDA_VISIBLE_DEVICES": "0"})
    history = pd.read_csv(tmp_path / "fold0" / "history.csv")
    assert np.isfinite(history["train_loss"]).all()
    out = tmp_path / "pred.parquet"
    c = load_config(config)
    predict_shard([tmp_path / "fold0" / "model.pt"], trainable["stores"][0], out, c.catalog, "tiny", device="cuda")
    probs = pd.read_parquet(out).filter(like="prob_").to_numpy()
    assert len(probs) and np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
