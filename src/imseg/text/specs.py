"""Checkpoints for text prompts: hub names and sizes only (no heavy imports), for the weights registry.

They live in the Hugging Face cache (``HF_HOME``, default ``~/.cache/huggingface``); offline, download
them elsewhere with ``hf download HUB_ID`` and copy the cache, or pass a local directory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextWeights:
    """A detector or CLIP checkpoint: ``kind`` picks the wrapper; ``size`` is the download in bytes (approx.)."""

    name: str
    kind: str  # "grounding-dino" | "owlv2" | "open-clip"
    hub_id: str
    size: int
    summary: str
    pretrained: str | None = None  # open_clip's pretrained tag


DETECTOR_WEIGHTS: dict[str, TextWeights] = {w.name: w for w in (
    TextWeights("grounding-dino-tiny", "grounding-dino", "IDEA-Research/grounding-dino-tiny", 689_000_000,
                "Grounding DINO Swin-T: phrases -> boxes (default)"),
    TextWeights("grounding-dino-base", "grounding-dino", "IDEA-Research/grounding-dino-base", 933_000_000,
                "Grounding DINO Swin-B: more accurate, slower"),
    TextWeights("owlv2-base", "owlv2", "google/owlv2-base-patch16-ensemble", 620_000_000,
                "OWLv2 ViT-B/16: one query per phrase"),
    TextWeights("owlv2-large", "owlv2", "google/owlv2-large-patch14-ensemble", 1_750_000_000,
                "OWLv2 ViT-L/14"),
)}

CLIP_WEIGHTS: dict[str, TextWeights] = {w.name: w for w in (
    TextWeights("clip-vit-b-32", "open-clip", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 605_000_000,
                "open_clip ViT-B-32 (laion2b_s34b_b79k): names for everything-mode masks (default)",
                pretrained="laion2b_s34b_b79k"),
    TextWeights("clip-vit-b-16", "open-clip", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", 599_000_000,
                "open_clip ViT-B-16 (laion2b_s34b_b88k)", pretrained="laion2b_s34b_b88k"),
)}

# open_clip model names for the CLIP entries above
OPEN_CLIP_MODELS = {"clip-vit-b-32": "ViT-B-32", "clip-vit-b-16": "ViT-B-16"}
