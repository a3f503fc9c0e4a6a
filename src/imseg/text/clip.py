"""CLIP names for masks: each mask's crop scored against a list of names with ``open_clip``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError, WeightsError, require

# CLIP's normalisation mean as uint8: pixels outside a mask become this, i.e. zero after preprocessing
_MEAN_RGB = (122, 116, 104)


def mask_crops(rgb: np.ndarray, masks: np.ndarray, boxes_xywh: np.ndarray, margin: float = 0.1,
               blank_background: bool = True) -> list[np.ndarray]:
    """One RGB crop per mask: its box grown by ``margin`` (a fraction of its size), clipped to the image,
    with the pixels outside the mask set to CLIP's mean colour when ``blank_background``."""
    h, w = rgb.shape[:2]
    crops = []
    for mask, (x, y, bw, bh) in zip(masks, boxes_xywh, strict=True):
        dx, dy = margin * bw, margin * bh
        x0, y0 = max(0, int(np.floor(x - dx))), max(0, int(np.floor(y - dy)))
        x1, y1 = min(w, int(np.ceil(x + bw + dx))), min(h, int(np.ceil(y + bh + dy)))
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        crop = rgb[y0:y1, x0:x1].copy()
        if blank_background:
            crop[~mask[y0:y1, x0:x1]] = _MEAN_RGB
        crops.append(crop)
    return crops


class ClipLabeler:
    """Scores images against names with an ``open_clip`` model: ``probabilities(crops, names) -> (N, K)``.

    The names are encoded once per call (as ``template.format(name)``), the crops in batches of
    ``batch_size``; probabilities are the softmax over names of CLIP's scaled cosine similarities.

    Args:
        model: an ``open_clip`` CLIP model; preprocess: its image transform (PIL -> tensor);
        tokenizer: its tokenizer (list[str] -> (K, context) ids).
    """

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, template: str = "a photo of a {}.",
                 batch_size: int = 32, device: Any = None) -> None:
        import torch

        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = int(batch_size)
        self.device = next(model.parameters()).device if device is None else torch.device(device)
        self.model.to(self.device)
        self.context_length = int(getattr(model, "context_length", 0) or getattr(tokenizer, "context_length", 77))

    @classmethod
    def from_pretrained(cls, name: str = "clip-vit-b-32", device: Any = "auto", **kwargs: Any) -> ClipLabeler:
        """A labeler from :data:`imseg.text.specs.CLIP_WEIGHTS` (open_clip downloads to the HF cache)."""
        import torch

        from .specs import CLIP_WEIGHTS, OPEN_CLIP_MODELS

        open_clip = require("open_clip", "text", "naming masks with CLIP")
        spec = CLIP_WEIGHTS.get(name)
        if spec is None:
            raise ConfigError(f"unknown CLIP checkpoint {name!r}; known: {sorted(CLIP_WEIGHTS)}.")
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                OPEN_CLIP_MODELS[name], pretrained=spec.pretrained, device=dev)
        except (OSError, RuntimeError, ValueError) as exc:
            raise WeightsError(
                f"the CLIP weights {spec.hub_id!r} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}). "
                f"Offline, place them in the Hugging Face cache (HF_HOME) with `hf download {spec.hub_id}` "
                f"where there is internet, then copy the cache here.") from exc
        return cls(model, preprocess, open_clip.get_tokenizer(OPEN_CLIP_MODELS[name]), device=dev, **kwargs)

    def _text_tokens(self, names: Sequence[str]) -> Any:
        prompts = [self.template.format(n) for n in names]
        tokens = self.tokenizer(prompts)
        # open_clip pads with 0 and, when it truncates, ends the row with end-of-text: a full row was cut
        too_long = [n for n, t in zip(names, tokens, strict=True) if int(t[-1]) != 0]
        if too_long:
            raise PromptError(f"name {too_long[0]!r} is longer than CLIP's {tokens.shape[-1]}-token text limit "
                              f"(with the template {self.template!r}); shorten it.")
        return tokens.to(self.device)

    def probabilities(self, crops: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        """(N, K) float32: for each crop, the probability of each name (rows sum to 1)."""
        import torch
        from PIL import Image

        if not names:
            raise PromptError("classify needs at least one name, e.g. classify=['horse', 'grass', 'sky'].")
        if not crops:
            return np.zeros((0, len(names)), np.float32)
        with torch.inference_mode():
            text = self.model.encode_text(self._text_tokens(names)).float()
            text = text / text.norm(dim=-1, keepdim=True)
            feats = []
            for s in range(0, len(crops), self.batch_size):
                batch = torch.stack([self.preprocess(Image.fromarray(c)) for c in crops[s : s + self.batch_size]])
                f = self.model.encode_image(batch.to(self.device)).float()
                feats.append(f / f.norm(dim=-1, keepdim=True))
            image = torch.cat(feats)
            scale = self.model.logit_scale.exp().float()
            return (scale * image @ text.T).softmax(dim=-1).cpu().numpy().astype(np.float32)
