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


#: hydra overrides ``++model.KEY=VALUE`` that build_sam2_video_predictor understands: model config fields and
#: video predictor options
MODEL_OVERRIDES = {"image_size": int}
PREDICTOR_OVERRIDES = {"fill_hole_area": float, "non_overlap_masks": bool, "clear_non_cond_mem_around_input": bool,
                       "add_all_frames_to_correct_as_cond": bool, "binarize_mask_from_pts_for_mem_enc": bool,
                       "memory_temporal_stride_for_eval": int, "max_cond_frames_in_attn": int}


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["++model.image_size=512", ...]`` -> {"image_size": 512, ...}; anything else is refused by name."""
    known = {**MODEL_OVERRIDES, **PREDICTOR_OVERRIDES}
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).lstrip("+").partition("=")
        name = key[len("model."):] if key.startswith("model.") else None
        if not sep or name not in known:
            raise ConfigError(f"unsupported hydra override {item!r}; imseg understands "
                              f"{sorted(f'++model.{k}=...' for k in known)}.")
        kind = known[name]
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                out[name] = raw.lower() == "true"
            else:
                out[name] = kind(raw)
        except ValueError:
            raise ConfigError(f"hydra override {item!r}: {raw!r} is not a valid {kind.__name__}.") from None
    return out


def build_sam2_video_predictor(config_file: str, ckpt_path: str | os.PathLike | None = None,
                               device: str | torch.device = "cuda", mode: str = "eval",
                               hydra_overrides_extra: list[str] | None = None, apply_postprocessing: bool = True,
                               vos_optimized: bool = False, precision: str | None = None, **kwargs: Any) -> Any:
    """The SAM 2.1 video predictor (:class:`~imseg.sam2.video_predictor.SAM2VideoPredictor`) for an official config
    name, with the official checkpoint ``ckpt_path`` if given. ``apply_postprocessing`` (as the official): stability
    -based single-mask choice, thresholded masks in the memories of prompted frames, holes up to 8 low-res pixels
    filled. ``hydra_overrides_extra``: ``++model.image_size=N`` and the predictor options (see PREDICTOR_OVERRIDES).

    ``precision`` (an imseg option; default fp32, the official's arithmetic): ``bf16``, or ``auto`` on a CPU with
    native bfloat16 (:mod:`imseg.precision`), runs the two heavy parts of every frame, the Hiera image encoder
    and the memory attention, in bfloat16 (the official runs them under bfloat16 autocast on a GPU); the
    decoder, memory encoder and mask post-processing stay float32."""
    from ..precision import resolve_precision
    from .video_predictor import SAM2VideoPredictor

    if mode not in ("eval", "train"):
        raise ConfigError(f"mode must be 'eval' or 'train', got {mode!r}.")
    chosen = resolve_precision(precision, device)
    if chosen == "int8":
        raise ConfigError("precision='int8' is not available for SAM 2.1 video tracking; use fp32, bf16 or auto.")
    if chosen == "bf16" and mode == "train":
        raise ConfigError("precision='bf16' is an inference option; build with mode='eval', or precision='fp32' "
                          "to train.")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine (no CUDA); pass device='cpu'.")
    options = _parse_overrides(list(hydra_overrides_extra or []))
    if apply_postprocessing:  # applied after the user's overrides, as the official build does
        options.update(binarize_mask_from_pts_for_mem_enc=True, fill_hole_area=8)
    model_opts = {k: options.pop(k) for k in list(options) if k in MODEL_OVERRIDES}
    model = build_sam2_model(variant_of(config_file), ckpt_path, device=device,
                             apply_postprocessing=apply_postprocessing, **model_opts)
    if mode == "train":
        model.train()
    if chosen == "bf16":
        _frame_work_in_bf16(model, device)
    predictor = SAM2VideoPredictor(model, **options)
    predictor.precision = chosen
    return predictor


def bf16_memory_attention(device: str | torch.device) -> bool:
    """Whether ``precision="bf16"`` runs the memory attention in bfloat16 too: on a GPU, and on a CPU with AMX
    (``amx_bf16``), whose tile products make its large attention products several times faster. CPUs with
    AVX512-BF16 only (AMD Zen 4/5) keep it in float32: on a Zen 5 torch's bfloat16 attention took 3.0 s a frame
    outside the encoder (tiny) against 1.9 s for the float32 products in oneDNN (:mod:`imseg.cpu_gemm`)."""
    from ..precision import cpu_flags

    return not str(device).startswith("cpu") or "amx_bf16" in cpu_flags()


def _frame_work_in_bf16(model: Sam2Model, device: str | torch.device) -> None:
    """Hiera encoder with bfloat16 weights, and the memory attention where :func:`bf16_memory_attention`; they
    take and return float32, so the rest of the tracker is unchanged."""
    from ..precision import run_in_bf16

    run_in_bf16(model.image_encoder)
    if bf16_memory_attention(device):
        run_in_bf16(model.memory_attention)


def build_sam2_hf(model_id: str, **kwargs: Any) -> Sam2Model:
    """Not available offline: name the official file to download instead."""
    short = {"facebook/sam2.1-hiera-tiny": "t", "facebook/sam2.1-hiera-small": "s",
             "facebook/sam2.1-hiera-base-plus": "b+", "facebook/sam2.1-hiera-large": "l"}.get(model_id)
    hint = f" Download {SPECS[f'sam2.1-hiera-{short}'].url} and call build_sam2(" \
           f"{SPECS[f'sam2.1-hiera-{short}'].config_file!r}, PATH)." if short else ""
    raise ConfigError(f"imseg.sam2 does not download from the Hugging Face hub ({model_id!r}).{hint}")


def build_sam2_video_predictor_hf(model_id: str, **kwargs: Any) -> Any:
    """Not available offline: name the official file to download instead (as :func:`build_sam2_hf`)."""
    return build_sam2_hf(model_id, **kwargs)
