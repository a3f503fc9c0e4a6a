"""Segment Anything (our implementation; official checkpoints load unchanged).

Drop-in names: ``sam_model_registry``, ``SamPredictor``, ``SamAutomaticMaskGenerator``,
``build_sam*``. Importing this package imports torch.
"""

from __future__ import annotations

from typing import Any

from .compat import build_sam, build_sam_vit_b, build_sam_vit_h, build_sam_vit_l, build_sam_vit_t, sam_model_registry
from .model import ResizeLongestSide, Sam
from .predictor import SamPredictor

__all__ = [
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "sam_model_registry",
]


def __getattr__(name: str) -> Any:
    # the automatic mask generator lives in its own module (imported on first use)
    if name == "SamAutomaticMaskGenerator":
        from .automatic import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator
    raise AttributeError(f"module 'imseg.sam' has no attribute {name!r}")
