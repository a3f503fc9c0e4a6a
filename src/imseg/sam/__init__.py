"""Segment Anything (our implementation; official checkpoints load unchanged).

Drop-in names: ``sam_model_registry``, ``SamPredictor``, ``SamAutomaticMaskGenerator``,
``build_sam*``, ``ResizeLongestSide``. They are imported on first use, so importing a torch-free
module of this package (``imseg.sam.transforms``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ResizeLongestSide": "transforms",
    "Sam": "model",
    "SamAutomaticMaskGenerator": "automatic",
    "SamPredictor": "predictor",
    "build_sam": "compat",
    "finetune": "..finetune.train",
    "build_sam_vit_b": "compat",
    "build_sam_vit_h": "compat",
    "build_sam_vit_l": "compat",
    "build_sam_vit_t": "compat",
    "sam_model_registry": "compat",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'imseg.sam' has no attribute {name!r}")
    target = f"imseg.{home[2:]}" if home.startswith("..") else f"{__name__}.{home}"
    value = getattr(importlib.import_module(target), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
