"""``Sam2Segmenter``: the registry's SAM 2.1 models on torch, an engine behind the one ``Segmenter.segment``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..device import resolve_device
from ..errors import CheckpointError, ConfigError
from ..masks import Masks
from ..registry import ModelSpec, find_weights
from ..sam.segmenter import RANDOM_WEIGHTS_WARNING, PredictorSegmenter
from ..segmenter import Candidates, Embedding, Prompts
from .automatic import Sam2AmgBackend

__all__ = ["Sam2Embedding", "Sam2Segmenter", "build_sam2_segmenter"]


@dataclass
class Sam2Embedding(Embedding):
    """SAM 2.1's image embedding: ``features`` is ``{"image_embed": (1, 256, 64, 64), "high_res_feats":
    [(1, 32, 256, 256), (1, 64, 128, 128)]}`` (the predictor's image state); ``input_size`` is the
    1024x1024 square every image is resized to."""

    @property
    def nbytes(self) -> int:
        tensors = [self.features["image_embed"], *self.features["high_res_feats"]]
        return int(sum(t.element_size() * t.nelement() for t in tensors))


class _WholeImageBackend(Sam2AmgBackend):
    """The generator's backend, able to start from the segmenter's whole-image embedding."""

    def state_for(self, embedding: Sam2Embedding) -> tuple[Any, Any]:
        return embedding.features["image_embed"], embedding.features["high_res_feats"]


class Sam2Segmenter(PredictorSegmenter):
    """SAM 2.1 on torch as a :class:`~imseg.segmenter.Segmenter` (the rules of ``segment`` live there).
    The engine: ``embed`` runs the image encoder through ``.predictor`` (a
    :class:`~imseg.sam2.predictor.SAM2ImagePredictor`), ``decode`` its prompt encoder and mask decoder on a
    given embedding, and ``everything`` the :class:`~imseg.sam2.automatic.SAM2AutomaticMaskGenerator`.
    """

    def __init__(self, predictor: Any, name: str = "sam2.1-hiera-t", **kwargs: Any) -> None:
        super().__init__(predictor, name, **kwargs)

    def _reset_predictor(self, predictor: Any) -> None:
        predictor.reset_predictor()

    def embed(self, rgb: np.ndarray) -> Sam2Embedding:
        self.predictor.set_image(rgb)
        size = self.model.image_size
        return Sam2Embedding(self.predictor._features, tuple(int(v) for v in rgb.shape[:2]), (size, size))

    def _use(self, embedding: Embedding) -> None:
        """Make ``embedding`` the predictor's current image (no encoder run)."""
        self.predictor.reset_predictor()
        self.predictor._features = embedding.features
        self.predictor._orig_hw = [tuple(embedding.original_size)]
        self.predictor._is_image_set = True

    def decode(self, embedding: Embedding, prompts: Prompts, multimask_output: bool) -> Candidates:
        self._use(embedding)
        if prompts.n_boxes > 1:  # (B, 4) boxes: the predictor returns (B, C, ...) already
            masks, iou, low = self.predictor.predict(box=prompts.boxes, multimask_output=multimask_output)
        else:
            box = None if prompts.boxes is None else prompts.boxes[0]
            out = self.predictor.predict(prompts.points, prompts.labels, box, prompts.mask_input, multimask_output)
            masks, iou, low = (a[None] for a in out)
        return Candidates(np.asarray(masks, bool), np.asarray(iou, np.float32), np.asarray(low, np.float32))

    def everything(self, rgb: np.ndarray, embedding: Embedding | None = None, **options: Any) -> Masks:
        from .automatic import SAM2AutomaticMaskGenerator

        generator = SAM2AutomaticMaskGenerator(self.model, **options)
        if embedding is None:
            return generator.generate_masks(rgb)
        old = generator.backend
        generator.backend = _WholeImageBackend(old.model, old.mask_threshold, old.multimask_output,
                                               old.min_region_area)
        # the generator reads the crop's input size in the backend's low-res frame (see Sam2AmgBackend)
        side = generator.backend.img_size
        whole = Sam2Embedding(embedding.features, embedding.original_size, (side, side))
        return generator.generate_masks(rgb, embedding=whole)


def build_sam2_segmenter(spec: ModelSpec, checkpoint: str | os.PathLike | None = None, device: str = "auto",
                         allow_random: bool = False, embedding_cache_size: int = 1, dtype: Any = None,
                         precision: str | None = None, **kwargs: Any) -> Sam2Segmenter:
    """Registry builder for the SAM 2.1 family (``imseg.load("sam2.1-hiera-t", checkpoint=...)``).

    Without ``checkpoint`` the weights cache is used; if that is empty too, ``allow_random=True``
    builds random weights (with a loud warning), otherwise :class:`CheckpointError` says how to get
    the weights. ``precision="bf16"`` (or ``auto`` on a CPU with native bfloat16, see
    :mod:`imseg.precision`) runs the Hiera image encoder in bfloat16; everything after it stays float32.
    """
    from ..precision import resolve_precision, run_in_bf16
    from .checkpoint import build_sam2_model
    from .predictor import SAM2ImagePredictor

    if kwargs:
        raise ConfigError(f"unknown options for {spec.name}: {sorted(kwargs)}; known: checkpoint, device, "
                          f"allow_random, embedding_cache_size, precision.")
    if dtype is not None:
        raise ConfigError(f"{spec.name} takes no dtype (--half); drop it, or pass precision='bf16' (--precision bf16) "
                          f"for a bfloat16 image encoder on CPU.")
    random_weights = False
    if checkpoint is None:
        cached = find_weights(spec.name)
        if cached is not None:
            checkpoint = cached
        elif allow_random:
            random_weights = True
            warnings.warn(RANDOM_WEIGHTS_WARNING.format(name=spec.name), UserWarning, stacklevel=2)
        else:
            raise CheckpointError(
                f"no checkpoint for {spec.name}: none was passed and none is in the weights cache. Get it with "
                f"`imseg weights download {spec.name}` or pass --checkpoint PATH (checkpoint=PATH in Python)."
            )
    dev = resolve_device(device)
    chosen = resolve_precision(precision, dev)
    model = build_sam2_model(spec.options["variant"], checkpoint, device=dev)
    if chosen == "bf16":
        run_in_bf16(model.image_encoder)
    segmenter = Sam2Segmenter(SAM2ImagePredictor(model), name=spec.name, random_weights=random_weights,
                              checkpoint=None if checkpoint is None else str(checkpoint),
                              embedding_cache_size=embedding_cache_size)
    segmenter.precision = chosen
    return segmenter
