"""The embed stage and its encoders: shapes, row order and chunks of the tile store, determinism,
batch-size invariance, image crops, and the key maps of the published checkpoints' naming schemes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import zarr
from conftest import assert_upstream_reused, tool_env

from hpa_batch.config import config_from_dict, load_config, load_schema
from hpa_batch.integrity import check_output
from hpa_batch.layout import result
from hpa_batch.models.embed import cell_window, embed_shard
from hpa_batch.models.encoders import ENCODERS, KEY_MAPS, EncoderWeightsError, create_encoder

TINY = {"name": "tiny", "arch": "vit_tiny_patch16_224", "crop": {"size": 32}, "batch_size": 16}


def encoder(**overrides: object) -> object:
    entry = {**TINY, **overrides}
    if "crop" in overrides:
        entry["crop"] = {**TINY["crop"], **overrides["crop"]}  # type: ignore[dict-item]
    return config_from_dict({"encoders": [entry]}).encoders[0]


def run(segmented: dict, tmp_path: Path, name: str = "e", **overrides: object) -> zarr.Group:
    cfg = load_config(segmented["config"])
    shard = segmented["shards"][0]
    out = tmp_path / f"{name}.zarr"
    image = {
        "store": result(cfg.results_dir, "store", shard=shard),
        "cells": result(cfg.results_dir, "cells", shard=shard),
    }
    embed_shard(
        encoder(**overrides),  # type: ignore[arg-type]
        tiles=result(cfg.results_dir, "tiles", shard=shard),
        out=out,
        tiles_cfg=cfg.tiles,
        device="cpu",
        **image,
    )
    return zarr.open_group(out, mode="r")


def test_embeddings_follow_the_tile_store_rows_and_chunks(segmented, tmp_path):
    cfg = load_config(segmented["config"])
    tiles = zarr.open_group(result(cfg.results_dir, "tiles", shard=segmented["shards"][0]), mode="r")
    store = run(segmented, tmp_path)
    emb = store["embedding"]
    n = tiles["cells"].shape[0]
    assert n > 5
    assert emb.shape == (n, 192) and emb.dtype == np.float32
    assert emb.chunks[0] == tiles["cells"].chunks[0]
    assert list(store["cell_image"][:]) == list(tiles["cell_image"][:])
    assert np.array_equal(store["cell_id"][:], tiles["cell_id"][:])
    z = emb[:]
    assert np.isfinite(z).all()
    assert z.std(0).mean() > 1e-3  # cells differ: not one vector for every cell
    stamp = dict(store.attrs)["hpa_batch"]
    assert stamp["complete"] and stamp["random_init"] and stamp["weights_sha256"] is None and stamp["dim"] == 192
    # outside a results tree the store is still known by its stamp: validate checks it as embeddings
    from hpa_batch.cli import main

    assert check_output(tmp_path / "e.zarr", deep=True) is None
    assert main(["validate", "--deep", str(tmp_path / "e.zarr")]) == 0
    chunk = next(p for p in (tmp_path / "e.zarr" / "embedding").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(stamp["content_sha256"]) == 64  # what a head's training records as its data
    original = bytearray(chunk.read_bytes())
    flipped = original.copy()
    flipped[len(flipped) // 2] ^= 0x40  # one bit: it still decompresses, the chunk's CRC32C no longer matches
    chunk.write_bytes(bytes(flipped))
    problem = check_output(tmp_path / "e.zarr", deep=True) or ""
    assert "embedding" in problem and "checksum" in problem, problem
    chunk.write_bytes(bytes(original))
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert "embedding" in (check_output(tmp_path / "e.zarr", deep=True) or "")


def test_embeddings_are_deterministic_and_independent_of_the_batch_size(segmented, tmp_path):
    a = run(segmented, tmp_path, "a")["embedding"][:]
    b = run(segmented, tmp_path, "b")["embedding"][:]
    c = run(segmented, tmp_path, "c", batch_size=3)["embedding"][:]
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-4, rtol=1e-4)
    other_seed = run(segmented, tmp_path, "d", seed=1)["embedding"][:]
    assert not np.allclose(a, other_seed)


def test_image_crops_differ_from_tiles_and_pool_both_tokens(segmented, tmp_path):
    tiles = run(segmented, tmp_path, "t")["embedding"][:]
    crop = {"source": "image", "window": 96, "mask": True, "normalize": "crop_minmax"}
    image = run(segmented, tmp_path, "i", crop=crop, pooling="cls+mean")["embedding"][:]
    assert image.shape == (tiles.shape[0], 2 * 192)
    assert np.isfinite(image).all()
    assert not np.allclose(image[:, :192], tiles)


def test_cell_window_pads_masks_and_scales():
    image = np.full((4, 10, 10), 100, np.uint16)
    image[1] = 300
    cells = np.zeros((10, 10), np.int32)
    cells[2:5, 2:5] = 7
    window = np.array([[0, 200]] * 4, np.float32)
    out = cell_window(image, cells, 7, (-2, -2, 6, 6), window=window, mask=True)
    assert out.shape == (4, 8, 8)
    assert out[:, :2].max() == 0 and out[:, :, :2].max() == 0  # padding outside the image
    assert out[0, 4, 4] == 0.5 and out[1, 4, 4] == 1.0  # the window maps 100 -> 0.5, 300 clipped to 1
    assert out[0, 7, 7] == 0  # outside the cell's mask
    unmasked = cell_window(image, cells, 7, (-2, -2, 6, 6), window=window, mask=False)
    assert unmasked[0, 7, 7] == 0.5


# ----------------------------------------------------------------------------- weights and key maps
def reference(arch: str = "vit_tiny_patch16_224", **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(3)
    return timm.create_model(arch, pretrained=False, num_classes=0, in_chans=4, img_size=32, **kwargs).eval()


def same_output(spec: object, model: torch.nn.Module) -> None:
    enc = create_encoder(spec)  # type: ignore[arg-type]
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model.forward_features(x)[:, 0])


def to_hf(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """timm ViT names -> transformers ViTModel names (the inverse of the hf_vit key map)."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    names = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after"}
    names |= {"mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(depth):
        for part in ("weight", "bias"):
            q, k, v = state[f"blocks.{i}.attn.qkv.{part}"].chunk(3, dim=0)
            for n, t in (("query", q), ("key", k), ("value", v)):
                out[f"encoder.layer.{i}.attention.attention.{n}.{part}"] = t
            for ours, hf in names.items():
                out[f"encoder.layer.{i}.{hf}.{part}"] = state[f"blocks.{i}.{ours}.{part}"]
    return out


def test_dino_checkpoint_loads_through_its_key_map(tmp_path):
    model = reference()
    state = {f"module.backbone.{k}": v for k, v in model.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(3, 3)  # DINO's projection head: left out
    path = tmp_path / "dino.pth"
    torch.save({"teacher": state, "student": {}, "epoch": 100}, path)
    same_output(encoder(weights=str(path), key_map="dino"), model)


def test_dinov2_checkpoint_with_register_tokens_and_block_chunks(tmp_path):
    model = reference(reg_tokens=4, init_values=1e-5)
    state = {}
    for k, v in model.state_dict().items():
        k = "register_tokens" if k == "reg_token" else k
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 6}.{k.split('.', 1)[1]}"  # FSDP chunks keep the global index
        state[f"backbone.{k}"] = v
    state["backbone.mask_token"] = torch.zeros(1, 192)
    state["dino_head.last_layer.weight"] = torch.zeros(2, 2)
    path = tmp_path / "dinov2.pth"
    torch.save({"teacher": state}, path)
    with pytest.raises(EncoderWeightsError, match="model_args"):
        create_encoder(encoder(weights=str(path), key_map="dinov2"))  # type: ignore[arg-type]
    args = {"reg_tokens": 4, "init_values": 1e-5}
    enc = create_encoder(encoder(weights=str(path), key_map="dinov2", model_args=args))  # type: ignore[arg-type]
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.backbone(x), model(x))  # type: ignore[operator]


def test_hf_vit_checkpoint_subcell_style(tmp_path):
    model = reference()
    state = {f"encoder.{k}": v for k, v in to_hf(model.state_dict(), depth=12).items()}
    state["pool_model.attention_pool.weight"] = torch.zeros(4, 4)  # SubCell's pooler: not the ViT's
    path = tmp_path / "subcell.pth"
    torch.save({"model_state_dict": state}, path)
    spec = encoder(weights=str(path), key_map="hf_vit", checkpoint_key="model_state_dict")
    same_output(spec, model)


def test_position_embeddings_of_another_input_size_are_resampled(tmp_path):
    torch.manual_seed(0)
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=4, img_size=64)
    path = tmp_path / "big.pth"
    torch.save(big.state_dict(), path)
    enc = create_encoder(encoder(weights=str(path)))  # type: ignore[arg-type]
    assert enc.backbone.pos_embed.shape == (1, 1 + 4, 192)  # type: ignore[union-attr]


def test_weight_files_that_do_not_fit_are_named(tmp_path):
    with pytest.raises(EncoderWeightsError, match="nothing is downloaded"):
        create_encoder(encoder(weights=str(tmp_path / "absent.pth")))  # type: ignore[arg-type]
    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=3, img_size=32)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    with pytest.raises(EncoderWeightsError, match=r"rgb\.pth: shapes differ.*patch_embed"):
        create_encoder(encoder(weights=str(path)))  # type: ignore[arg-type]
    small = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, in_chans=4, img_size=32)
    torch.save({"model": small.state_dict()}, path)
    with pytest.raises(EncoderWeightsError, match="rgb.pth"):
        create_encoder(encoder(weights=str(path)))  # type: ignore[arg-type]
    torch.save({"model": {f"x.{k}": v for k, v in reference().state_dict().items()}}, path)
    with pytest.raises(EncoderWeightsError, match="missing"):
        create_encoder(encoder(weights=str(path)))  # type: ignore[arg-type]


def test_schema_lists_the_registered_kinds_and_key_maps():
    item = load_schema()["properties"]["encoders"]["items"]["properties"]
    assert sorted(item["kind"]["enum"]) == ENCODERS.names()
    assert sorted(item["key_map"]["enum"]) == KEY_MAPS.names()


# ----------------------------------------------------------------------------- workflow
@pytest.mark.slow
def test_embed_target_writes_every_shard_from_the_shared_upstream(upstream_2021, tmp_path):
    entry = {**TINY, "crop": {"size": 32, "source": "image", "window": 64}}
    wd, _ = upstream_2021.fork(tmp_path, encoders=[entry])
    cmd = ["snakemake", "--cores", "2", "embed", "--configfile", "run.yaml"]
    proc = subprocess.run(cmd, cwd=wd, env=tool_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_upstream_reused(proc.stdout + proc.stderr)
    results = wd / "results"
    stores = sorted((results / "embeddings" / "tiny").glob("*.zarr"))
    tiles = sorted((results / "tiles").glob("*.zarr"))
    assert [s.name for s in stores] == [t.name for t in tiles]
    for store in stores:
        assert check_output(store, results, deep=True) is None
    # a store whose rows disagree with its tile store is named as damaged
    stamp = json.loads((stores[0] / "zarr.json").read_text())
    stamp["attributes"]["hpa_batch"]["n_cells"] += 1
    (stores[0] / "zarr.json").write_text(json.dumps(stamp))
    assert "rows" in (check_output(stores[0], results) or "")


HEAD = {
    "name": "tiny-linear",
    "encoder": "tiny",
    "arch": "linear",
    "epochs": 3,
    "batch_size": 16,
    "num_workers": 0,
    "folds": [0],
    "schedule": {"kind": "constant", "lr": 0.01},
}


@pytest.mark.slow
def test_encoder_head_runs_end_to_end_and_is_compared_on_the_same_cells(upstream_2021, tmp_path):
    from conftest import tiny_model

    from hpa_batch.core.tables import read_parquet, read_predictions_about

    models = [tiny_model(name="cell-tiny"), HEAD]
    wd, cfg = upstream_2021.fork(tmp_path, encoders=[TINY], models=models)
    cmd = ["snakemake", "--cores", "2", "report", "--configfile", "run.yaml"]
    proc = subprocess.run(cmd, cwd=wd, env=tool_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_upstream_reused(proc.stdout + proc.stderr)
    res = wd / "results"
    head_dir = res / "models" / "tiny-linear" / "fold0"
    assert {p.name for p in head_dir.iterdir()} >= {"model.pt", "history.csv", "thresholds.json"}
    history = (head_dir / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3 and history[0].startswith("epoch,lr,train_loss,val_loss")  # three epochs
    losses = [float(line.split(",")[2]) for line in history[1:]]
    assert losses[-1] < losses[0]  # the head learns something from the embeddings
    shard = min((res / "tiles").glob("*.zarr")).name.removesuffix(".zarr")
    pred = res / "predictions" / "tiny-linear" / f"{shard}.parquet"
    table = read_parquet(pred)
    tiles = zarr.open_group(res / "tiles" / f"{shard}.zarr", mode="r")
    assert list(table["cell_id"]) == list(tiles["cell_id"][:])  # one row per cell, tile order
    probs = table[[c for c in table.columns if c.startswith("prob_")]].to_numpy()
    assert probs.shape[1] == 19 and ((probs > 0) & (probs < 1)).all()
    about = read_predictions_about(pred)
    assert about["encoder"] == "tiny" and about["random_init"] is True and len(about["thresholds"]) == 19
    metrics = json.loads((res / "metrics.json").read_text())
    compared = metrics["models"]
    assert set(compared) == {"cell-tiny", "tiny-linear"}
    assert compared["tiny-linear"]["kind"] == "encoder head" and compared["tiny-linear"]["random_init"]
    assert compared["cell-tiny"]["kind"] == "timm"
    for entry in compared.values():  # the same cells for both families (the tiny set has no held-out fold)
        assert entry["all"]["images"] == metrics["images"] > 0
        assert ("held_out" in entry) == ("held_out" in metrics)
    html = (res / "report.html").read_text()
    assert "Model families on the same cells" in html and "tiny-linear" in html and "RANDOM-INIT" in html
    assert "ran without a weights file" in html  # said in the run overview too

    # cells.h5ad carries every encoder's embeddings, joined by image and cell id
    import anndata

    adata = anndata.read_h5ad(res / "tables" / "cells.h5ad")
    emb = zarr.open_group(res / "embeddings" / "tiny" / f"{shard}.zarr", mode="r")
    row = int(np.flatnonzero(adata.obs["shard"].astype(str) == shard)[3])
    image, cell = adata.obs["image_id"].iloc[row], int(adata.obs["instance_id"].iloc[row])
    where = np.flatnonzero((emb["cell_image"][:] == image) & (emb["cell_id"][:] == cell))
    assert adata.obsm["X_tiny"].shape == (adata.n_obs, 192) and dict(adata.uns["embeddings"]) == {
        "X_tiny": "encoder tiny, random init"
    }
    assert adata.uns["encoders"]["tiny"]["random_init"] and adata.uns["encoders"]["tiny"]["weights_sha256"] == ""
    assert "X_umap" not in adata.obsm and "umap_cells is 0" in adata.uns["umap"]["skipped"]  # the test config's
    np.testing.assert_array_equal(adata.obsm["X_tiny"][row], emb["embedding"][int(where[0])])

    # the head can feed the tables like any cell model: merge.cell_model picks it
    cfg["merge"] = {"cell_model": "tiny-linear"}
    (wd / "run.yaml").write_text(json.dumps(cfg))
    cmd = ["snakemake", "--cores", "2", "merge", "--configfile", "run.yaml"]
    proc = subprocess.run(cmd, cwd=wd, env=tool_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    cells = read_parquet(res / "tables" / "cells.parquet")
    mine = cells.set_index(["image_id", "cell_id"])
    want = table.set_index(["image_id", "cell_id"])
    np.testing.assert_allclose(mine.loc[want.index, "cell_prob_3"], want["prob_3"], rtol=1e-6)


def test_prefetch_keeps_order_and_raises_the_producers_error():
    from hpa_batch.models.embed import prefetch

    assert [int(t) for t in prefetch(iter(torch.arange(7)), depth=2)] == list(range(7))

    def broken():
        yield torch.zeros(1)
        raise OSError("chunk 3 of /x/tiles.zarr is damaged")

    out = prefetch(broken())
    assert float(next(out)) == 0.0
    with pytest.raises(OSError, match="chunk 3"):
        next(out)
