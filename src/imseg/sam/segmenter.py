"""``SamSegmenter``: the registry's SAM models on torch, an engine behind the one ``Segmenter.segment``."""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import numpy as np

from ..device import resolve_device
from ..errors import CheckpointError, ConfigError
from ..io import read_image
from ..masks import Masks
from ..registry import ModelSpec, find_weights
from ..segmenter import Candidates, Embedding, Prompts, Segmenter

__all__ = ["RANDOM_WEIGHTS_WARNING", "SamSegmenter", "build_sam_segmenter", "resolve_device"]

RANDOM_WEIGHTS_WARNING = (
    "WEIGHTS ARE RANDOM: {name} was built with random weights because no checkpoint was found, so its masks "
    "are meaningless. Get the real weights with `imseg weights download {name}` or pass --checkpoint PATH."
)


class PredictorSegmenter(Segmenter):
    """A promptable torch engine that keeps its image state in a ``.predictor`` (SAM's or SAM 2's): the model,
    its name and weights, and one predictor per worker thread (:meth:`worker_copy`)."""

    supports_prompts = True

    def __init__(self, predictor: Any, name: str = "sam", random_weights: bool = False,
                 checkpoint: str | None = None, embedding_cache_size: int = 1) -> None:
        self.predictor = predictor
        self.model = predictor.model
        self.name = name
        self.random_weights = random_weights
        self.checkpoint = checkpoint
        self.embedding_cache_size = int(embedding_cache_size)

    @property
    def device(self) -> Any:
        return self.predictor.device

    def _reset_predictor(self, predictor: Any) -> None:
        predictor.reset_image()

    def worker_copy(self) -> PredictorSegmenter:
        """A segmenter on the same model with its own predictor state and embedding cache: one per thread."""
        clone = copy.copy(self)
        clone.predictor = copy.copy(self.predictor)
        self._reset_predictor(clone.predictor)
        clone.clear_embeddings()
        return clone


class SamSegmenter(PredictorSegmenter):
    """Segment Anything on torch as a :class:`~imseg.segmenter.Segmenter` (the rules of ``segment`` live
    there). The engine: ``embed`` runs the image encoder through ``.predictor`` (a
    :class:`~imseg.sam.predictor.SamPredictor`), ``decode`` its prompt encoder and mask decoder, and
    ``everything`` the :class:`~imseg.sam.automatic.SamAutomaticMaskGenerator`.
    """

    def set_image(self, image: Any) -> np.ndarray:
        """Read ``image`` (path, array, PIL, bytes) as RGB and make it ``.predictor``'s current image
        (encoded unless its embedding is cached). Returns the RGB array."""
        rgb = read_image(image)
        embedding = self.embedding_for(rgb)
        self.predictor.use_embedding(embedding.features, embedding.original_size, embedding.input_size)
        return rgb

    def embed(self, rgb: np.ndarray) -> Embedding:
        self.predictor.set_image(rgb)
        return Embedding(self.predictor.features, self.predictor.original_size, self.predictor.input_size)

    def decode(self, embedding: Embedding, prompts: Prompts, multimask_output: bool) -> Candidates:
        self.predictor.use_embedding(embedding.features, embedding.original_size, embedding.input_size)
        if prompts.n_boxes > 1:
            out = self.predictor.predict_batch(boxes=prompts.boxes, multimask_output=multimask_output)
        else:
            box = None if prompts.boxes is None else prompts.boxes[0]
            out = tuple(a[None] for a in self.predictor.predict(prompts.points, prompts.labels, box,
                                                                  prompts.mask_input, multimask_output))
        masks, iou, low = out
        return Candidates(np.asarray(masks, bool), np.asarray(iou, np.float32), np.asarray(low, np.float32))

    def everything(self, rgb: np.ndarray, embedding: Embedding | None = None, **options: Any) -> Masks:
        from .automatic import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator(self.model, **options).generate_masks(rgb, embedding=embedding)


def build_sam_segmenter(spec: ModelSpec, checkpoint: str | os.PathLike | None = None, device: str = "auto",
                        dtype: Any = None, allow_random: bool = False, embedding_cache_size: int = 1,
                        precision: str | None = None, **kwargs: Any) -> SamSegmenter:
    """Registry builder for the SAM family (``imseg.load("sam-vit-b", checkpoint=...)``).

    Without ``checkpoint`` the weights cache is used; if that is empty too, ``allow_random=True``
    builds random weights (with a loud warning), otherwise :class:`CheckpointError` says how to get
    the weights. ``precision`` (``auto``/``fp32``/``bf16``, see :mod:`imseg.precision`) sets the image
    encoder's precision on CPU; the prompt encoder and mask decoder stay float32.
    """
    from ..precision import resolve_precision
    from .checkpoint import build_sam
    from .predictor import SamPredictor

    if kwargs:
        raise ConfigError(f"unknown options for {spec.name}: {sorted(kwargs)}; known: checkpoint, device, dtype, "
                          f"allow_random, embedding_cache_size, precision.")
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
    chosen = resolve_precision(precision, dev)
    model = build_sam(variant, checkpoint).to(dev)
    if chosen == "bf16":  # in place (no float32 copy kept): the predictor feeds the encoder its own dtype
        from ..precision import to_bf16

        to_bf16(model.image_encoder)
    predictor = SamPredictor(model, dtype=dtype)
    segmenter = SamSegmenter(predictor, name=spec.name, random_weights=random_weights,
                             checkpoint=None if checkpoint is None else str(checkpoint),
                             embedding_cache_size=embedding_cache_size)
    segmenter.precision = chosen
    return segmenter
