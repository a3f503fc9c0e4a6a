"""Region methods: marker watershed, region growing and flood fill -> int32 label map (H, W)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..postprocess import fill_holes, remove_small, split_mask
from ._input import gray, is_constant, pixels, seeds_rc, smooth, unit_range
from .thresholds import apply_threshold

__all__ = ["flood", "region_grow", "watershed"]


def watershed(
    image: Any,
    markers: str = "distance",
    threshold: str | float = "li",
    sigma: float = 1.0,
    block_size: int | None = 41,
    min_distance: int = 7,
    distance_sigma: float = 1.0,
    min_area: int = 30,
    marker_quantile: float = 0.2,
    compactness: float = 0.0,
    invert: bool = False,
) -> np.ndarray:
    """Marker-based watershed -> int32 label map (H, W).

    ``markers="distance"`` (touching round objects such as nuclei), on the image smoothed by
    ``sigma`` pixels:

    * foreground = pixels above a global floor ``threshold`` (``"li"``, ``"otsu"``, ``"yen"``,
      ``"triangle"`` or a number in intensity units) *and* above their local Gaussian-weighted
      mean over a ``block_size`` window (odd, pixels; about 2 object diameters). The floor only
      separates objects from background, so it should sit low (Li/triangle: Otsu lands between
      dim and bright objects and drops the dim ones); the local test cuts each object near its
      own half-maximum, which removes the halo of bright objects and the valleys between touching
      ones. ``block_size=None`` uses the global threshold alone. Objects much larger than the
      window come out hollow before hole filling: raise ``block_size`` for them.
    * holes filled, objects below ``min_area`` pixels dropped;
    * one marker per peak of the distance transform (smoothed by ``distance_sigma`` pixels, peaks
      at least ``min_distance`` pixels apart: about half the typical object radius), watershed on
      the negated distance inside the foreground; 0 = background.

    ``markers="gradient"``: markers are the connected regions whose Sobel gradient is below its
    ``marker_quantile`` quantile; the whole image is partitioned along gradient ridges (no
    background label).
    """
    if min_area < 0:
        raise ConfigError(f"watershed: min_area must be a number of pixels >= 0, got {min_area}.")
    values = smooth(gray(image), sigma)
    if markers == "gradient":
        return _gradient_watershed(values, marker_quantile, min_area, compactness)
    if markers != "distance":
        raise ConfigError(f"watershed: markers must be 'distance' or 'gradient', got {markers!r}.")
    if block_size is not None and (int(block_size) < 3 or int(block_size) % 2 == 0):
        raise ConfigError(f"watershed: block_size must be an odd number of pixels >= 3 or None, got {block_size}.")
    foreground = _foreground(values, threshold, block_size, invert)
    if foreground is None:
        return np.zeros(values.shape, np.int32)
    foreground = remove_small(fill_holes(foreground), min_area)
    return split_mask(foreground, min_distance, distance_sigma, compactness)


def _foreground(values: np.ndarray, threshold: str | float, block_size: int | None, invert: bool) -> np.ndarray | None:
    """Pixels above the global floor and (with ``block_size``) their local mean; None for a flat image."""
    from skimage import filters

    if isinstance(threshold, str):
        if threshold not in ("otsu", "li", "yen", "triangle"):
            raise ConfigError(
                f"watershed: threshold must be 'li', 'otsu', 'yen', 'triangle' or a number, got {threshold!r}."
            )
        if is_constant(values):
            return None
        value = float(getattr(filters, f"threshold_{threshold}")(values))
    else:
        value = float(threshold)
    foreground = apply_threshold(values, value, invert)
    if block_size is not None:
        foreground &= apply_threshold(values, filters.threshold_local(values, block_size=int(block_size)), invert)
    return foreground


def _gradient_watershed(values: np.ndarray, marker_quantile: float, min_area: int, compactness: float) -> np.ndarray:
    from skimage import filters, measure, segmentation

    if is_constant(values):
        return np.ones(values.shape, np.int32)
    gradient = filters.sobel(unit_range(values))
    seeds = gradient <= np.quantile(gradient, marker_quantile)
    marker_map = measure.label(remove_small(seeds, min_area))
    if marker_map.max() == 0:
        marker_map = measure.label(seeds)
    return segmentation.watershed(gradient, marker_map, compactness=compactness).astype(np.int32)


# ============================================================================ region growing
def grow(pixel_values: np.ndarray, seed: tuple[int, int], tolerance: float, allowed: np.ndarray, iterations: int) -> np.ndarray:
    """Connected region around ``seed`` whose colour lies within ``tolerance`` of the region mean."""
    from skimage.segmentation import flood as sk_flood

    reference = pixel_values[seed]
    region = np.zeros(allowed.shape, bool)
    for _ in range(max(int(iterations), 1)):
        close = (np.linalg.norm(pixel_values - reference, axis=-1) <= tolerance) & allowed
        if not close[seed]:
            break
        grown = sk_flood(close.view(np.uint8), seed, connectivity=1)
        if np.array_equal(grown, region):
            break
        region = grown
        reference = pixel_values[region].mean(axis=0)
    if not region.any() and allowed[seed]:
        region[seed] = True
    return region


def grow_all(pixel_values: np.ndarray, seeds: Any, tolerance: float, iterations: int, grid: int) -> np.ndarray:
    """Label map of regions grown from (N, 2) XY seeds (or a seed grid) over (H, W, C) pixel values."""
    shape = pixel_values.shape[:2]
    if seeds is None:
        step = max(int(grid), 1)
        rr, cc = np.mgrid[step // 2 : shape[0] : step, step // 2 : shape[1] : step]
        rc = np.stack([rr.ravel(), cc.ravel()], axis=1)
        if len(rc) == 0:
            rc = np.array([[shape[0] // 2, shape[1] // 2]])
    else:
        rc = seeds_rc(seeds, shape)
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(rc):
        if labels[r, c]:
            continue
        region = grow(pixel_values, (int(r), int(c)), float(tolerance), labels == 0, iterations)
        labels[region] = i + 1
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32) if seeds is None else labels


def region_grow(image: Any, seeds: Any = None, tolerance: float = 20.0, iterations: int = 10, grid: int = 32) -> np.ndarray:
    """Grow one region per seed -> int32 label map (H, W), label i+1 = seed i, 0 = not reached.

    A region is the 4-connected set around its seed whose colour lies within ``tolerance`` of the
    region's mean colour (re-estimated up to ``iterations`` times). Tolerance is a Euclidean
    distance in the image's units (RGB 0..255, or raw gray values for a gray array). Earlier seeds
    win where regions would overlap.

    Args:
        seeds: (N, 2) XY pixel coordinates; None = a grid of seeds every ``grid`` pixels (everything
            mode; labels renumbered 1..K).
    """
    return grow_all(pixels(image), seeds, tolerance, iterations, grid)


def flood(image: Any, seeds: Any, tolerance: float = 10.0) -> np.ndarray:
    """Flood fill from seeds -> int32 label map (H, W), label i+1 = seed i, 0 = not reached.

    The 4-connected set around each seed whose colour lies within ``tolerance`` (Euclidean, image
    units) of the seed pixel's colour.
    """
    if seeds is None:
        raise PromptError("flood needs seed points: pass points=[(x, y), ...].")
    return grow_all(pixels(image), seeds, tolerance, 1, 0)
