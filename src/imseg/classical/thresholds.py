"""Threshold methods: global (fixed, Otsu, Li, Yen) and local (adaptive) -> bool mask (H, W).

All work on raw gray values (:func:`~imseg.classical.read_gray`), so thresholds are in the
image's own intensity units and 16-bit data keeps its values. An image of one intensity has no
threshold and yields an all-False mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ._input import gray, is_constant, smooth

__all__ = ["adaptive", "li", "otsu", "threshold", "yen"]


def apply_threshold(values: np.ndarray, value: float | np.ndarray, invert: bool) -> np.ndarray:
    """``values > value`` (``<=`` when ``invert``): the foreground side of a threshold."""
    return values <= value if invert else values > value


def threshold(image: Any, value: float | None = None, invert: bool = False) -> np.ndarray:
    """Global threshold: ``image > value`` as a bool mask (H, W).

    Args:
        value: threshold in the image's own intensity units; default: the middle of its min..max.
        invert: keep pixels ``<= value`` instead (dark objects on a bright background).
    """
    values = gray(image)
    if value is None:
        if is_constant(values):
            return np.zeros(values.shape, bool)
        value = 0.5 * (float(values.min()) + float(values.max()))
    return apply_threshold(values, float(value), invert)


def _auto_threshold(name: str, image: Any, sigma: float, invert: bool, nbins: int) -> np.ndarray:
    from skimage import filters

    values = smooth(gray(image), sigma)
    if is_constant(values):  # one intensity: the threshold is undefined, there is no foreground
        return np.zeros(values.shape, bool)
    if name == "li":
        value = filters.threshold_li(values)
    else:
        value = getattr(filters, f"threshold_{name}")(values, nbins=nbins)
    return apply_threshold(values, float(value), invert)


def otsu(image: Any, sigma: float = 0.0, invert: bool = False, nbins: int = 256) -> np.ndarray:
    """Otsu threshold (maximal between-class variance) -> bool mask (H, W).

    Args:
        sigma: Gaussian pre-smoothing in pixels (0 = none).
        invert: foreground = dark side of the threshold.
        nbins: histogram bins over the raw intensity range (16-bit data keeps its values).
    """
    return _auto_threshold("otsu", image, sigma, invert, nbins)


def li(image: Any, sigma: float = 0.0, invert: bool = False) -> np.ndarray:
    """Li minimum cross-entropy threshold -> bool mask (H, W); ``sigma`` pre-smoothing in pixels."""
    return _auto_threshold("li", image, sigma, invert, 256)


def yen(image: Any, sigma: float = 0.0, invert: bool = False, nbins: int = 256) -> np.ndarray:
    """Yen threshold (maximum correlation) -> bool mask (H, W); ``sigma`` pre-smoothing in pixels."""
    return _auto_threshold("yen", image, sigma, invert, nbins)


def adaptive(
    image: Any, block_size: int = 35, offset: float = 0.0, method: str = "gaussian", invert: bool = False
) -> np.ndarray:
    """Local threshold: each pixel against a weighted mean of its neighbourhood -> bool mask (H, W).

    Args:
        block_size: odd neighbourhood size in pixels.
        offset: subtracted from the local mean, in intensity units (positive = more foreground).
        method: ``"gaussian"``, ``"mean"`` or ``"median"`` local statistic.
        invert: foreground = pixels darker than their neighbourhood.
    """
    from skimage import filters

    if int(block_size) < 3 or int(block_size) % 2 == 0:
        raise ConfigError(f"adaptive: block_size must be an odd number of pixels >= 3, got {block_size}.")
    if method not in ("gaussian", "mean", "median"):
        raise ConfigError(f"adaptive: method must be 'gaussian', 'mean' or 'median', got {method!r}.")
    values = gray(image)
    if is_constant(values):  # no local contrast anywhere: no foreground
        return np.zeros(values.shape, bool)
    local = filters.threshold_local(values, block_size=int(block_size), method=method, offset=float(offset))
    return values <= local if invert else values > local
