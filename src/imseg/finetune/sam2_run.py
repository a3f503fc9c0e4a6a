"""SAM 2.1 fine-tuning runs: the starting model, which weights train, the official checkpoint layout
(``{"model": state_dict}``, which ``sam2.build_sam.build_sam2(config, ckpt)`` loads strictly), loading a run as a
segmenter, its interactive evaluation and its ONNX export.

Any ``--imgsz`` that is a multiple of 32 works: the Hiera position embeddings are interpolated to the input, and
no weight depends on the input size, so a run trained at 256 px loads in the official 1024 px model unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError

__all__ = ["build_sam2_start", "evaluate_sam2_model", "export_sam2_run", "load_sam2_run", "refuse_sam2_checkpoint",
           "sam2_checkpoint", "set_trainable_sam2"]

#: modules of the video memory: image fine-tuning gives them no gradient, so they never train
VIDEO_ONLY = ("memory_attention", "memory_encoder", "mask_downsample", "maskmem_tpos_enc", "no_mem_pos_enc",
              "no_obj_ptr", "no_obj_embed_spatial", "obj_ptr_proj", "obj_ptr_tpos_proj")


def _check_imgsz(name: str, imgsz: int) -> None:
    if imgsz % 32 or imgsz < 64:
        raise ConfigError(f"{name}: --imgsz must be a multiple of 32 (>= 64) for the Hiera encoder (its coarsest "
                          f"stage has stride 32); got {imgsz}. SAM 2.1 was trained at 1024.")


def build_sam2_start(spec: Any, checkpoint: str | os.PathLike | None, imgsz: int, *, allow_random: bool = False,
                     seed: int = 0) -> tuple[torch.nn.Module, str]:
    """The SAM 2.1 model of registry ``spec`` at ``imgsz`` and a description of its start (see
    :func:`imseg.finetune.run.build_start_model`); a checkpoint of another model is refused by name."""
    from ..registry import find_weights
    from ..sam2.checkpoint import build_model, load_into, read_state_dict

    _check_imgsz(spec.name, imgsz)
    torch.manual_seed(seed)  # a random start is reproducible (and so is its embedding-cache key)
    net = build_model(spec.options["variant"], image_size=imgsz)
    if checkpoint is None:
        checkpoint = find_weights(spec.name)
    if checkpoint is not None:
        load_into(net, read_state_dict(checkpoint), where=str(checkpoint))
        return net, f"checkpoint {checkpoint}"
    if not allow_random:
        raise CheckpointError(f"no checkpoint for {spec.name}: pass --checkpoint PATH (the official "
                              f"{spec.options['variant']} .pt, or `imseg weights download {spec.name}`), or "
                              f"--random-init to start from random weights.")
    return net, "random initialisation"


def refuse_sam2_checkpoint(state: dict[str, Any], model: str, where: Any) -> None:
    """A SAM 2.1 state_dict given for a SAM model: a :class:`CheckpointError` naming the ``--model`` it fits."""
    from ..sam2.checkpoint import detect_variant
    from ..sam2.specs import VARIANT_MODEL_NAMES

    variant = detect_variant(state)
    if variant in VARIANT_MODEL_NAMES:
        short = VARIANT_MODEL_NAMES[variant].rsplit("-", 1)[1]
        raise CheckpointError(f"{where}: this is a SAM 2.1 {variant} checkpoint, but --model is {model}; pass "
                              f"--model sam2.1-{short} to fine-tune it, or a {model} checkpoint.")


def set_trainable_sam2(model: torch.nn.Module, train: str, lora_rank: int = 8) -> bool:
    """:func:`imseg.finetune.module.set_trainable` for SAM 2.1: the mask decoder (and with ``decoder+prompt``,
    ``lora``, ``all`` the prompt encoder) trains; with a frozen encoder so do not the decoder's high-resolution
    projections and the no-memory embedding (their outputs are cached with the encoder's, see
    :mod:`.sam2_recipe`); the video-memory modules never train. True when the encoder is frozen."""
    from .module import train_heads
    from .sam2_recipe import ENCODER_SIDE

    frozen = train_heads(model, train, lora_rank, model.sam_mask_decoder, model.sam_prompt_encoder)
    if train != "all":
        model.no_mem_embed.requires_grad_(False)
    for name, param in model.named_parameters():
        if name.startswith(VIDEO_ONLY) or (frozen and name.startswith(ENCODER_SIDE)):
            param.requires_grad_(False)
    return frozen


def sam2_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The official SAM 2 checkpoint layout of a state_dict."""
    return {"model": state}


def _run_model(cfg: dict, file: Path) -> torch.nn.Module:
    from ..sam2.checkpoint import build_model, load_into, read_state_dict

    model = build_model(cfg["variant"], image_size=int(cfg["imgsz"]))
    return load_into(model, read_state_dict(file), where=str(file))


def load_sam2_run(cfg: dict, run: Path, file: Path, device: str = "auto", **kwargs: Any):
    """A :class:`~imseg.sam2.segmenter.Sam2Segmenter` of the run's weights ``file`` at the run's input size."""
    from ..device import resolve_device
    from ..sam2.predictor import SAM2ImagePredictor
    from ..sam2.segmenter import Sam2Segmenter

    if kwargs:
        raise ConfigError(f"unknown options for a SAM 2.1 fine-tuning run: {sorted(kwargs)}; known: weights, device.")
    model = _run_model(cfg, file).to(resolve_device(device)).eval()
    return Sam2Segmenter(SAM2ImagePredictor(model), name=f"{cfg['model']} fine-tuned ({run.name})",
                         checkpoint=str(file))


def evaluate_sam2_model(model: torch.nn.Module, samples: list, *, max_clicks: int = 20) -> dict[str, float]:
    """:func:`imseg.finetune.evaluate.evaluate_model` for SAM 2.1 (the same click simulator and metrics)."""
    from ..io import read_image
    from ..sam.interactive_eval import evaluate_interactive, predictor_samples, sam2_predict_fn
    from ..sam2.predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model.eval())

    def pairs():
        for sample in samples:
            gt = torch.from_numpy(sample.masks())
            if len(gt):
                yield read_image(sample.image), gt

    report = evaluate_interactive(sam2_predict_fn(predictor), predictor_samples(predictor, pairs()),
                                  max_clicks=max_clicks)
    return dict(report.as_row(), objects=report.num_objects)


def export_sam2_run(cfg: dict, model: torch.nn.Module, out: str | os.PathLike, *, int8: bool = False,
                    calibration: Any = None, **options: Any) -> Path:
    """SAM 2.1's encoder.onnx + decoder.onnx of a run's weights at its input size (recorded as ``img_size`` in
    the manifest, which the ONNX Runtime engine reads); returns the manifest path."""
    from ..export.onnx_sam2 import export_sam2

    if int8 or calibration is not None or options.pop("raw_input", False) or options.pop("single_mask", False):
        raise ConfigError(f"{cfg['model']}: --int8, --calibration, --raw-input and --single-mask apply to SAM 1 "
                          f"exports; export a SAM 2.1 run without them.")
    return export_sam2(model, out, model_name=f"{cfg['model']} fine-tuned", variant=cfg["variant"], **options)
