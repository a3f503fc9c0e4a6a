"""imseg: image segmentation in one place.

Public API: :func:`load`, :func:`segment`, :func:`read_image`, :class:`Masks`, :mod:`imseg.errors`.
Heavy libraries (torch, onnxruntime, lightning) are imported only when a model is built.
"""

from __future__ import annotations

from . import errors
from .io import read_image
from .masks import Masks
from .registry import Segmenter, list_models, load

__version__ = "0.1.0"

__all__ = ["Masks", "Segmenter", "errors", "list_models", "load", "read_image", "segment", "__version__"]


def segment(image, model: str = "sam-vit-b", checkpoint=None, **prompts) -> Masks:
    """One-call form: ``imseg.segment("photo.jpg", model="otsu")`` -> :class:`Masks`."""
    return load(model, checkpoint=checkpoint).segment(image, **prompts)
