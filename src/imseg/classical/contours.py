"""Active contours: Chan-Vese two-phase level set -> bool mask (H, W)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._input import gray, is_constant, unit_range

__all__ = ["chan_vese"]


def chan_vese(image: Any, mu: float = 0.25, max_num_iter: int = 200, tol: float = 1e-3, invert: bool = False) -> np.ndarray:
    """Chan-Vese two-phase active contour -> bool mask (H, W), foreground = the brighter phase.

    Args:
        mu: edge-length weight (larger = smoother, rounder outline), for the image stretched to [0, 1].
        max_num_iter: iteration limit; tol: level-set change at which to stop.
        invert: foreground = the darker phase.
    A single-intensity image (or one with a side under 2 pixels) yields an all-False mask.
    """
    from skimage import segmentation

    values = unit_range(gray(image))
    if is_constant(values) or min(values.shape) < 2:
        return np.zeros(values.shape, bool)
    phase = segmentation.chan_vese(values, mu=mu, max_num_iter=int(max_num_iter), tol=tol)
    if not phase.any() or phase.all():
        return np.zeros(values.shape, bool)
    brighter = values[phase].mean() >= values[~phase].mean()
    fg = phase if brighter else ~phase
    return ~fg if invert else fg
