"""ONNX Runtime engine for instance exports (:mod:`imseg.instance.export`): the same ``segment`` / ``evaluate``
as the torch Mask R-CNN engine (:class:`imseg.instance.detections.InstanceEngine`), from ``model.onnx``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..instance.detections import InstanceEngine, arrays_to_masks, check_thresholds
from .sessions import check_session, make_session, read_manifest


class OrtInstanceSegmenter(InstanceEngine):
    """An exported Mask R-CNN on ONNX Runtime; thresholds default to those the run was exported with."""

    name = "maskrcnn-onnx"

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, score_threshold: float | None = None, mask_threshold: float | None = None):
        self.manifest = read_manifest(export_dir)
        if self.manifest.get("family") != "instance":
            raise ExportError(f"{export_dir}: not an instance export (family={self.manifest.get('family')!r}).")
        path = Path(export_dir) / self.manifest["files"]["model"]
        self.session = make_session(path, device=device, providers=providers, threads=threads)
        check_session(self.session, path, "model", {"image": ("tensor(float)", 3)},
                      {"boxes": ("tensor(float)", 2), "labels": ("tensor(int64)", 1), "scores": ("tensor(float)", 1),
                       "masks": ("tensor(float)", 4)})
        self.class_names = list(self.manifest["class_names"])
        self.score_threshold = float(self.manifest.get("score_threshold", 0.5) if score_threshold is None
                                     else score_threshold)
        self.mask_threshold = float(self.manifest.get("mask_threshold", 0.5) if mask_threshold is None
                                    else mask_threshold)
        check_thresholds(self.score_threshold, self.mask_threshold)
        self.max_detections = int(self.manifest.get("max_detections", 100))

    def detect(self, image: Any, score_threshold: float | None = None):
        """All detections of ``image`` scoring at least ``score_threshold`` (default: the segmenter's)."""
        from ..io import read_image

        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        rgb = read_image(image)
        tensor = np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / np.float32(255)
        boxes, labels, scores, masks = self.session.run(["boxes", "labels", "scores", "masks"], {"image": tensor})
        keep = np.flatnonzero(scores >= threshold)
        return arrays_to_masks(boxes[keep], labels[keep], scores[keep], masks[keep], rgb.shape[:2], self.class_names,
                               self.mask_threshold)

    def __repr__(self) -> str:
        return f"OrtInstanceSegmenter(classes={self.class_names}, score_threshold={self.score_threshold})"
