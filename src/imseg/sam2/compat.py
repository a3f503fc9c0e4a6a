"""The official ``sam2.build_sam`` names as drop-ins: our model, the official config names and checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ConfigError
from .checkpoint import build_sam2_model
from .config import variant_of
from .model import Sam2Model
from .specs import SPECS


def build_sam2(config_file: str, ckpt_path: str | os.PathLike | None = None, device: str | torch.device = "cuda",
               mode: str = "eval", hydra_overrides_extra: list[str] | None = None, apply_postprocessing: bool = True,
               **kwargs: Any) -> Sam2Model:
    """Build a SAM 2.1 model from an official config name ("configs/sam2.1/sam2.1_hiera_t.yaml", ...) and load
    the official checkpoint ``ckpt_path`` (if given). ``apply_postprocessing`` turns on the stability-based
    single-mask choice, as the official build does. Hydra overrides are not supported."""
    if hydra_overrides_extra:
        raise ConfigError(f"hydra overrides are not supported by imseg.sam2.build_sam2 (got "
                          f"{hydra_overrides_extra}); the four SAM 2.1 configs are built as published.")
    if mode not in ("eval", "train"):
        raise ConfigError(f"mode must be 'eval' or 'train', got {mode!r}.")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine (no CUDA); pass device='cpu'.")
    model = build_sam2_model(variant_of(config_file), ckpt_path, device=device,
                             apply_postprocessing=apply_postprocessing)
    return model.train() if mode == "train" else model


def build_sam2_hf(model_id: str, **kwargs: Any) -> Sam2Model:
    """Not available offline: name the official file to download instead."""
    short = {"facebook/sam2.1-hiera-tiny": "t", "facebook/sam2.1-hiera-small": "s",
             "facebook/sam2.1-hiera-base-plus": "b+", "facebook/sam2.1-hiera-large": "l"}.get(model_id)
    hint = f" Download {SPECS[f'sam2.1-hiera-{short}'].url} and call build_sam2(" \
           f"{SPECS[f'sam2.1-hiera-{short}'].config_file!r}, PATH)." if short else ""
    raise ConfigError(f"imseg.sam2 does not download from the Hugging Face hub ({model_id!r}).{hint}")
