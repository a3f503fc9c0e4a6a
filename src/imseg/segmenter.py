"""The :class:`Segmenter` base: the one ``segment()`` and the engine interface behind it.

``Segmenter.segment(image, ...)`` reads the image once (:func:`imseg.io.read_image`), checks the
prompts once (:meth:`Segmenter.check_prompts`, no image needed), keeps the image embeddings of the
last images in a small LRU keyed by the image's content, and asks the engine for the work:

* promptable (SAM) engines implement ``embed(rgb) -> Embedding``, ``decode(embedding, prompts,
  multimask_output) -> Candidates`` and ``everything(rgb, embedding=None, **options) -> Masks``;
* dense (semantic) engines subclass :class:`DenseSegmenter` and implement
  ``probabilities(rgb, **options) -> (C, H, W) float``.

The rules on which candidates come back, their order, scores and fields live here, so every
engine (torch, ONNX Runtime) gives the same :class:`~imseg.masks.Masks` for the same model and
prompts. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, PromptError
from .io import read_image
from .masks import Masks
from .prompts import USER_LABELS, prompt_array, validate_box, validate_points

#: class names taken as "background" when they name a dense model's class 0 (lower-cased, stripped)
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "__background__", "backdrop"})


@dataclass(frozen=True)
class Prompts:
    """Checked prompts in original-image pixels.

    ``points`` (N, 2) float32 XY and ``labels`` (N,) int32 (1 foreground, 0 background), or None;
    ``boxes`` (B, 4) float32 XYXY, or None; ``mask_input`` (1, h, w) float32 low-resolution logits
    (a previous ``low_res_logits`` entry), or None.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @property
    def n_boxes(self) -> int:
        return 0 if self.boxes is None else len(self.boxes)

    @property
    def ambiguous(self) -> bool:
        """One point and nothing else: SAM's multimask output resolves it best (the official advice)."""
        return self.points is not None and len(self.points) == 1 and self.boxes is None and self.mask_input is None


@dataclass
class Embedding:
    """An engine's image embedding of one image: ``features`` (engine-specific: a torch tensor or a
    numpy array, (1, 256, 64, 64) for SAM), ``original_size`` (H, W) of the image and ``input_size``
    (h, w) of the resized image the encoder saw."""

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        f = self.features
        if hasattr(f, "element_size") and hasattr(f, "nelement"):
            return int(f.element_size() * f.nelement())
        return int(getattr(f, "nbytes", 0))


@dataclass
class Candidates:
    """Decoder output for B prompt sets with C candidates each, as numpy: ``masks`` (B, C, H, W) bool,
    ``iou`` (B, C) float32 predicted IoU, ``low_res_logits`` (B, C, h, w) float32."""

    masks: np.ndarray
    iou: np.ndarray
    low_res_logits: np.ndarray


def _are_names(labels: Any) -> bool:
    """Whether ``labels`` is a list of class names (strings) rather than point labels."""
    return isinstance(labels, (list, tuple)) and len(labels) > 0 and all(isinstance(x, str) for x in labels)


def content_key(rgb: np.ndarray) -> str:
    """A key for an image's content: blake2b of its bytes plus its shape."""
    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16).hexdigest() + str(rgb.shape)


def check_mask_input(mask_input: Any) -> np.ndarray:
    """A low-resolution mask prompt as (1, h, w) float32: from (h, w) or (1, h, w) finite numbers."""
    arr = prompt_array(mask_input, "mask_input")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[1] != arr.shape[2] or arr.shape[1] == 0:
        raise PromptError(f"mask_input must be one square low-res logit map, shape (1, 256, 256) for SAM (a previous "
                          f"result's low_res_logits[i]); got shape {tuple(arr.shape)}.")
    if not np.isfinite(arr).all():
        raise PromptError("mask_input contains NaN or infinite values.")
    return arr


class Segmenter:
    """Base class of everything ``imseg.load`` returns.

    ``segment(image)`` with no prompt is everything mode (SAM: the automatic mask generator, dense
    models: one mask per class present). With ``points``/``labels``/``box``/``mask_input`` it is
    prompt mode (segmenters without prompt support raise :class:`~imseg.errors.PromptError`).

    Prompt-mode rules, the same on every engine:

    * the best candidate (highest predicted IoU) is returned; ``multimask=True`` returns SAM's three
      candidates sorted by predicted IoU, best first;
    * a single point with no box or mask_input is ambiguous: SAM's three-way output is decoded and
      the best kept (``multimask=False``), as the official SAM advises;
    * several boxes (B, 4) give one mask per box (the best of its candidates with ``multimask=True``,
      SAM's single-mask output otherwise), in box order, with the field ``prompt_index``; they cannot
      be combined with points or mask_input;
    * ``scores`` are the predicted IoU; every result carries ``low_res_logits`` (N, 256, 256), which
      can be fed back as ``mask_input``;
    * point labels are 1 (foreground) or 0 (background).

    Image embeddings are cached by image content (``embedding_cache_size`` images, default 1), so a
    prompt call after any call on the same image does not encode it again.
    """

    name: str = "segmenter"
    supports_prompts: bool = False
    embedding_cache_size: int = 1

    # ------------------------------------------------------------------ engine interface
    def embed(self, rgb: np.ndarray) -> Embedding:
        """The image embedding of an RGB uint8 (H, W, 3) image (promptable engines)."""
        raise NotImplementedError(f"{type(self).__name__} has no image encoder.")

    def decode(self, embedding: Embedding, prompts: Prompts, multimask_output: bool) -> Candidates:
        """Raw decoder candidates for ``prompts`` on ``embedding``: one prompt set (B = 1), or B boxes;
        C = 3 with ``multimask_output`` (SAM's multimask tokens), else 1 (promptable engines)."""
        raise NotImplementedError(f"{type(self).__name__} takes no prompts.")

    def everything(self, rgb: np.ndarray, embedding: Embedding | None = None, **options: Any) -> Masks:
        """Masks for everything in ``rgb``; ``embedding`` (if given) is the whole image's embedding."""
        raise NotImplementedError(f"{type(self).__name__} has no everything mode.")

    # ------------------------------------------------------------------ the one segment()
    def check_prompts(self, points: Any = None, labels: Any = None, box: Any = None,
                      mask_input: Any = None) -> Prompts | None:
        """Every check that needs no image (counts, 0/1 labels, NaN, inverted boxes, shapes). Returns the
        prompts as arrays, or None when none was given; raises :class:`PromptError` otherwise."""
        coords, labs = validate_points(points, labels, None, allowed_labels=USER_LABELS)
        boxes = validate_box(box, None)
        mask = None if mask_input is None else check_mask_input(mask_input)
        if coords is None and boxes is None and mask is None:
            return None
        if not self.supports_prompts:
            raise PromptError(f"{self.name}: this model takes no prompts; call segment(image) without "
                              f"points/labels/box/mask_input.")
        if boxes is not None:
            boxes = boxes.reshape(-1, 4)
            if len(boxes) == 0:
                raise PromptError("box is an empty list; give (x0, y0, x1, y1) or leave box out.")
            if len(boxes) > 1 and (coords is not None or mask is not None):
                raise PromptError("several boxes cannot be combined with points or mask_input; give one box, "
                                  "or call segment once per box.")
        return Prompts(coords, labs, boxes, mask)

    def segment(self, image: Any, *, points: Any = None, labels: Any = None, box: Any = None,
                mask_input: Any = None, multimask: bool = False, **options: Any) -> Masks:
        """Masks for ``image`` (a path, array, PIL image or bytes): see the class docstring for the rules.

        ``options`` go to everything mode (e.g. SAM's ``points_per_side``; dense models'
        ``include_background``, ``tta``, ``scales``); prompt mode takes none.

        ``labels`` given as names without points (``labels=["horse", "grass", "sky"]``) is everything mode
        with names: CLIP (``labeler=``, default ``"clip-vit-b-32"``; needs ``imseg[text]``) scores each
        mask's crop against the names, as :class:`imseg.text.TextSegmenter` ``classify`` does.
        """
        if _are_names(labels) and points is None and box is None and mask_input is None:
            return self._named_everything(image, list(labels), **options)
        prompts = self.check_prompts(points, labels, box, mask_input)
        if prompts is not None and options:
            raise ConfigError(f"unexpected options for prompt mode: {sorted(options)}.")
        rgb = read_image(image)
        if prompts is None:
            return self._segment_whole(rgb, **options)
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        validate_points(prompts.points, prompts.labels, size, allowed_labels=USER_LABELS)
        validate_box(prompts.boxes, size)
        return self._prompt_masks(self.embedding_for(rgb), prompts, multimask)

    def _named_everything(self, image: Any, names: list[str], labeler: Any = "clip-vit-b-32", **options: Any) -> Masks:
        """Everything mode, each mask named from ``names`` by a CLIP ``labeler`` (a name or a built labeler)."""
        from .text import TextSegmenter

        cache = self.__dict__.setdefault("_labelers", {})
        key = labeler if isinstance(labeler, str) else id(labeler)
        if key not in cache:
            cache[key] = TextSegmenter(self, labeler=labeler)
        return cache[key].segment(image, classify=names, **options)

    def _segment_whole(self, rgb: np.ndarray, **options: Any) -> Masks:
        """No prompt: everything mode on the (cached) whole-image embedding."""
        return self.everything(rgb, embedding=self.embedding_for(rgb), **options)

    def _prompt_masks(self, embedding: Embedding, prompts: Prompts, multimask: bool) -> Masks:
        size = embedding.original_size
        if prompts.n_boxes > 1:
            c = self.decode(embedding, prompts, multimask_output=multimask)
            best = c.iou.argmax(axis=1)
            rows = np.arange(len(best))
            return Masks(c.masks[rows, best], scores=c.iou[rows, best], image_size=size,
                         low_res_logits=c.low_res_logits[rows, best], prompt_index=rows)
        c = self.decode(embedding, prompts, multimask_output=multimask or prompts.ambiguous)
        masks, iou, low = c.masks[0], c.iou[0], c.low_res_logits[0]
        order = np.argsort(-iou, kind="stable")
        if not multimask:
            order = order[:1]
        return Masks(masks[order], scores=iou[order], image_size=size, low_res_logits=low[order])

    # ------------------------------------------------------------------ embedding cache
    def embedding_for(self, rgb: np.ndarray) -> Embedding:
        """``embed(rgb)``, served from the content-keyed LRU of the last ``embedding_cache_size`` images."""
        size = int(self.embedding_cache_size)
        if size < 0:
            raise ConfigError(f"embedding_cache_size must be >= 0, got {size}.")
        cache: OrderedDict[str, Embedding] = self.__dict__.setdefault("_embeddings", OrderedDict())
        while len(cache) > size:  # the size may have been lowered since the last call
            cache.popitem(last=False)
        key = content_key(rgb)
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        embedding = self.embed(rgb)
        if size > 0:
            if len(cache) >= size:
                cache.popitem(last=False)
            cache[key] = embedding
        return embedding

    def clear_embeddings(self) -> None:
        """Forget the cached image embeddings."""
        self.__dict__.pop("_embeddings", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class DenseSegmenter(Segmenter):
    """A dense (semantic) model: ``probabilities(rgb, **options) -> (C, H, W)`` is the engine.

    ``segment(image)`` returns one mask per class present in the argmax map, in class order,
    ``labels`` = class ids, ``scores`` = the class's mean probability over its mask. Class 0 is left
    out when it is named background (:data:`BACKGROUND_NAMES`) unless ``include_background=True``;
    ``include_background=False`` leaves class 0 out whatever its name.
    """

    supports_prompts = False
    class_names: list[str]

    def probabilities(self, rgb: np.ndarray, **options: Any) -> np.ndarray:
        raise NotImplementedError

    def has_background(self) -> bool:
        """Whether class 0 is named as background."""
        names = getattr(self, "class_names", None) or []
        return bool(names) and names[0].strip().lower() in BACKGROUND_NAMES

    def _segment_whole(self, rgb: np.ndarray, include_background: bool | None = None, **options: Any) -> Masks:
        probs = np.asarray(self.probabilities(rgb, **options))
        label_map = probs.argmax(0)
        if include_background is None:
            include_background = not self.has_background()
        present = [int(c) for c in np.unique(label_map) if include_background or c != 0]
        masks = np.stack([label_map == c for c in present]) if present else np.zeros((0, *label_map.shape), bool)
        scores = np.asarray([probs[c][m].mean() for c, m in zip(present, masks, strict=True)], np.float32)
        return Masks(masks, scores=scores, labels=present, class_names=self.class_names, image_size=label_map.shape)
