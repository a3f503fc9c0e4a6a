"""Semantic models on ONNX Runtime: :class:`OrtSemanticSegmenter`, a dense engine
(``probabilities(rgb)``) behind the one ``Segmenter.segment``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError
from ..io import letterbox_rgb, read_image, resize_rgb
from ..segmenter import DenseSegmenter
from ..semantic.testtime import check_flips, flip_views, letterbox_side, parse_scales
from .onnx import MANIFEST
from .sessions import check_session, io_signature, make_session, read_manifest


def _pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """(N, C, H, W) -> padded bottom/right to multiples of ``multiple`` (reflect, as the torch
    segmenter does; edge replication when the image is smaller than the padding)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) logits -> class probabilities (one-channel models: [1 - sigmoid, sigmoid])."""
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([1.0 - p, p], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _resize_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) bilinear (half-pixel centres, as torch's ``align_corners=False``)."""
    h, w = size
    if probs.shape[1:] == (h, w):
        return probs
    import cv2

    hwc = np.ascontiguousarray(probs.transpose(1, 2, 0), dtype=np.float32)
    return cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1).transpose(2, 0, 1)


def semantic_preprocess(image: np.ndarray, mean, std, pad_multiple: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (1, 3, H', W') float32 normalised (x/255 - mean)/std, padded to the multiple."""
    x = (image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return _pad_to_multiple(np.ascontiguousarray(x.transpose(2, 0, 1)[None]), int(pad_multiple))


class OrtSemanticSegmenter(DenseSegmenter):
    """A semantic model on ONNX Runtime: ``segment(image)`` -> one mask per class present (rules:
    :class:`~imseg.segmenter.DenseSegmenter`).

    Images are seen as the torch segmenter (and training's validation) sees them: with ``resize`` (the
    run's default, recorded in the manifest's ``inference``) the longer side is letterboxed to ``imgsz``
    with black padding and the probabilities scaled back; ``resize=False`` runs the whole image at its
    native size (padded to the multiple of 32; no tiling on this backend). Test-time augmentation is the
    run's too: ``tta`` (flips averaged: True = the flips the run trained with, or "h", "v", "hv") and ``scales``
    (letterbox sizes, or native image sizes, as factors) default to what the run stored (a run trained with
    ``--time`` chose them on its validation split); pass ``tta=False, scales=(1.0,)`` to switch them off.
    """

    supports_prompts = False

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, files: dict[str, str] | None = None, resize: bool | None = None,
                 imgsz: int | None = None, tta: bool | str | None = None, scales: Any = None) -> None:
        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        if self.manifest.get("family") != "semantic":
            raise ExportError(f"{export_dir}: not a semantic export (family={self.manifest.get('family')!r}).")
        files = files or self.manifest["files"]
        self.session = self.open_session(export_dir / files["model"], device, providers, threads)
        self.name = str(self.manifest.get("model", "semantic"))
        self.class_names = list(self.manifest["class_names"])
        self._check_session(export_dir / files["model"])
        self.mean = self.manifest["normalization"]["mean"]
        self.std = self.manifest["normalization"]["std"]
        self.pad_multiple = int(self.manifest.get("pad_multiple", 32))
        inference = self.manifest.get("inference") or {}
        self.imgsz = int(imgsz or inference.get("imgsz") or 0) or None
        self.resize = bool(inference.get("resize", False) if resize is None else resize)
        if self.resize and self.imgsz is None:
            raise ConfigError(f"{export_dir}: resize needs the training imgsz, which this export does not record; "
                              f"pass imgsz=... or resize=False.")
        self.input_multiple = int(inference.get("input_multiple", self.pad_multiple))
        self.tta_flips = check_flips(inference.get("tta_flips", "hv"), f"{export_dir}: inference.tta_flips")
        tta = inference.get("tta", False) if tta is None else tta
        self.tta = check_flips(tta, "tta") if isinstance(tta, str) else bool(tta)
        self.scales = parse_scales(inference.get("scales", (1.0,)) if scales is None else scales)

    def open_session(self, path: Path, device: str, providers: list[str] | None, threads: int | None):
        """The inference session of the model; engines on other runtimes override this and hand back an
        object with the ONNX Runtime session interface."""
        return make_session(path, device=device, providers=providers, threads=threads)

    def _check_session(self, path: Path) -> None:
        outputs = io_signature(self.session)[1]
        if "image_embeddings" in outputs:
            raise ExportError(
                f"{path}: this looks like a SAM image encoder (it outputs image_embeddings), not the semantic "
                f"segmentation model {MANIFEST} describes; point files.model at the semantic model's .onnx, or "
                f"export again with `imseg export --run RUN`."
            )
        first = next(iter(outputs), None)
        check_session(self.session, path, "semantic segmentation", {"image": ("tensor(float)", 4)},
                      {first or "logits": ("tensor(float)", 4)})
        channels = outputs[first][1][1]
        n = len(self.class_names)
        if isinstance(channels, int) and channels != n and not (channels == 1 and n == 2):
            raise ExportError(
                f"{path}: the model outputs {channels} class channel(s) but {MANIFEST} lists {n} class_names "
                f"{self.class_names}; fix class_names or export again."
            )

    def _logits(self, image: np.ndarray) -> np.ndarray:
        x = semantic_preprocess(image, self.mean, self.std, self.pad_multiple)
        return self.session.run(None, {"image": x})[0][0]

    def _probs(self, image: np.ndarray, tta: bool | str, multiple: int | None = None) -> np.ndarray:
        """(C, H', W') probabilities of the padded image, averaged over the flips of ``tta`` as the torch
        segmenter averages them (each view's probabilities flipped back)."""
        x = semantic_preprocess(image, self.mean, self.std, multiple or self.pad_multiple)
        total = None
        views = flip_views(tta, self.tta_flips)
        for flip_w, flip_h in views:
            axes = tuple(a for a, on in ((3, flip_w), (2, flip_h)) if on)
            view = np.ascontiguousarray(np.flip(x, axes)) if axes else x
            logits = self.session.run(None, {"image": view})[0]
            probs = _softmax(logits)
            probs = np.flip(probs, axes) if axes else probs
            total = probs if total is None else total + probs
        return (total / len(views))[0]

    def probabilities(self, rgb: np.ndarray, **options: Any) -> np.ndarray:
        """The dense engine: :meth:`predict_probs` of an RGB uint8 image (options: ``tta``, ``scales``)."""
        unknown = sorted(set(options) - {"tta", "scales"})
        if unknown:
            raise ConfigError(f"unexpected options for {self.name} on ONNX Runtime: {unknown} "
                              f"(it takes include_background=, tta=, scales=).")
        return self.predict_probs(rgb, **options)

    def predict_probs(self, image, *, tta: bool | str | None = None, scales: Any = None) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the image's own size (one-channel models: [1 - p, p]),
        averaged over the test-time flips and scales (default: the export's, see the class docstring)."""
        image = read_image(image)
        tta = self.tta if tta is None else tta
        scales = self.scales if scales is None else parse_scales(scales)
        total = None
        for scale in scales:
            probs = self._probs_at(image, tta, scale)
            total = probs if total is None else total + probs
        total = total / len(scales) if len(scales) > 1 else total
        return np.ascontiguousarray(total, dtype=np.float32)

    def _probs_at(self, image: np.ndarray, tta: bool | str, scale: float) -> np.ndarray:
        """Probabilities at one test-time scale, at the image's own size."""
        h, w = image.shape[:2]
        if self.resize:
            canvas, (new_h, new_w) = letterbox_rgb(image, letterbox_side(self.imgsz, scale, self.input_multiple))
            probs = self._probs(canvas, tta, self.input_multiple)[:, :new_h, :new_w]
        elif scale == 1.0:
            probs = self._probs(image, tta)[:, :h, :w]
        else:
            small = resize_rgb(image, (max(1, round(h * scale)), max(1, round(w * scale))))
            probs = self._probs(small, tta)[:, : small.shape[0], : small.shape[1]]
        return _resize_probs(probs, (h, w))

    def predict_logits(self, image) -> np.ndarray:
        """(C, H, W) float32 logits of one image at its native size (no letterbox)."""
        image = read_image(image)
        return self._logits(image)[:, : image.shape[0], : image.shape[1]]

    def predict_labels(self, image, **options: Any) -> np.ndarray:
        """(H, W) int64 class map: argmax of :meth:`predict_probs` (options: ``tta``, ``scales``)."""
        return self.predict_probs(image, **options).argmax(axis=0).astype(np.int64)
