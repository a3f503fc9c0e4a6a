"""Architecture table of the SAM 2.1 variants (the four official configs, no hydra)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Sam2Config:
    """Architecture of one SAM 2.1 variant; only the Hiera trunk differs between them."""

    variant: str
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    num_maskmem: int = 7
    memory_attention_layers: int = 4
    sigmoid_scale_for_mem_enc: float = 20.0  # mask probabilities are mapped to logits-like inputs of the memory
    sigmoid_bias_for_mem_enc: float = -10.0
    apply_postprocessing: bool = True  # dynamic single-mask choice via stability (official build default)


CONFIGS: dict[str, Sam2Config] = {
    "hiera_t": Sam2Config("hiera_t", 96, 1, (1, 2, 7, 2), (5, 7, 9)),
    "hiera_s": Sam2Config("hiera_s", 96, 1, (1, 2, 11, 2), (7, 10, 13)),
    "hiera_b+": Sam2Config("hiera_b+", 112, 2, (2, 3, 16, 3), (12, 16, 20), (14, 14)),
    "hiera_l": Sam2Config("hiera_l", 144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), (8, 4, 16, 8)),
}
ALIASES = {
    "sam2.1-hiera-t": "hiera_t", "sam2.1-hiera-s": "hiera_s", "sam2.1-hiera-b+": "hiera_b+",
    "sam2.1-hiera-l": "hiera_l", "tiny": "hiera_t", "small": "hiera_s", "base_plus": "hiera_b+",
    "large": "hiera_l",
}


def variant_of(name: str) -> str:
    """Variant key of a variant name, registry name, or official config name
    ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_t.yaml", "sam2.1_hiera_t")."""
    key = str(name)
    if key in CONFIGS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    stem = PurePosixPath(key.replace("\\", "/")).name
    stem = stem[: -len(".yaml")] if stem.endswith(".yaml") else stem
    if stem.startswith("sam2.1_") and stem[len("sam2.1_"):] in CONFIGS:
        return stem[len("sam2.1_"):]
    if stem.startswith("sam2_") and stem[len("sam2_"):] in CONFIGS:
        raise ConfigError(f"{name!r} is a SAM 2.0 config; imseg.sam2 implements SAM 2.1. Use "
                          f"'configs/sam2.1/sam2.1_{stem[len('sam2_'):]}.yaml' with a SAM 2.1 checkpoint.")
    raise ConfigError(f"unknown SAM 2.1 config {name!r}; expected one of "
                      f"{[f'configs/sam2.1/sam2.1_{v}.yaml' for v in CONFIGS]} or {sorted(ALIASES)}.")


def get_config(name: str, **overrides: Any) -> Sam2Config:
    """Config of ``name`` (see :func:`variant_of`) with optional field overrides."""
    config = CONFIGS[variant_of(name)]
    return replace(config, **overrides) if overrides else config
