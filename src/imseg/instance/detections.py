"""What every instance engine (torch Mask R-CNN, its ONNX Runtime export) shares: detections as
:class:`imseg.Masks`, and ``segment`` / ``evaluate`` on top of an engine's ``detect``. No torch here."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..segmenter import Segmenter
from .sample import InstanceDataset


def arrays_to_masks(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, mask_probs: np.ndarray,
                    image_size: tuple[int, int], class_names: list[str], mask_threshold: float = 0.5):
    """Detections of one image as :class:`imseg.Masks`: ``boxes`` (N, 4) XYXY, ``labels`` (N,) 1-based (0 is
    background), ``scores`` (N,), ``mask_probs`` (N, 1, H, W) probabilities; masks are ``> mask_threshold``,
    labels 0-based, boxes XYWH."""
    from ..masks import Masks

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, 2:] -= boxes[:, :2]
    probs = np.asarray(mask_probs)
    masks = probs[:, 0] > mask_threshold if len(probs) else np.zeros((0, *image_size), bool)
    return Masks(masks, scores=np.asarray(scores, np.float32).reshape(-1), boxes=boxes,
                 labels=np.asarray(labels, np.int64).reshape(-1) - 1, class_names=list(class_names),
                 image_size=tuple(image_size))


def check_thresholds(score_threshold: float, mask_threshold: float) -> None:
    for what, value in (("score_threshold", score_threshold), ("mask_threshold", mask_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{what} must be between 0 and 1; got {value}.")


class InstanceEngine(Segmenter):
    """An instance model: subclasses set ``class_names``, ``score_threshold``, ``mask_threshold``,
    ``max_detections`` and implement ``detect(image, score_threshold=None) -> Masks``."""

    supports_prompts = False
    class_names: list[str]
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_detections: int = 100

    def detect(self, image: Any, score_threshold: float | None = None):
        raise NotImplementedError

    def segment(self, image: Any, *, points=None, labels=None, box=None, **kwargs: Any):
        """Every object found with a score of at least ``score_threshold``: :class:`imseg.Masks` with ``labels``
        (0-based, indexing ``class_names``), ``scores`` and XYWH ``boxes``, best first."""
        if points is not None or labels is not None or box is not None:
            raise PromptError(f"{self.name} segments every object it finds and takes no prompts; drop points/labels/box.")
        if kwargs:
            raise ConfigError(f"{type(self).__name__}.segment got unknown options {sorted(kwargs)}.")
        return self.detect(image)

    def evaluate(self, dataset: InstanceDataset | str | os.PathLike, *, max_dets: int | None = None) -> dict:
        """COCO box/mask AP (every detection) and the DSB score / F1@0.5 (detections at ``score_threshold``).

        ``dataset``: an InstanceDataset or a path :func:`imseg.instance.read_dataset` reads; its classes must be
        among the model's. ``max_dets``: detections per image COCO AP counts (default: the model's maximum)."""
        from .formats import read_dataset
        from .metrics import instance_metrics

        if not isinstance(dataset, InstanceDataset):
            dataset = read_dataset(dataset)[1]
        unknown = sorted(set(dataset.categories) - set(self.class_names))
        if unknown:
            raise ConfigError(f"dataset classes {unknown} are not among the model's classes {self.class_names}.")
        predictions = [self.detect(s.image_path, score_threshold=0.0) for s in dataset.samples]
        return instance_metrics(predictions, dataset.samples, self.class_names, score_threshold=self.score_threshold,
                                max_dets=int(max_dets or self.max_detections))
