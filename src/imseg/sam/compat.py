"""The official ``segment_anything`` / ``mobile_sam`` names as drop-ins.

``sam_model_registry[variant](checkpoint=None)`` builds our implementation and loads the official
checkpoint file unchanged.
"""

from __future__ import annotations

import os

from .checkpoint import build_sam as _build
from .model import Sam

Checkpoint = str | os.PathLike | None


def build_sam_vit_h(checkpoint: Checkpoint = None) -> Sam:
    """ViT-H SAM (``sam_vit_h_4b8939.pth``)."""
    return _build("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: Checkpoint = None) -> Sam:
    """ViT-L SAM (``sam_vit_l_0b3195.pth``)."""
    return _build("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: Checkpoint = None) -> Sam:
    """ViT-B SAM (``sam_vit_b_01ec64.pth``)."""
    return _build("vit_b", checkpoint)


def build_sam_vit_t(checkpoint: Checkpoint = None) -> Sam:
    """MobileSAM with the TinyViT encoder (``mobile_sam.pt``)."""
    return _build("vit_t", checkpoint)


build_sam = build_sam_vit_h

sam_model_registry = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
}
