"""Edge-based segmentation: Canny outlines closed and filled into regions -> int32 label map (H, W)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..postprocess import fill_holes, remove_small_labels
from ._input import gray, unit_range

__all__ = ["canny"]


def canny(
    image: Any,
    sigma: float = 2.0,
    low: float | None = None,
    high: float | None = None,
    close_radius: int = 1,
    min_area: int = 16,
) -> np.ndarray:
    """Canny edges, closed and hole-filled into regions -> int32 label map (H, W), 0 = background.

    Args:
        sigma: Gaussian smoothing of the edge detector, pixels.
        low, high: hysteresis thresholds on the gradient of the image stretched to [0, 1]
            (scikit-image defaults when None).
        close_radius: morphological closing radius (pixels) that bridges small gaps in outlines.
        min_area: drop regions smaller than this many pixels.
    """
    from skimage import feature, measure, morphology

    edges = feature.canny(unit_range(gray(image)), sigma=sigma, low_threshold=low, high_threshold=high)
    if close_radius > 0:
        # scikit-image's closing reflects at the image edge, so outlines that run along the border
        # stay closed for the hole filling; imseg.postprocess.closing pads with background on purpose.
        edges = morphology.closing(edges, morphology.disk(int(close_radius))).astype(bool)
    labels = measure.label(fill_holes(edges), connectivity=1).astype(np.int32)
    return remove_small_labels(labels, min_area)
