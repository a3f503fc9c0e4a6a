"""SAM 2.1 (our implementation; the official checkpoints load unchanged).

Drop-in names: ``build_sam2`` (official config names), ``SAM2ImagePredictor``. Model pieces: Hiera
image encoder with FPN neck, prompt encoder, mask decoder (high-resolution skips, object scores),
memory attention (RoPE), memory encoder, object pointers. Importing this package imports torch.
"""

from __future__ import annotations

from .checkpoint import build_model, build_sam2_model, load_into, read_state_dict
from .compat import build_sam2, build_sam2_hf
from .config import CONFIGS, Sam2Config, get_config
from .model import Sam2Model
from .predictor import SAM2ImagePredictor

__all__ = [
    "CONFIGS",
    "SAM2ImagePredictor",
    "Sam2Config",
    "Sam2Model",
    "build_model",
    "build_sam2",
    "build_sam2_hf",
    "build_sam2_model",
    "get_config",
    "load_into",
    "read_state_dict",
]
