"""Text prompts: open-vocabulary detectors (Grounding DINO, OWLv2) + SAM, and CLIP names for masks.

Needs ``pip install 'imseg[text]'`` (transformers, open-clip-torch); models load lazily.
"""

from .clip import ClipLabeler, mask_crops
from .detectors import Detector, GroundingDinoDetector, Owlv2Detector, build_detector
from .phrases import parse_phrases
from .segmenter import UNLABELED, TextSegmenter

__all__ = ["ClipLabeler", "Detector", "GroundingDinoDetector", "Owlv2Detector", "TextSegmenter", "UNLABELED",
           "build_detector", "mask_crops", "parse_phrases"]
