"""ONNX Runtime engines for instance exports (:mod:`imseg.instance.export`): the same ``segment`` / ``evaluate``
as the torch engines (:class:`imseg.instance.detections.InstanceEngine`): Mask R-CNN from ``model.onnx``, the
contour-aware U-Net from its pixel network in ``pixels/`` plus the torch engine's own watershed split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..instance.detections import InstanceEngine, arrays_to_masks, check_thresholds
from ..instance.unet import ARCH, NORMALIZE, UnetInstanceSegmenter
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


class OrtUnetInstanceSegmenter(UnetInstanceSegmenter):
    """An exported contour-aware U-Net: its pixel network on ONNX Runtime (an :class:`OrtSemanticSegmenter`, which
    letterboxes as the torch run does) under the same watershed split as the torch engine."""

    name = f"{ARCH}-onnx"

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, files: dict[str, str] | None = None,
                 score_threshold: float | None = None, mask_threshold: float | None = None) -> None:
        from .ort_semantic import OrtSemanticSegmenter

        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        if self.manifest.get("family") != "instance" or self.manifest.get("model") != ARCH:
            raise ExportError(f"{export_dir}: not a {ARCH} instance export (family={self.manifest.get('family')!r}, "
                              f"model={self.manifest.get('model')!r}).")
        sub = self.manifest.get("pixels")
        if not isinstance(sub, str) or not (export_dir / sub).is_dir():
            raise ExportError(f"{export_dir}: the manifest names no pixel-network folder ('pixels': {sub!r}); "
                              "export the run again with `imseg export --run RUN`.")
        pixels = export_dir / sub
        normalize = self.manifest.get("normalize", "none")
        if normalize not in NORMALIZE:
            raise ExportError(f"{export_dir}: the manifest's normalize {normalize!r} is not one of {', '.join(NORMALIZE)}"
                              "; export the run again with `imseg export --run RUN`.")
        # the manifest's files are relative to the export; the pixel network's own manifest to its folder
        local = {role: os.path.relpath(export_dir / name, pixels) for role, name in (files or self.manifest["files"]).items()}
        semantic = OrtSemanticSegmenter(pixels, device=device, providers=providers, threads=threads, files=local)
        pick = lambda given, key: float(self.manifest.get(key, 0.5) if given is None else given)  # noqa: E731
        super().__init__(semantic, self.manifest["class_names"], score_threshold=pick(score_threshold, "score_threshold"),
                         mask_threshold=pick(mask_threshold, "mask_threshold"),
                         min_area=int(self.manifest.get("min_area", 8)),
                         normalize=normalize)

    def __repr__(self) -> str:
        return f"OrtUnetInstanceSegmenter(classes={self.class_names}, min_area={self.min_area})"


def load_instance_export(export_dir: str | os.PathLike, *, files: dict[str, str] | None = None,
                         **options: Any) -> InstanceEngine:
    """The ONNX Runtime engine of an instance export: by the manifest's ``model`` (``files``: the precision's
    files from :func:`imseg.export.runtime.precision_files`; Mask R-CNN exports have fp32 files only)."""
    if read_manifest(export_dir).get("model") == ARCH:
        return OrtUnetInstanceSegmenter(export_dir, files=files, **options)
    return OrtInstanceSegmenter(export_dir, **options)
