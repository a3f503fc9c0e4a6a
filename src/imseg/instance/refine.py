"""SAM refinement of an instance model's detections: each detected box re-segmented by SAM's box-prompt decoder.

The detector decides what is there (boxes, labels, scores); SAM draws each object's outline, which at its
1024-pixel input is often finer than a Mask R-CNN's 28x28 mask head. All boxes of an image go through one
batched decoder call on one image embedding (:meth:`imseg.sam.predictor.SamPredictor.predict_batch`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..segmenter import Segmenter

SAM_MODELS = ("mobile-sam", "sam-vit-b")


class SamRefiner(Segmenter):
    """``segment(image)``: ``detector``'s detections with each mask replaced by SAM's single-mask answer for the
    detection's box; labels, class names and scores are the detector's, ``sam_iou`` holds SAM's predicted IoU.
    A box SAM leaves empty keeps its (empty) mask, so detections and outputs stay one to one."""

    supports_prompts = False

    def __init__(self, detector: Any, sam: Any) -> None:
        if not hasattr(sam, "predictor"):
            raise ConfigError(f"--refine sam needs a torch SAM segmenter; got {type(sam).__name__}.")
        self.detector, self.sam = detector, sam
        self.name = f"{getattr(detector, 'name', 'detector')}+{getattr(sam, 'name', 'sam')}"
        self.class_names = list(getattr(detector, "class_names", []))

    @classmethod
    def build(cls, detector: Any, checkpoint: str | os.PathLike | None, *, model: str = "mobile-sam",
              device: str = "auto") -> SamRefiner:
        """``detector`` refined by SAM ``model`` (mobile-sam or sam-vit-b) with weights from ``checkpoint``."""
        from ..registry import load

        if model not in SAM_MODELS:
            raise ConfigError(f"--sam-model must be one of {', '.join(SAM_MODELS)}; got {model!r}.")
        if checkpoint is None:
            raise ConfigError("--refine sam needs --sam-checkpoint PATH (the SAM weights file, e.g. mobile_sam.pt).")
        return cls(detector, load(model, checkpoint=checkpoint, device=device))

    def refine(self, rgb: np.ndarray, detections: Any) -> Any:
        """``detections`` (imseg.Masks with XYWH boxes) of ``rgb`` with SAM's masks for their boxes."""
        from ..masks import Masks

        if not len(detections):
            return detections
        boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4).copy()
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY, the box prompt's form
        predictor = self.sam.predictor
        predictor.set_image(rgb)
        masks, iou, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
        return Masks(masks[:, 0], scores=detections.scores, labels=detections.labels,
                     class_names=detections.class_names, image_size=tuple(rgb.shape[:2]),
                     sam_iou=iou[:, 0].astype(np.float32))

    def segment(self, image: Any, *, points=None, labels=None, box=None, **kwargs: Any):
        from ..io import read_image

        if points is not None or labels is not None or box is not None:
            raise PromptError("SAM refinement segments the detector's boxes and takes no prompts; drop points/labels/box.")
        if kwargs:
            raise ConfigError(f"SamRefiner.segment got unknown options {sorted(kwargs)}.")
        rgb = read_image(image)
        return self.refine(rgb, self.detector.segment(rgb))

    def __repr__(self) -> str:
        return f"SamRefiner({self.detector!r}, {getattr(self.sam, 'name', 'sam')})"
