"""SAM 2.1 (our implementation; the official checkpoints load unchanged).

Drop-in names: ``build_sam2`` and ``build_sam2_video_predictor`` (official config names),
``SAM2ImagePredictor``, ``SAM2AutomaticMaskGenerator``, ``SAM2VideoPredictor``. Model pieces: Hiera
image encoder with FPN neck, prompt encoder, mask decoder (high-resolution skips, object scores),
memory attention (RoPE), memory encoder, object pointers.

The names are imported on first use, so ``imseg.sam2.specs`` (the checkpoint table) is readable
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SAM2ImagePredictor": "predictor",
    "SAM2AutomaticMaskGenerator": "automatic",
    "Sam2Model": "model",
    "Sam2Config": "config",
    "CONFIGS": "config",
    "get_config": "config",
    "build_sam2": "compat",
    "build_sam2_hf": "compat",
    "build_sam2_video_predictor": "compat",
    "build_sam2_video_predictor_hf": "compat",
    "SAM2VideoPredictor": "video_predictor",
    "build_model": "checkpoint",
    "build_sam2_model": "checkpoint",
    "load_into": "checkpoint",
    "read_state_dict": "checkpoint",
    "SPECS": "specs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'imseg.sam2' has no attribute {name!r}")
