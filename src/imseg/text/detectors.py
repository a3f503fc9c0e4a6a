"""Open-vocabulary box detectors from ``transformers``: phrases -> XYXY boxes, scores, phrase indices.

Any object with ``detect(rgb, phrases) -> (boxes (N, 4) float XYXY pixels, scores (N,), phrase_index (N,))``
can drive :class:`~imseg.text.segmenter.TextSegmenter`; the two here wrap a ``transformers`` model and
its processor. Each encodes the image once per ``detect`` call, whatever the number of phrases.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, PromptError, WeightsError, require
from .phrases import grounding_text, phrase_of_token, phrase_scores


class Detector(Protocol):
    """The detector interface :class:`~imseg.text.segmenter.TextSegmenter` needs."""

    def detect(self, rgb: np.ndarray, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ...


def _resolve_device(device: Any, model: Any) -> Any:
    import torch

    if device is None:
        return next(model.parameters()).device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pretrained(name_or_path: str | os.PathLike, what: str) -> tuple[Any, Any]:
    """(model, processor) for a hub name or local directory, with a :class:`WeightsError` when absent."""
    transformers = require("transformers", "text", "text prompts")
    source = str(name_or_path)
    try:
        processor = transformers.AutoProcessor.from_pretrained(source)
        model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(source)
    except (OSError, ValueError) as exc:
        hf_home = os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface"))
        raise WeightsError(
            f"the {what} weights {source!r} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Offline, place them in the Hugging Face cache (HF_HOME={hf_home}) by running "
            f"`hf download {source}` where there is internet, or pass a local directory holding the model's "
            f"config.json, weights (model.safetensors) and processor/tokenizer files."
        ) from exc
    return model.eval(), processor


class GroundingDinoDetector:
    """Grounding DINO: one caption ``"horse. rider."`` for all phrases, one forward pass per image.

    Boxes whose best token probability is below ``box_threshold`` are dropped (as in the processor's
    ``post_process_grounded_object_detection``); each kept box goes to the phrase holding its highest
    token probability, which is its score and must reach ``text_threshold``.

    Args:
        model: a ``GroundingDinoForObjectDetection``; processor: its ``GroundingDinoProcessor``.
    """

    def __init__(self, model: Any, processor: Any, box_threshold: float = 0.35, text_threshold: float = 0.25,
                 device: Any = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.device = _resolve_device(device, model)
        self.model.to(self.device)
        self.max_text_len = int(getattr(model.config, "max_text_len", 256))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "IDEA-Research/grounding-dino-tiny",
                        **kwargs: Any) -> GroundingDinoDetector:
        model, processor = load_pretrained(name_or_path, "Grounding DINO")
        return cls(model, processor, **kwargs)

    def _caption_ids(self, phrases: Sequence[str]) -> tuple[str, np.ndarray]:
        caption = grounding_text(phrases)
        tokenizer = self.processor.tokenizer
        ids = tokenizer(caption)["input_ids"]
        if len(ids) > self.max_text_len:
            raise PromptError(f"the text is {len(ids)} tokens long but Grounding DINO reads at most "
                              f"{self.max_text_len}; give fewer or shorter phrases (or call segment once per group).")
        separators = {tokenizer.convert_tokens_to_ids(".")}
        return caption, phrase_of_token(ids, separators, set(tokenizer.all_special_ids))

    def detect(self, rgb: np.ndarray, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) XYXY pixels, scores (N,) and phrase indices (N,) of ``phrases`` in ``rgb``."""
        import torch

        caption, token_phrase = self._caption_ids(phrases)
        inputs = self.processor(images=rgb, text=caption, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        h, w = rgb.shape[:2]
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(h, w)])[0]
        probs = outputs.logits[0].sigmoid()
        keep = probs.max(dim=-1).values > self.box_threshold  # the processor's own box filter
        per_phrase = phrase_scores(probs[keep].float().cpu().numpy(), token_phrase, len(phrases))
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        if len(boxes) != len(per_phrase):
            raise ConfigError(f"Grounding DINO post-processing kept {len(boxes)} boxes where the scores keep "
                              f"{len(per_phrase)}; this transformers version is not supported.")
        index = per_phrase.argmax(axis=1) if len(per_phrase) else np.zeros(0, np.int64)
        scores = per_phrase[np.arange(len(index)), index]
        ok = scores > self.text_threshold
        return boxes[ok], scores[ok].astype(np.float32), index[ok].astype(np.int64)


class Owlv2Detector:
    """OWLv2: one text query per phrase, the image encoded once per call.

    ``box_threshold`` bounds the query score (the processor's ``threshold``); each box keeps its
    best query, as ``post_process_grounded_object_detection`` does.
    """

    def __init__(self, model: Any, processor: Any, box_threshold: float = 0.1, device: Any = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.box_threshold = float(box_threshold)
        self.device = _resolve_device(device, model)
        self.model.to(self.device)
        self.max_text_len = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "google/owlv2-base-patch16-ensemble",
                        **kwargs: Any) -> Owlv2Detector:
        model, processor = load_pretrained(name_or_path, "OWLv2")
        return cls(model, processor, **kwargs)

    def detect(self, rgb: np.ndarray, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) XYXY pixels, scores (N,) and phrase indices (N,) of ``phrases`` in ``rgb``."""
        import torch

        for phrase in phrases:
            n = len(self.processor.tokenizer(phrase)["input_ids"])
            if n > self.max_text_len:
                raise PromptError(f"phrase {phrase!r} is {n} tokens long but OWLv2 reads at most "
                                  f"{self.max_text_len} per phrase; shorten it.")
        # padded to the text encoder's length, as OWL-ViT was trained (the pad token is end-of-text)
        inputs = self.processor(text=[list(phrases)], images=rgb, padding="max_length", max_length=self.max_text_len,
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        h, w = rgb.shape[:2]
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.box_threshold, target_sizes=[(h, w)])[0]
        return (result["boxes"].float().cpu().numpy().reshape(-1, 4),
                result["scores"].float().cpu().numpy().astype(np.float32),
                result["labels"].cpu().numpy().astype(np.int64))


DETECTORS = {"grounding-dino": GroundingDinoDetector, "owlv2": Owlv2Detector}


def build_detector(name: str, device: Any = "auto", **kwargs: Any) -> Any:
    """A detector from a name in :data:`imseg.text.specs.DETECTOR_WEIGHTS`, or ``"grounding-dino:PATH_OR_HUB_ID"``
    / ``"owlv2:PATH_OR_HUB_ID"`` for other checkpoints."""
    from .specs import DETECTOR_WEIGHTS

    kind, _, source = name.partition(":")
    if source:
        if kind not in DETECTORS:
            raise ConfigError(f"unknown detector kind {kind!r} in {name!r}; use one of {sorted(DETECTORS)}.")
    else:
        spec = DETECTOR_WEIGHTS.get(name.strip().lower())
        if spec is None:
            raise ConfigError(f"unknown detector {name!r}; known: {sorted(DETECTOR_WEIGHTS)}, or "
                              f"'grounding-dino:HUB_ID_OR_DIR' / 'owlv2:HUB_ID_OR_DIR'.")
        kind, source = spec.kind, spec.hub_id
    return DETECTORS[kind].from_pretrained(source, device=device, **kwargs)
