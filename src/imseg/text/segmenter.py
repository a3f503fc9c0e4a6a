"""``TextSegmenter``: phrases -> detector boxes -> SAM masks, and CLIP names for everything-mode masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..io import read_image
from ..masks import Masks
from .phrases import parse_phrases

UNLABELED = "unlabeled"


class TextSegmenter:
    """Text prompts on top of a promptable segmenter (SAM).

    ``segment(image, text="horse. rider.")``: ``detector.detect`` turns the phrases into boxes, which
    are filtered (``min_score``, NMS per phrase at ``nms_threshold``, NMS across phrases at
    ``cross_nms_threshold``, at most ``max_per_phrase`` boxes per phrase), then SAM decodes all boxes in
    one batched pass. ``segment(image, classify=["horse", "grass"])``: SAM's everything mode, each mask
    named by CLIP (``labeler``) when its probability reaches ``label_threshold``.

    Result labels: ``class_names = ["unlabeled", *phrases]`` and ``labels`` index it (0 = no name).
    Text mode scores are ``detector score * clip(SAM predicted IoU, 0, 1)`` (fields ``detector_score``,
    ``sam_iou``, ``box_prompt`` XYXY); classify mode keeps SAM's scores and adds ``label_probability``.

    Args:
        segmenter: anything with ``segment(image, box=(B, 4)) -> Masks`` (``supports_prompts``) for text
            mode; any segmenter whose everything mode returns masks for classify mode.
        detector: an object with ``detect(rgb, phrases)``, a name from
            :data:`imseg.text.specs.DETECTOR_WEIGHTS` (e.g. ``"grounding-dino-tiny"``, ``"owlv2-base"``), or None.
        labeler: a :class:`~imseg.text.clip.ClipLabeler`, a name from ``CLIP_WEIGHTS``, or None.
    """

    def __init__(self, segmenter: Any, detector: Any = None, labeler: Any = None, *, min_score: float = 0.0,
                 nms_threshold: float = 0.5, cross_nms_threshold: float | None = 0.8, max_per_phrase: int = 20,
                 label_threshold: float = 0.5, device: Any = "auto") -> None:
        if isinstance(detector, str):
            from .detectors import build_detector

            detector = build_detector(detector, device=device)
        if isinstance(labeler, str):
            from .clip import ClipLabeler

            labeler = ClipLabeler.from_pretrained(labeler, device=device)
        if detector is not None and not callable(getattr(detector, "detect", None)):
            raise ConfigError(f"detector must have detect(rgb, phrases); got {type(detector).__name__}.")
        if detector is not None and not getattr(segmenter, "supports_prompts", False):
            raise ConfigError(f"text prompts need a segmenter that takes box prompts (a SAM model); "
                              f"{getattr(segmenter, 'name', type(segmenter).__name__)!r} does not. Load e.g. "
                              f"imseg.load('mobile-sam').")
        for name, value in (("nms_threshold", nms_threshold), ("label_threshold", label_threshold),
                            ("cross_nms_threshold", 1.0 if cross_nms_threshold is None else cross_nms_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]; got {value}.")
        if int(max_per_phrase) < 1:
            raise ConfigError(f"max_per_phrase must be at least 1; got {max_per_phrase}.")
        self.segmenter = segmenter
        self.detector = detector
        self.labeler = labeler
        self.min_score = float(min_score)
        self.nms_threshold = float(nms_threshold)
        self.cross_nms_threshold = None if cross_nms_threshold is None else float(cross_nms_threshold)
        self.max_per_phrase = int(max_per_phrase)
        self.label_threshold = float(label_threshold)

    def segment(self, image: Any, *, text: str | Sequence[str] | None = None,
                classify: Sequence[str] | None = None, **kwargs: Any) -> Masks:
        """Masks for the phrases in ``text``, or everything-mode masks named from ``classify``."""
        if text is not None and classify is not None:
            raise ConfigError("give text= (find these phrases) or classify= (name every mask), not both.")
        if text is not None:
            if kwargs:
                raise ConfigError(f"text prompts take no other prompts or options; got {sorted(kwargs)}.")
            return self.segment_text(image, text)
        if classify is not None:
            return self.classify(image, classify, **kwargs)
        return self.segmenter.segment(image, **kwargs)

    def detect(self, rgb: np.ndarray, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detector's boxes after clipping to the image, ``min_score``, NMS and ``max_per_phrase``."""
        if self.detector is None:
            raise ConfigError("text= needs a detector: TextSegmenter(segmenter, detector='grounding-dino-tiny').")
        boxes, scores, index = _checked(self.detector.detect(rgb, list(phrases)), len(phrases))
        h, w = rgb.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        ok = (scores >= self.min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, index = boxes[ok], scores[ok], index[ok]
        keep = self._nms(boxes, scores, index)
        return boxes[keep], scores[keep], index[keep]

    def _nms(self, boxes: np.ndarray, scores: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Indices kept, best score first: NMS per phrase, across phrases, then the per-phrase limit."""
        import torch
        from torchvision.ops import batched_nms, nms

        b, s = torch.as_tensor(boxes), torch.as_tensor(scores)
        keep = batched_nms(b, s, torch.as_tensor(index), self.nms_threshold)
        if self.cross_nms_threshold is not None and len(keep):
            keep = keep[nms(b[keep], s[keep], self.cross_nms_threshold)]
        keep = keep.numpy()
        rank = np.zeros(len(keep), np.int64)
        for k in np.unique(index[keep]):
            sel = index[keep] == k
            rank[sel] = np.arange(sel.sum())  # keep is sorted by score, so this is the rank within the phrase
        return keep[rank < self.max_per_phrase]

    def segment_text(self, image: Any, text: str | Sequence[str]) -> Masks:
        """Masks of the phrases in ``text`` (see the class docstring)."""
        phrases = parse_phrases(text)
        rgb = read_image(image)
        boxes, det_scores, index = self.detect(rgb, phrases)
        return labelled_masks(self.masks_for_boxes(rgb, boxes), phrases, boxes, det_scores, index)

    def masks_for_boxes(self, rgb: np.ndarray, boxes: np.ndarray) -> Masks:
        """One SAM mask per XYXY box, all boxes in one batched decoder call, in the order of ``boxes``."""
        if len(boxes) == 0:
            return Masks(np.zeros((0, *rgb.shape[:2]), bool), image_size=rgb.shape[:2])
        if len(boxes) == 1:
            return self.segmenter.segment(rgb, box=boxes[0])
        out = self.segmenter.segment(rgb, box=boxes)
        order = out.fields.get("prompt_index")
        if len(out) != len(boxes) or (order is not None and not np.array_equal(order, np.arange(len(boxes)))):
            raise ConfigError(f"the segmenter returned {len(out)} masks for {len(boxes)} boxes; it must return one "
                              f"mask per box, in order.")
        return out

    def classify(self, image: Any, names: Sequence[str], **kwargs: Any) -> Masks:
        """Everything-mode masks, each labelled with its most probable name (0 = below ``label_threshold``)."""
        from .clip import mask_crops

        if self.labeler is None:
            raise ConfigError("classify= needs a CLIP labeler: TextSegmenter(segmenter, labeler='clip-vit-b-32').")
        if isinstance(names, str):
            raise PromptError("classify takes a list of names, e.g. classify=['horse', 'grass', 'sky'].")
        names = parse_phrases(list(names))
        rgb = read_image(image)
        masks = self.segmenter.segment(rgb, **kwargs)
        probs = self.labeler.probabilities(mask_crops(rgb, masks.masks, masks.boxes), names)
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        best_p = probs[np.arange(len(best)), best] if len(probs) else np.zeros(0, np.float32)
        labels = np.where(best_p >= self.label_threshold, best + 1, 0)
        fields = dict(masks.fields)
        fields["label_probability"] = best_p
        return Masks(masks.masks, scores=masks.scores, boxes=masks.boxes, areas=masks.areas, labels=labels,
                     class_names=[UNLABELED, *names], image_size=masks.image_size, **fields)


def labelled_masks(masks: Masks, phrases: Sequence[str], boxes: np.ndarray, det_scores: np.ndarray,
                   index: np.ndarray) -> Masks:
    """SAM's masks for the detected ``boxes`` (one per box, in order) labelled with their phrases, scored
    ``detector score * clip(SAM predicted IoU, 0, 1)``."""
    iou = masks.scores.astype(np.float32)
    return Masks(masks.masks, scores=det_scores * np.clip(iou, 0.0, 1.0), image_size=masks.image_size,
                 labels=index + 1, class_names=[UNLABELED, *phrases], detector_score=det_scores,
                 sam_iou=iou, box_prompt=boxes.reshape(-1, 4))


def _checked(result: Any, n_phrases: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's (boxes, scores, phrase_index) as arrays, or a :class:`ConfigError` saying what is off."""
    try:
        boxes, scores, index = result
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        index = np.asarray(index).reshape(-1).astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detector.detect must return (boxes (N, 4), scores (N,), phrase_index (N,)); "
                          f"got {type(result).__name__} ({exc}).") from exc
    if not len(boxes) == len(scores) == len(index):
        raise ConfigError(f"detector.detect returned {len(boxes)} boxes, {len(scores)} scores and {len(index)} "
                          f"phrase indices; they must match.")
    if len(index) and (index.min() < 0 or index.max() >= n_phrases):
        raise ConfigError(f"detector.detect returned phrase indices outside 0..{n_phrases - 1}.")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ConfigError("detector.detect returned NaN or infinite boxes or scores.")
    return boxes, scores, index
