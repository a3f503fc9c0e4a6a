"""``SamSegmenter``: the registry's SAM models behind the common ``Segmenter.segment -> Masks`` API."""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError, PromptError
from ..io import read_image
from ..masks import Masks
from ..registry import ModelSpec, Segmenter, find_weights

RANDOM_WEIGHTS_WARNING = (
    "WEIGHTS ARE RANDOM: {name} was built with random weights because no checkpoint was found, so its masks "
    "are meaningless. Get the real weights with `imseg weights download {name}` or pass --checkpoint PATH."
)


_DEVICES = "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(device: str | Any = "auto") -> Any:
    """``"auto"`` -> cuda if available else cpu; otherwise ``torch.device(device)``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{_DEVICES}, got {device!r}.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but CUDA is not available; use device='cpu' or 'auto'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError("device='mps' was requested but MPS (Apple GPU) is not available here; "
                          "use device='cpu' or 'auto'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{_DEVICES}, got {device!r}.")
    return dev


class SamSegmenter(Segmenter):
    """Segment Anything as a :class:`~imseg.registry.Segmenter`.

    ``segment(image, points=, labels=, box=)`` is prompt mode; ``segment(image)`` is everything mode
    (delegates to :class:`imseg.sam.automatic.SamAutomaticMaskGenerator`). ``.predictor`` is the
    underlying :class:`~imseg.sam.predictor.SamPredictor`.
    """

    supports_prompts = True

    def __init__(self, predictor: Any, name: str = "sam", random_weights: bool = False,
                 checkpoint: str | None = None) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.name = name
        self.random_weights = random_weights
        self.checkpoint = checkpoint
        self._image_key: str | None = None

    @property
    def device(self) -> Any:
        return self.predictor.device

    def set_image(self, image: Any) -> np.ndarray:
        """Read ``image`` (path, array, PIL, bytes) as RGB and embed it unless it is already set."""
        rgb = read_image(image)
        key = hashlib.blake2b(rgb.tobytes(), digest_size=16).hexdigest() + str(rgb.shape)
        if key != self._image_key or not self.predictor.is_image_set:
            self.predictor.set_image(rgb)
            self._image_key = key
        return rgb

    def segment(self, image: Any, *, points: Any = None, labels: Any = None, box: Any = None,
                multimask: bool = False, mask_input: Any = None, **kwargs: Any) -> Masks:
        """Masks for ``image``.

        Prompt mode (points (N, 2) XY pixels with labels (N,) 1/0 - default all 1 -, and/or box
        (4,) XYXY or boxes (B, 4)): the best mask, or with ``multimask=True`` the 3 candidates with
        their predicted IoU as scores. A single ambiguous point uses SAM's 3-way output and keeps the
        best one; several boxes give one mask per box. Without prompts: everything mode
        (``kwargs`` go to the automatic mask generator).
        """
        if points is None and box is None and mask_input is None:
            if labels is not None:
                raise PromptError("labels were given without points; pass points=[(x, y), ...] too.")
            return self._everything(image, **kwargs)
        if kwargs:
            raise ConfigError(f"unexpected options for prompt mode: {sorted(kwargs)}.")
        rgb = self.set_image(image)
        size = rgb.shape[:2]
        boxes = None if box is None else np.asarray(box, dtype=np.float32)
        if boxes is not None and boxes.ndim == 2 and len(boxes) > 1:
            if points is not None or mask_input is not None:
                raise PromptError("several boxes cannot be combined with points or mask_input; give one box, "
                                  "or call segment once per box.")
            masks, iou, low = self.predictor.predict_batch(boxes=boxes, multimask_output=multimask)
            if multimask:
                best = iou.argmax(axis=1)
                idx = np.arange(len(iou))
                masks, iou, low = masks[idx, best], iou[idx, best], low[idx, best]
            else:
                masks, iou, low = masks[:, 0], iou[:, 0], low[:, 0]
            return Masks(masks, scores=iou, image_size=size, prompt_index=np.arange(len(iou)))
        if points is not None and labels is None:
            labels = np.ones(len(np.atleast_2d(np.asarray(points, dtype=np.float32))), np.int32)
        n_points = 0 if points is None else len(np.atleast_2d(np.asarray(points, dtype=np.float32)))
        ambiguous = n_points == 1 and boxes is None and mask_input is None
        masks, iou, low = self.predictor.predict(points, labels, boxes, mask_input,
                                                 multimask_output=multimask or ambiguous)
        if not multimask and len(iou) > 1:
            best = int(np.argmax(iou))
            masks, iou, low = masks[best : best + 1], iou[best : best + 1], low[best : best + 1]
        order = np.argsort(-iou, kind="stable") if multimask else np.arange(len(iou))
        return Masks(masks[order], scores=iou[order], image_size=size, low_res_logits=low[order])

    def _everything(self, image: Any, **kwargs: Any) -> Masks:
        from .automatic import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator(self.model, **kwargs).generate_masks(image)


def build_sam_segmenter(spec: ModelSpec, checkpoint: str | os.PathLike | None = None, device: str = "auto",
                        dtype: Any = None, allow_random: bool = False, **kwargs: Any) -> SamSegmenter:
    """Registry builder for the SAM family (``imseg.load("sam-vit-b", checkpoint=...)``).

    Without ``checkpoint`` the weights cache is used; if that is empty too, ``allow_random=True``
    builds random weights (with a loud warning), otherwise :class:`CheckpointError` says how to get
    the weights.
    """
    from .checkpoint import build_sam
    from .predictor import SamPredictor

    if kwargs:
        raise ConfigError(f"unknown options for {spec.name}: {sorted(kwargs)}; known: checkpoint, device, dtype, "
                          f"allow_random.")
    variant = spec.options.get("variant", "vit_b")
    random_weights = False
    if checkpoint is None:
        cached = find_weights(spec.name)
        if cached is not None:
            checkpoint = cached
        elif allow_random:
            random_weights = True
            message = RANDOM_WEIGHTS_WARNING.format(name=spec.name)
            warnings.warn(message, UserWarning, stacklevel=2)
        else:
            raise CheckpointError(
                f"no checkpoint for {spec.name}: none was passed and none is in the weights cache. Get it with "
                f"`imseg weights download {spec.name}` or pass --checkpoint PATH (checkpoint=PATH in Python)."
            )
    dev = resolve_device(device)
    model = build_sam(variant, checkpoint).to(dev)
    predictor = SamPredictor(model, dtype=dtype)
    return SamSegmenter(predictor, name=spec.name, random_weights=random_weights,
                        checkpoint=None if checkpoint is None else str(checkpoint))
