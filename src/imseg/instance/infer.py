"""Inference with a trained instance run: ``load_instance_run(path) -> InstanceSegmenter``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError
from .detections import InstanceEngine, check_thresholds


class InstanceSegmenter(InstanceEngine):
    """Mask R-CNN from a run directory. ``segment(image)`` returns :class:`imseg.Masks` with ``labels``
    (0-based, indexing ``class_names``), ``scores`` and XYWH ``boxes``, detections scoring at least
    ``score_threshold``; a pixel belongs to a mask where its probability exceeds ``mask_threshold``."""

    name = "maskrcnn"

    def __init__(self, model, class_names: list[str], *, score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 device: str = "cpu") -> None:
        from ..device import resolve_device

        check_thresholds(score_threshold, mask_threshold)
        self.device = resolve_device(device)  # "auto", "cpu", "cuda:N", checked
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.score_threshold, self.mask_threshold = float(score_threshold), float(mask_threshold)
        self.max_detections = int(model.roi_heads.detections_per_img)

    def detect(self, image: Any, score_threshold: float | None = None):
        """All detections of ``image`` scoring at least ``score_threshold`` (default: the segmenter's)."""
        import torch

        from ..io import read_image
        from .train import detections_to_masks

        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        rgb = read_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255).to(self.device)
        # the box head drops detections at or below its own threshold before the mask head runs
        self.model.roi_heads.score_thresh = threshold
        with torch.inference_mode():
            output = self.model([tensor])[0]
        masks = detections_to_masks(output, rgb.shape[:2], self.class_names, self.mask_threshold)
        return masks[np.flatnonzero(masks.scores >= threshold)]

    def __repr__(self) -> str:
        return f"InstanceSegmenter(classes={self.class_names}, score_threshold={self.score_threshold})"


def load_instance_run(path: str | os.PathLike, *, weights: str = "best", device: str = "auto",
                      score_threshold: float | None = None, mask_threshold: float = 0.5) -> InstanceEngine:
    """An :class:`InstanceSegmenter` (Mask R-CNN) from a run directory (``weights/best.pt`` or ``last.pt``) or a
    checkpoint file; a contour-aware U-Net run (:mod:`imseg.instance.unet`) gives its ``UnetInstanceSegmenter``."""
    from .model import build_maskrcnn
    from .train import load_checkpoint

    path = Path(path)
    info = _unet_info(path)
    if info is not None:
        from .unet import load_unet_instance

        return load_unet_instance(path, info, weights=weights, device=device, score_threshold=score_threshold,
                                  mask_threshold=mask_threshold)
    if path.is_dir():
        if weights not in ("best", "last"):
            raise ConfigError(f"weights must be 'best' or 'last'; got {weights!r}.")
        path = path / "weights" / f"{weights}.pt"
    payload = load_checkpoint(path)
    model = build_maskrcnn(payload["model"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model {payload['model']}: {exc}") from exc
    threshold = payload.get("score_threshold", 0.5) if score_threshold is None else score_threshold
    return InstanceSegmenter(model, payload["class_names"], score_threshold=threshold,
                             mask_threshold=mask_threshold, device=device)


def _unet_info(path: Path) -> dict | None:
    """The ``instance`` entry of a contour-aware U-Net run's config.yaml (None for other runs)."""
    from .evaluate import run_config

    info = run_config(path).get("instance")
    return info if isinstance(info, dict) and info.get("model") == "unet-watershed" else None


def is_instance_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an instance run directory (config.yaml ``task: instance``) or one of its weights files,
    so ``imseg.load(path)`` can route it here rather than to the semantic loader."""
    path = Path(path)
    run = path.parent.parent if path.is_file() and path.parent.name == "weights" else path
    config = run / "config.yaml"
    if not config.is_file():
        return False
    import yaml

    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("task") == "instance"
