"""Build SAM 2.1 models and load the official checkpoints (``{"model": state_dict}``; strict, ``weights_only``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .config import CONFIGS, get_config
from .model import Sam2Model
from .specs import VARIANT_MODEL_NAMES


def build_model(variant: str = "hiera_t", **overrides: Any) -> Sam2Model:
    """A randomly initialised :class:`Sam2Model` of ``variant`` (see :func:`~imseg.sam2.config.variant_of`)."""
    return Sam2Model(get_config(variant, **overrides)).eval()


def _how_to_get(variant: str) -> str:
    name = VARIANT_MODEL_NAMES.get(variant, "sam2.1-hiera-t")
    return f"`imseg weights download {name}` (or pass the path of the official sam2.1_hiera_*.pt file)"


def detect_variant(state_dict: dict[str, Any]) -> str:
    """Name the SAM 2.1 variant a state_dict belongs to, or describe what it is."""
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None or not hasattr(patch, "shape"):
        if "image_encoder.patch_embed.proj.weight" in state_dict:
            return "not SAM 2: a SAM 1 (ViT) checkpoint"
        return "not a SAM 2 checkpoint"
    dim = int(patch.shape[0])
    depth = len({k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")})
    for name, cfg in CONFIGS.items():
        if cfg.embed_dim == dim and sum(cfg.stages) == depth:
            return name
    return f"custom Hiera (embed_dim {dim}, {depth} blocks)"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file's state_dict on CPU with ``weights_only=True``; clear errors otherwise."""
    from ..sam.checkpoint import load_checkpoint_file

    p = Path(path)
    obj = load_checkpoint_file(p, _how_to_get("hiera_t"), "sam2.1_hiera_tiny.pt")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: contains a {type(obj).__name__} without a state_dict of tensors under "
                              f"'model'; it is not a SAM 2.1 checkpoint.")
    return obj


def load_into(model: Sam2Model, state_dict: dict[str, torch.Tensor], where: str = "checkpoint") -> Sam2Model:
    """Strictly load ``state_dict`` into ``model``; name the variant on a mismatch."""
    expected = model.variant
    detected = detect_variant(state_dict)
    if detected.startswith("not"):
        raise CheckpointError(f"{where}: {detected} (no image_encoder.trunk weights among its {len(state_dict)} "
                              f"tensors); the model being built is SAM 2.1 {expected}. Get the official file with "
                              f"{_how_to_get(expected)}.")
    if detected in CONFIGS and detected != expected:
        raise CheckpointError(
            f"{where}: this checkpoint is for SAM 2.1 {detected}, but the model being built is {expected}. Pass "
            f"a {expected} checkpoint ({_how_to_get(expected)}) or build the matching config "
            f"(configs/sam2.1/sam2.1_{detected}.yaml, model {VARIANT_MODEL_NAMES[detected]}).")
    from ..sam.checkpoint import key_mismatches

    parts = key_mismatches(model.state_dict(), state_dict)
    if parts:
        raise CheckpointError(f"{where}: does not match the SAM 2.1 {expected} architecture (detected: {detected}): "
                              + "; ".join(parts) + ". Pass the official SAM 2.1 checkpoint for this model.")
    model.load_state_dict(state_dict, strict=True)
    return model


def build_sam2_model(variant: str = "hiera_t", checkpoint: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", **overrides: Any) -> Sam2Model:
    """Build ``variant`` and, if given, load an official SAM 2.1 checkpoint into it; eval mode on ``device``."""
    model = build_model(variant, **overrides)
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), where=str(checkpoint))
    return model.to(device).eval()
