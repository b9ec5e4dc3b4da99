"""Frozen foundation encoders: a registry of kinds (``create_encoder``), local weight files only, and the
key maps that turn a published checkpoint's parameter names into timm's.

An encoder maps a normalised batch ``(b, k, s, s)`` float32 to one embedding per cell ``(b, d)``:

``vit``   a timm Vision Transformer (``arch``: any timm ViT name, e.g. ``vit_base_patch16_224``, built for
          ``k`` input channels and ``s`` px inputs; the position embeddings of a checkpoint trained at
          another size are resampled). ``pooling``: ``cls`` (the class token after the final norm),
          ``mean`` (mean of the patch tokens) or ``cls+mean`` (both, concatenated: ``2 x width``).
``timm``  any timm model (CNNs included), its pooled pre-logits features (``pooling: mean``).

Key maps (``key_map``; :data:`KEY_MAPS`), applied after the checkpoint's sub-dictionary is chosen
(``checkpoint_key``, or the first of ``teacher``, ``model``, ``state_dict`` that the file holds):

``timm``    timm's own names (a ``module.`` prefix is dropped).
``dino``    DINO / DINO4Cells training checkpoints: ``module.`` and ``backbone.`` dropped, the DINO
            projection head (``head.*``) left out.
``dinov2``  DINOv2 / Cell-DINO: as ``dino``, plus ``dino_head`` / ``ibot_head`` / ``mask_token`` left out,
            chunked blocks (``blocks.<chunk>.<i>``) flattened, ``register_tokens`` -> ``reg_token``.
``hf_vit``  HuggingFace ``transformers`` ``ViTModel`` names (SubCell's encoder): the prefix before
            ``embeddings.cls_token`` dropped, query / key / value concatenated into timm's ``qkv``;
            parameters outside the ViT (SubCell's attention pooler, the HF pooler) left out.

Every weight of the encoder must be filled: a missing or an unexplained extra key is an error naming
the file. Nothing is downloaded; ``weights: null`` builds a random-init encoder from ``seed`` (tests,
dry runs), recorded as such wherever its embeddings go.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from hpa_batch.core.registry import Registry
from hpa_batch.spec import EncoderSpec

ENCODERS: Registry[torch.nn.Module] = Registry("encoder kind")
#: Key maps: a checkpoint's tensors (``state=``) -> the same tensors under timm's names.
KEY_MAPS: Registry[dict[str, torch.Tensor]] = Registry("encoder key map")
#: Sub-dictionaries tried, in order, when ``checkpoint_key`` is null.
CHECKPOINT_KEYS = ("teacher", "model", "state_dict")


class EncoderWeightsError(ValueError):
    """A weight file that cannot fill the encoder (missing, unreadable, or keys that do not fit)."""


# ----------------------------------------------------------------------------- encoders
class ViTEncoder(torch.nn.Module):
    """A timm ViT's tokens pooled to one vector per input.

    Parameters
    ----------
    backbone : torch.nn.Module
        A timm ``VisionTransformer`` (``num_classes=0``).
    pooling : str
        ``cls``, ``mean`` or ``cls+mean``.
    """

    def __init__(self, backbone: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in ("cls", "mean", "cls+mean"):
            raise ValueError(f"unknown ViT pooling {pooling!r}: cls, mean or cls+mean")
        self.backbone, self.pooling = backbone, pooling
        width = int(getattr(backbone, "embed_dim", getattr(backbone, "num_features", 0)))
        self.dim = 2 * width if pooling == "cls+mean" else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, k, s, s)`` -> ``(b, dim)``."""
        vit: Any = self.backbone
        tokens = vit.forward_features(x)  # (b, prefix + patches, width), final norm applied
        cls, patches = tokens[:, 0], tokens[:, int(vit.num_prefix_tokens) :]
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return patches.mean(1)
        return torch.cat([cls, patches.mean(1)], dim=1)


class PooledEncoder(torch.nn.Module):
    """Any timm model's pooled pre-logits features."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = int(getattr(backbone, "num_features", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, k, s, s)`` -> ``(b, dim)``."""
        net: Any = self.backbone
        return net.forward_head(net.forward_features(x), pre_logits=True)


@ENCODERS.register("vit")
def _vit(spec: EncoderSpec) -> torch.nn.Module:
    import timm

    backbone = timm.create_model(
        spec.arch,
        pretrained=False,
        num_classes=0,
        in_chans=len(spec.channels),
        img_size=spec.crop.size,
        **spec.model_args,
    )
    if not hasattr(backbone, "num_prefix_tokens"):
        raise ValueError(f"encoder {spec.name!r}: {spec.arch!r} is not a ViT; use kind: timm for it")
    return ViTEncoder(backbone, spec.pooling)


@ENCODERS.register("timm")
def _timm(spec: EncoderSpec) -> torch.nn.Module:
    import timm

    if spec.pooling != "mean":
        raise ValueError(f"encoder {spec.name!r}: kind timm pools by its own head (pooling: mean)")
    net = timm.create_model(spec.arch, pretrained=False, num_classes=0, in_chans=len(spec.channels), **spec.model_args)
    return PooledEncoder(net)


def create_encoder(spec: EncoderSpec) -> torch.nn.Module:
    """The frozen encoder of ``spec`` in eval mode, its weights from ``spec.weights`` (a local file) or,
    with ``weights: null``, a random initialisation drawn from ``spec.seed``.

    Raises
    ------
    EncoderWeightsError
        The weight file is missing, unreadable, or does not fill the encoder (the message names it).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        encoder = ENCODERS.create(spec.kind, spec=spec)
    if spec.weights is not None:
        load_weights(encoder, Path(spec.weights).expanduser(), key_map=spec.key_map, checkpoint_key=spec.checkpoint_key)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


# ----------------------------------------------------------------------------- weights
def read_checkpoint(path: Path, checkpoint_key: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch file (``weights_only``: nothing is unpickled but
    tensors and plain containers), narrowed to ``checkpoint_key`` (or the first known sub-dictionary).

    Raises
    ------
    EncoderWeightsError
        Missing file, unreadable file, or no such sub-dictionary.
    """
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights {path} do not exist (local files only, nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any reader failure: the file is named with its reason)
        raise EncoderWeightsError(
            f"encoder weights {path} cannot be read as tensors ({type(exc).__name__}: {exc}); a training "
            "checkpoint that pickles other objects must be reduced to its state dict first (docs/CLUSTER.md)"
        ) from None
    if checkpoint_key is not None:
        if not isinstance(raw, dict) or checkpoint_key not in raw:
            keys = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
            raise EncoderWeightsError(f"encoder weights {path} have no {checkpoint_key!r} entry (top level: {keys})")
        raw = raw[checkpoint_key]
    elif isinstance(raw, dict):
        raw = next((raw[k] for k in CHECKPOINT_KEYS if isinstance(raw.get(k), dict)), raw)
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)} if isinstance(raw, dict) else {}
    if not tensors:
        raise EncoderWeightsError(f"encoder weights {path} hold no tensors")
    return tensors


def load_weights(encoder: torch.nn.Module, path: Path, *, key_map: str, checkpoint_key: str | None) -> None:
    """Fill every weight of ``encoder``'s backbone from ``path`` through the named key map.

    Raises
    ------
    EncoderWeightsError
        A weight of the encoder the file lacks, a file key the map does not explain, or a shape that
        differs (e.g. a 3-channel checkpoint for a 4-channel encoder), naming the file.
    """
    backbone: Any = getattr(encoder, "backbone", encoder)
    state = KEY_MAPS.create(key_map, state=read_checkpoint(path, checkpoint_key))
    own = backbone.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = _resample_pos_embed(state["pos_embed"], own["pos_embed"], backbone)
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise EncoderWeightsError(
            f"encoder weights {path} do not fit {type(backbone).__name__} through key map {key_map!r}: "
            f"{len(missing)} weight(s) missing (e.g. {missing[:4]}), {len(extra)} unexpected (e.g. {extra[:4]}); "
            "layer scale (ls1.gamma) or register tokens (reg_token) in the file need model_args "
            "{init_values: ..., reg_tokens: ...}"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise EncoderWeightsError(
            f"encoder weights {path}: shapes differ from the encoder's (name, file, encoder): {wrong[:3]} "
            "(input channels, width or patch size of the checkpoint and the config disagree)"
        )
    backbone.load_state_dict(state, strict=True)


def _resample_pos_embed(pos: torch.Tensor, own: torch.Tensor, backbone: Any) -> torch.Tensor:
    """A checkpoint's position embeddings resampled to the encoder's patch grid (timm's helper)."""
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(backbone, "no_embed_class", False) else int(backbone.num_prefix_tokens)
    grid = backbone.patch_embed.grid_size
    return resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)


# ----------------------------------------------------------------------------- key maps
def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p) :], True
        out[key] = value
    return out


@KEY_MAPS.register("timm")
def _timm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _strip(state, ("module.",)).items() if not k.startswith("head.")}


@KEY_MAPS.register("dino")
def _dino_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _strip(state, ("module.", "backbone.")).items() if not k.startswith("head.")}


@KEY_MAPS.register("dinov2")
def _dinov2_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in _dino_names(state).items():
        if key.startswith(("dino_head.", "ibot_head.")) or key == "mask_token":
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # FSDP block chunks
        out["reg_token" if key == "register_tokens" else key] = value
    return out


_HF_LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


@KEY_MAPS.register("hf_vit")
def _hf_vit_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    anchor = next((k for k in state if k.endswith("embeddings.cls_token")), None)
    if anchor is None:
        raise EncoderWeightsError(
            "key map hf_vit: no 'embeddings.cls_token' in the checkpoint (not a transformers ViT)"
        )
    prefix = anchor[: -len("embeddings.cls_token")]
    vit = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out = {
        "cls_token": vit.pop("embeddings.cls_token"),
        "pos_embed": vit.pop("embeddings.position_embeddings"),
        "patch_embed.proj.weight": vit.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": vit.pop("embeddings.patch_embeddings.projection.bias"),
    }
    for part in ("weight", "bias"):
        if f"layernorm.{part}" in vit:
            out[f"norm.{part}"] = vit.pop(f"layernorm.{part}")
    layers = sorted({int(m.group(1)) for k in vit if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            qkv = [vit.pop(f"{src}attention.attention.{n}.{part}") for n in ("query", "key", "value")]
            out[f"{dst}attn.qkv.{part}"] = torch.cat(qkv, dim=0)
            for hf, timm_name in _HF_LAYER.items():
                out[f"{dst}{timm_name}.{part}"] = vit.pop(f"{src}{hf}.{part}")
    left = [k for k in vit if not k.startswith("pooler.")]
    if any(k.startswith(("embeddings.", "encoder.")) for k in left):
        raise EncoderWeightsError(f"key map hf_vit: ViT weights it cannot place: {left[:4]}")
    return out
