"""Superpixels and graph over-segmentation: SLIC, Felzenszwalb, Quickshift -> int32 label map (H, W), 1..K.

Colour methods: they read the RGB ``uint8`` image (gray arrays are repeated to 3 channels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._input import rgb

__all__ = ["felzenszwalb", "quickshift", "slic"]


def slic(image: Any, n_segments: int = 100, compactness: float = 10.0, sigma: float = 1.0) -> np.ndarray:
    """SLIC superpixels in CIELAB -> int32 label map (H, W), labels 1..K.

    ``n_segments`` is approximate; ``compactness`` trades colour similarity (low) for square,
    regular cells (high); ``sigma`` pre-smoothing in pixels.
    """
    from skimage import segmentation

    labels = segmentation.slic(rgb(image), n_segments=int(n_segments), compactness=compactness, sigma=sigma, start_label=1)
    return labels.astype(np.int32)


def felzenszwalb(image: Any, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation -> int32 label map (H, W), labels 1..K.

    ``scale``: larger = larger regions; ``sigma``: pre-smoothing in pixels; ``min_size``: smallest
    region in pixels.
    """
    from skimage import segmentation

    labels = segmentation.felzenszwalb(rgb(image), scale=scale, sigma=sigma, min_size=int(min_size))
    return (labels + 1).astype(np.int32)


def quickshift(
    image: Any, kernel_size: float = 5.0, max_dist: float = 10.0, ratio: float = 0.5, sigma: float = 0.0
) -> np.ndarray:
    """Quickshift mode seeking in colour+position -> int32 label map (H, W), labels 1..K.

    ``kernel_size``: density kernel width in pixels; ``max_dist``: cut-off for linking (larger =
    fewer regions); ``ratio`` in [0, 1]: weight of colour against position.
    """
    from skimage import segmentation

    scaled = rgb(image).astype(np.float64) / 255.0
    labels = segmentation.quickshift(scaled, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, sigma=sigma)
    return (labels + 1).astype(np.int32)
