"""Inference with a trained run: ``load_run(path) -> SemanticSegmenter`` (what ``imseg.load(run_dir)`` returns).

By default (``resize=True``) an image is seen as training saw it: the longer side is letterboxed to
the run's ``imgsz`` exactly as ``imseg train`` validates (antialiased bilinear on the uint8 image,
black padding to a square), predicted, and the class probabilities scaled back to the image's own size. With
``resize=False`` the image stays at its native resolution: images up to ``imgsz`` run in one pass
(padded to a multiple of 32), larger ones as overlapping ``imgsz`` tiles blended with a gaussian
weight (centre pixels count most), so memory stays bounded and tile seams vanish; use it for runs
trained on native-resolution crops (large microscopy or aerial images). A run can record its own
default (checkpoint ``inference.resize``). Optional flip test-time augmentation averages the
probabilities of the image and its horizontal (and vertical) flips; ``scales`` (multi-scale test-time
augmentation) averages predictions at several sizes: with ``resize=True`` the letterbox size ``imgsz * s``
(rounded to the multiple the model needs), with ``resize=False`` the image scaled by ``s``; each result is scaled
back to the image's own size before averaging. A network trained with zoom-in scale jitter often does better
at a size above its training ``imgsz`` (FixRes, Touvron et al. 2019): choose scales on a validation split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..errors import ConfigError, InputError
from ..io import letterbox_rgb, read_image, resize_rgb
from ..segmenter import DenseSegmenter
from .checkpoints import find_checkpoint, load_checkpoint, model_from_checkpoint
from .metrics import ConfusionMatrix
from .models import OUTPUT_STRIDE, input_multiple
from .testtime import check_flips as _check_flips
from .testtime import flip_views, letterbox_side, parse_scales
from .transforms import IMAGENET_MEAN, IMAGENET_STD


def gaussian_window(size: tuple[int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """(h, w) float32 weights, 1 at the centre, gaussian with sigma = size * sigma_scale, floored at 1e-3."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    gy = torch.exp(-0.5 * (ys / max(h * sigma_scale, 1e-6)) ** 2)
    gx = torch.exp(-0.5 * (xs / max(w * sigma_scale, 1e-6)) ** 2)
    return (gy[:, None] * gx[None, :]).clamp_min(1e-3)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with ``stride``; the last is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def flips_trained_with(train_config: dict | None) -> str:
    """The flips a run saw in training ("h", "v", "hv"): test-time flips the network never saw (an upside-down
    horse) add views it was not trained on. Horizontal flips are always included; runs without a record: "hv"."""
    if not train_config or "augment" not in train_config:
        return "hv"
    from .transforms import parse_augment

    try:
        aug = parse_augment(train_config["augment"])
    except ConfigError:  # a record this version cannot read keeps the old default
        return "hv"
    return "h" + ("v" if aug["vflip"] > 0 or aug["rotate90"] > 0 else "")


class SemanticSegmenter(DenseSegmenter):
    """A trained semantic model: ``predict_probs`` (C, H, W), ``predict`` (H, W) labels, ``segment`` -> Masks
    (rules: :class:`~imseg.segmenter.DenseSegmenter`)."""

    supports_prompts = False

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: list[str],
        *,
        imgsz: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        ignore_index: int | None = None,
        device: str | torch.device = "auto",
        overlap: float = 0.25,
        tta: bool | str = False,
        tta_flips: str = "hv",
        batch: int = 4,
        resize: bool = True,
        scales: Any = (1.0,),
        input_multiple: int = OUTPUT_STRIDE,
        name: str = "semantic",
    ) -> None:
        if not 0 <= overlap < 1:
            raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.imgsz = int(imgsz)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.ignore_index = ignore_index
        self.overlap = float(overlap)
        self.tta_flips = _check_flips(tta_flips, "tta_flips")
        self.tta = _check_flips(tta, "tta") if isinstance(tta, str) else bool(tta)
        self.batch = int(batch)
        self.resize = bool(resize)
        self.scales = parse_scales(scales)
        self.input_multiple = int(input_multiple)
        self.name = name

    # ------------------------------------------------------------------ core
    def _normalize(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return (tensor - self.mean) / self.std

    def _views(self, tta: bool | str) -> list[tuple[bool, bool]]:
        """(flip width, flip height) views averaged (see :func:`~imseg.semantic.testtime.flip_views`)."""
        return flip_views(tta, self.tta_flips)

    @torch.no_grad()
    def _probs_batch(self, batch: torch.Tensor, tta: bool | str) -> torch.Tensor:
        """(B, 3, h, w) with h, w multiples of the model's ``input_multiple`` -> (B, C, h, w) probabilities."""
        batch = batch.to(self.device)
        views = self._views(tta)
        total = None
        for flip_w, flip_h in views:
            dims = [d for d, on in ((3, flip_w), (2, flip_h)) if on]
            x = batch.flip(dims) if dims else batch
            logits = self.model(x).float()
            probs = torch.cat([1 - logits.sigmoid(), logits.sigmoid()], 1) if logits.shape[1] == 1 else logits.softmax(1)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
        return (total / len(views)).cpu()

    def _pad(self, tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = tensor.shape[-2:]
        ph, pw = size[0] - h, size[1] - w
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            tensor = torch.nn.functional.pad(tensor[None], (0, pw, 0, ph), mode=mode)[0]
        return tensor

    def predict_probs(self, image: Any, *, tta: bool | str | None = None, overlap: float | None = None,
                      scales: Any = None) -> np.ndarray:
        """Class probabilities (C, H, W) float32 at the image's own resolution.

        With ``resize=True`` (default) the image is scaled so its longer side is ``imgsz`` and padded with
        black to ``imgsz`` x ``imgsz`` (training's validation letterbox), and the result scaled back.
        With ``resize=False`` images with both sides <= ``imgsz`` run whole at native size; larger ones
        run as sliding ``imgsz`` tiles with ``overlap`` (fraction) and gaussian blending.
        ``scales`` (default: the segmenter's, ``(1.0,)``) averages the predictions at those factors of the
        letterbox size (``resize=True``) or of the image (``resize=False``), each scaled back to the image's size.
        """
        rgb = read_image(image)
        tta = self.tta if tta is None else tta
        overlap = self.overlap if overlap is None else overlap
        scales = self.scales if scales is None else parse_scales(scales)
        h, w = rgb.shape[:2]
        total = None
        for scale in scales:
            if self.resize:
                probs = self._predict_resized(rgb, tta, self.letterbox_size(scale))
            elif scale == 1.0:
                probs = self._predict_native(rgb, tta, overlap)
            else:
                new_size = (max(1, round(h * scale)), max(1, round(w * scale)))
                probs = torch.from_numpy(self._predict_native(resize_rgb(rgb, new_size), tta, overlap))
                probs = torch.nn.functional.interpolate(probs[None], size=(h, w), mode="bilinear",
                                                        align_corners=False)[0].numpy()
            total = probs if total is None else total + probs
        return total / len(scales) if len(scales) > 1 else total

    def letterbox_size(self, scale: float = 1.0) -> int:
        """The letterbox side for a test-time ``scale`` (``resize=True``): ``imgsz * scale`` rounded to the
        nearest multiple the model needs (``imgsz`` itself at scale 1)."""
        return letterbox_side(self.imgsz, scale, self.input_multiple)

    def _predict_native(self, rgb: np.ndarray, tta: bool | str, overlap: float) -> np.ndarray:
        """Native resolution: one padded pass up to ``imgsz``, gaussian-blended ``imgsz`` tiles beyond."""
        h, w = rgb.shape[:2]
        x = self._normalize(rgb)
        round_up = lambda v: -(-v // OUTPUT_STRIDE) * OUTPUT_STRIDE  # noqa: E731
        if h <= self.imgsz and w <= self.imgsz:
            padded = self._pad(x, (round_up(h), round_up(w)))
            return self._probs_batch(padded[None], tta)[0, :, :h, :w].numpy()
        tile_h, tile_w = min(self.imgsz, round_up(h)), min(self.imgsz, round_up(w))
        x = self._pad(x, (max(h, tile_h), max(w, tile_w)))
        H, W = x.shape[-2:]
        stride_h = max(int(tile_h * (1 - overlap)), 1)
        stride_w = max(int(tile_w * (1 - overlap)), 1)
        window = gaussian_window((tile_h, tile_w))
        acc = torch.zeros(self.num_classes, H, W)
        weight = torch.zeros(1, H, W)
        boxes = [(y, x0) for y in tile_starts(H, tile_h, stride_h) for x0 in tile_starts(W, tile_w, stride_w)]
        for i in range(0, len(boxes), self.batch):
            chunk = boxes[i : i + self.batch]
            tiles = torch.stack([x[:, y : y + tile_h, x0 : x0 + tile_w] for y, x0 in chunk])
            probs = self._probs_batch(tiles, tta)
            for (y, x0), p in zip(chunk, probs, strict=True):
                acc[:, y : y + tile_h, x0 : x0 + tile_w] += p * window
                weight[:, y : y + tile_h, x0 : x0 + tile_w] += window
        return (acc / weight)[:, :h, :w].numpy()

    def _predict_resized(self, rgb: np.ndarray, tta: bool | str, size: int) -> np.ndarray:
        """Training's validation view (longer side -> size, black padding to size x size), predict, scale back."""
        h, w = rgb.shape[:2]
        canvas, (new_h, new_w) = letterbox_rgb(rgb, size)
        probs = self._probs_batch(self._normalize(canvas)[None], tta)[:, :, :new_h, :new_w]
        probs = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0]
        return probs.numpy()

    def predict(self, image: Any, **kwargs: Any) -> np.ndarray:
        """(H, W) int64 label map (argmax of :meth:`predict_probs`)."""
        return self.predict_probs(image, **kwargs).argmax(0).astype(np.int64)

    def probabilities(self, rgb: np.ndarray, **options: Any) -> np.ndarray:
        """The dense engine: :meth:`predict_probs` (options: ``tta``, ``overlap``, ``scales``)."""
        return self.predict_probs(rgb, **options)

    def evaluate(self, dataset, *, tta: bool | str | None = None, scales: Any = None) -> ConfusionMatrix:
        """Confusion matrix over ``dataset.read_raw(i) -> (rgb uint8, mask)`` pairs at full resolution."""
        cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        for i in range(len(dataset)):
            rgb, mask = dataset.read_raw(i)
            pred = self.predict(rgb, tta=tta, scales=scales)
            cm.update(torch.from_numpy(pred), torch.from_numpy(np.asarray(mask, dtype=np.int64)))
        return cm

    def __repr__(self) -> str:
        return f"SemanticSegmenter(name={self.name!r}, classes={self.class_names}, imgsz={self.imgsz}, device={self.device})"


def load_run(
    path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    **kwargs: Any,
) -> SemanticSegmenter:
    """Load a training run directory (or a best.pt/last.pt file) as a :class:`SemanticSegmenter`.

    ``kwargs`` go to the segmenter (``overlap``, ``tta``, ``scales``, ``batch``, ``imgsz``, ``resize``); ``resize``,
    ``tta`` and ``scales`` None (or absent) take the run's recorded defaults (``inference`` in the checkpoint: the
    test-time augmentation a planned run chose on its validation split; else resize True, letterbox to the
    training ``imgsz`` as validation did, no flips, scale 1). ``tta=True`` averages the flips the run trained with
    (horizontal, plus vertical when it trained with vertical flips or 90-degree rotations).
    """
    ckpt_path = find_checkpoint(path, checkpoint)
    payload = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(payload)
    inference = payload.get("inference") or {}
    options = {"imgsz": payload.get("imgsz", 512), "ignore_index": payload.get("ignore_index"),
               "resize": bool(inference.get("resize", True)),
               "tta": inference.get("tta", False), "scales": tuple(inference.get("scales", (1.0,))),
               "tta_flips": flips_trained_with(payload.get("train")),
               "input_multiple": input_multiple(payload["model"].get("name", ""), payload["model"].get("kwargs"))}
    kwargs = {k: v for k, v in kwargs.items() if not (k in ("resize", "tta", "scales") and v is None)}
    options.update(kwargs)
    multiple = options["input_multiple"]
    if "imgsz" in kwargs and (int(kwargs["imgsz"]) % multiple or int(kwargs["imgsz"]) < multiple):
        raise InputError(f"imgsz must be a positive multiple of {multiple} for this model, got {kwargs['imgsz']}")
    run_name = Path(path).name if Path(path).is_dir() else Path(path).parent.parent.name
    return SemanticSegmenter(
        model,
        payload["class_names"],
        mean=tuple(payload.get("mean", IMAGENET_MEAN)),
        std=tuple(payload.get("std", IMAGENET_STD)),
        device=device,
        name=run_name,
        **options,
    )
