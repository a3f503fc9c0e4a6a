"""Classical segmentation: thresholds, edges, watershed, region growing, clustering, superpixels, GrabCut.

Two forms, as in scikit-image:

* plain functions ``imseg.classical.otsu(image, **params)`` that take an image and return a
  boolean mask (H, W) or an int32 label map (H, W) (0 = background where there is one);
* :class:`ClassicalSegmenter` (what ``imseg.load("otsu")`` returns) that wraps one function
  behind the common ``segment(image, points=, labels=, box=) -> Masks`` call.

Intensity methods (thresholds, canny, watershed, chan_vese) work on the raw gray values, so a
16-bit image is thresholded on its real intensities (read such files with :func:`read_gray`);
colour methods (clustering, superpixels, GrabCut) use the RGB ``uint8`` image of
:func:`imseg.io.read_image`. Only glue is written here: the algorithms come from scikit-image,
OpenCV and scikit-learn.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError, PromptError, require
from .io import read_image
from .masks import Masks
from .prompts import validate_box, validate_points
from .registry import Segmenter

__all__ = [
    "ClassicalSegmenter",
    "METHODS",
    "adaptive",
    "build_classical_segmenter",
    "canny",
    "chan_vese",
    "felzenszwalb",
    "flood",
    "gmm",
    "grabcut",
    "kmeans",
    "li",
    "meanshift",
    "otsu",
    "quickshift",
    "read_gray",
    "region_grow",
    "slic",
    "threshold",
    "watershed",
    "yen",
]

# Rec. 709 luma weights (the ones skimage.color.rgb2gray uses), applied to raw values.
_LUMA = np.array([0.2125, 0.7154, 0.0721])


# ============================================================================ input helpers
def _check_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{where}: image has no pixels (shape {tuple(array.shape)}). Pass a non-empty image.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{where}: unsupported dtype {array.dtype}; pass uint8, uint16 or float data.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{where}: image contains NaN or infinite values; clean it (np.nan_to_num) first.")
    return array


def _raw_to_gray(array: np.ndarray, where: str) -> np.ndarray:
    array = _check_array(np.asarray(array), where)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (2, 4):  # drop alpha
        array = array[:, :, : array.shape[2] - 1]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 3:
        return array.astype(np.float64) @ _LUMA
    if array.ndim != 2:
        raise InputError(f"{where}: array of shape {tuple(array.shape)} is not an image; expected (H, W) or (H, W, 3).")
    return array


def read_gray(source: Any) -> np.ndarray:
    """Read an image as one raw gray channel (H, W), keeping its intensities.

    Gray arrays and gray files (8/16-bit PNG, TIFF via tifffile) keep their dtype and values (no
    8-bit squash); colour images become float64 luma (0.2125 R + 0.7154 G + 0.0721 B) in the
    image's own units. Anything else goes through :func:`imseg.io.read_image` first.
    """
    if isinstance(source, np.ndarray):
        return _raw_to_gray(source, "image array")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        from .io import _pil_to_rgb, open_encoded, read_tiff_array

        path = Path(source)
        data = path.read_bytes()
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            array = np.squeeze(read_tiff_array(BytesIO(data), str(path)))
            if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
                array = np.moveaxis(array, 0, -1)
            return _raw_to_gray(array, str(path))
        img = open_encoded(data, str(path))  # size limit, EXIF orientation, clear errors
        if isinstance(img, np.ndarray):  # 16-bit colour PNG
            return _raw_to_gray(img, str(path))
        if img.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            try:
                return _raw_to_gray(np.asarray(img), str(path))
            except (OSError, SyntaxError, ValueError) as exc:
                raise InputError(f"{path}: could not decode image ({exc}). The file may be truncated or corrupt.") from exc
        return _raw_to_gray(_pil_to_rgb(img, str(path), None), str(path))
    return _raw_to_gray(read_image(source), "image")


def _gray(image: Any) -> np.ndarray:
    """Raw gray values as float64 (H, W)."""
    return read_gray(image).astype(np.float64, copy=False)


def _unit_range(gray: np.ndarray) -> np.ndarray:
    """Gray values stretched min..max to [0, 1] (constant images become 0)."""
    lo, hi = float(gray.min()), float(gray.max())
    if hi == lo:
        return np.zeros(gray.shape, np.float64)
    return (gray - lo) / (hi - lo)


def _rgb(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        _check_array(image, "image array")
    return read_image(image)


def _pixels(image: Any) -> np.ndarray:
    """(H, W, C) float64 values for colour-distance methods: raw gray (C=1) or RGB uint8 values (C=3)."""
    if isinstance(image, np.ndarray):
        arr = _check_array(image, "image array")
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
            return arr.reshape(arr.shape[0], arr.shape[1], 1).astype(np.float64)
    return _rgb(image).astype(np.float64)


def _is_constant(gray: np.ndarray) -> bool:
    return bool(gray.min() == gray.max())


def _smooth(gray: np.ndarray, sigma: float) -> np.ndarray:
    if sigma and sigma > 0:
        from skimage import filters

        return filters.gaussian(gray, sigma=sigma, preserve_range=True)
    return gray


def _seeds_rc(points: Any, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) XY points (pixels) -> (N, 2) int (row, col) inside the image."""
    coords, _ = validate_points(points, None, shape)
    assert coords is not None
    h, w = shape
    cols = np.clip(np.floor(coords[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.floor(coords[:, 1]).astype(int), 0, h - 1)
    return np.stack([rows, cols], axis=1)


# ============================================================================ thresholds
def _apply_threshold(gray: np.ndarray, value: float | np.ndarray, invert: bool) -> np.ndarray:
    return gray <= value if invert else gray > value


def threshold(image: Any, value: float | None = None, invert: bool = False) -> np.ndarray:
    """Global threshold: ``image > value`` as a bool mask (H, W).

    Args:
        value: threshold in the image's own intensity units; default: the middle of its min..max.
        invert: keep pixels ``<= value`` instead (dark objects on a bright background).
    """
    gray = _gray(image)
    if value is None:
        if _is_constant(gray):
            return np.zeros(gray.shape, bool)
        value = 0.5 * (float(gray.min()) + float(gray.max()))
    return _apply_threshold(gray, float(value), invert)


def _auto_threshold(name: str, image: Any, sigma: float, invert: bool, nbins: int) -> np.ndarray:
    from skimage import filters

    gray = _smooth(_gray(image), sigma)
    if _is_constant(gray):  # one intensity: the threshold is undefined, there is no foreground
        return np.zeros(gray.shape, bool)
    if name == "li":
        value = filters.threshold_li(gray)
    else:
        value = getattr(filters, f"threshold_{name}")(gray, nbins=nbins)
    return _apply_threshold(gray, float(value), invert)


def otsu(image: Any, sigma: float = 0.0, invert: bool = False, nbins: int = 256) -> np.ndarray:
    """Otsu threshold (maximal between-class variance) -> bool mask (H, W).

    Args:
        sigma: Gaussian pre-smoothing in pixels (0 = none).
        invert: foreground = dark side of the threshold.
        nbins: histogram bins over the raw intensity range (16-bit data keeps its values).
    A single-intensity image has no Otsu threshold and yields an all-False mask.
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
    gray = _gray(image)
    if _is_constant(gray):  # no local contrast anywhere: no foreground
        return np.zeros(gray.shape, bool)
    local = filters.threshold_local(gray, block_size=int(block_size), method=method, offset=float(offset))
    return gray <= local if invert else gray > local


# ============================================================================ edges, watershed, active contour
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
    from scipy import ndimage as ndi
    from skimage import feature, measure, morphology

    gray = _unit_range(_gray(image))
    edges = feature.canny(gray, sigma=sigma, low_threshold=low, high_threshold=high)
    if close_radius > 0:
        edges = morphology.closing(edges, morphology.disk(int(close_radius))).astype(bool)
    regions = ndi.binary_fill_holes(edges)
    labels = measure.label(regions, connectivity=1).astype(np.int32)
    return _drop_small_labels(labels, min_area)


def _drop_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Zero out labels with fewer than ``min_area`` pixels and renumber 1..K."""
    from skimage.segmentation import relabel_sequential

    if min_area > 1 and labels.max() > 0:
        counts = np.bincount(labels.ravel())
        small = counts < min_area
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    return relabel_sequential(labels)[0].astype(np.int32)


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
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, morphology, segmentation

    gray = _smooth(_gray(image), sigma)
    if markers == "gradient":
        if _is_constant(gray):
            return np.ones(gray.shape, np.int32)
        gradient = filters.sobel(_unit_range(gray))
        seeds = gradient <= np.quantile(gradient, marker_quantile)
        marker_map = measure.label(morphology.remove_small_objects(seeds, max_size=max(min_area - 1, 0)))
        if marker_map.max() == 0:
            marker_map = measure.label(seeds)
        return segmentation.watershed(gradient, marker_map, compactness=compactness).astype(np.int32)
    if markers != "distance":
        raise ConfigError(f"watershed: markers must be 'distance' or 'gradient', got {markers!r}.")
    if block_size is not None and (int(block_size) < 3 or int(block_size) % 2 == 0):
        raise ConfigError(f"watershed: block_size must be an odd number of pixels >= 3 or None, got {block_size}.")
    if isinstance(threshold, str):
        if threshold not in ("otsu", "li", "yen", "triangle"):
            raise ConfigError(
                f"watershed: threshold must be 'li', 'otsu', 'yen', 'triangle' or a number, got {threshold!r}."
            )
        if _is_constant(gray):
            return np.zeros(gray.shape, np.int32)
        value = float(getattr(filters, f"threshold_{threshold}")(gray))
    else:
        value = float(threshold)
    foreground = _apply_threshold(gray, value, invert)
    if block_size is not None:
        foreground &= _apply_threshold(gray, filters.threshold_local(gray, block_size=int(block_size)), invert)
    foreground = ndi.binary_fill_holes(foreground)
    if min_area > 1:
        foreground = morphology.remove_small_objects(foreground, max_size=min_area - 1)
    if not foreground.any():
        return np.zeros(gray.shape, np.int32)
    distance = _smooth(ndi.distance_transform_edt(foreground), distance_sigma)
    components = measure.label(foreground)
    peaks = feature.peak_local_max(distance, min_distance=max(int(min_distance), 1), labels=components, exclude_border=False)
    marker_map = np.zeros(gray.shape, np.int32)
    marker_map[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (tiny or flat) keep one marker each
    missing = np.setdiff1d(np.unique(components[foreground]), np.unique(components[marker_map > 0]))
    for i, comp in enumerate(missing):
        r, c = np.argwhere(components == comp)[0]
        marker_map[r, c] = len(peaks) + 1 + i
    labels = segmentation.watershed(-distance, marker_map, mask=foreground, compactness=compactness)
    return labels.astype(np.int32)


def chan_vese(image: Any, mu: float = 0.25, max_num_iter: int = 200, tol: float = 1e-3, invert: bool = False) -> np.ndarray:
    """Chan-Vese two-phase active contour -> bool mask (H, W), foreground = the brighter phase.

    Args:
        mu: edge-length weight (larger = smoother, rounder outline), for the image stretched to [0, 1].
        max_num_iter: iteration limit; tol: level-set change at which to stop.
        invert: foreground = the darker phase.
    """
    from skimage import segmentation

    gray = _unit_range(_gray(image))
    if _is_constant(gray) or min(gray.shape) < 2:
        return np.zeros(gray.shape, bool)
    phase = segmentation.chan_vese(gray, mu=mu, max_num_iter=int(max_num_iter), tol=tol)
    if not phase.any() or phase.all():
        return np.zeros(gray.shape, bool)
    brighter = gray[phase].mean() >= gray[~phase].mean()
    fg = phase if brighter else ~phase
    return ~fg if invert else fg


# ============================================================================ region growing
def _grow(pixels: np.ndarray, seed: tuple[int, int], tolerance: float, allowed: np.ndarray, iterations: int) -> np.ndarray:
    """Connected region around ``seed`` whose colour lies within ``tolerance`` of the region mean."""
    from skimage.segmentation import flood as sk_flood

    reference = pixels[seed]
    region = np.zeros(allowed.shape, bool)
    for _ in range(max(int(iterations), 1)):
        close = (np.linalg.norm(pixels - reference, axis=-1) <= tolerance) & allowed
        if not close[seed]:
            break
        grown = sk_flood(close.view(np.uint8), seed, connectivity=1)
        if np.array_equal(grown, region):
            break
        region = grown
        reference = pixels[region].mean(axis=0)
    if not region.any() and allowed[seed]:
        region[seed] = True
    return region


def _grow_all(pixels: np.ndarray, seeds: Any, tolerance: float, iterations: int, grid: int) -> np.ndarray:
    """Label map of regions grown from (N, 2) XY seeds (or a seed grid) over (H, W, C) pixel values."""
    shape = pixels.shape[:2]
    if seeds is None:
        step = max(int(grid), 1)
        rr, cc = np.mgrid[step // 2 : shape[0] : step, step // 2 : shape[1] : step]
        rc = np.stack([rr.ravel(), cc.ravel()], axis=1)
        if len(rc) == 0:
            rc = np.array([[shape[0] // 2, shape[1] // 2]])
    else:
        rc = _seeds_rc(seeds, shape)
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(rc):
        if labels[r, c]:
            continue
        region = _grow(pixels, (int(r), int(c)), float(tolerance), labels == 0, iterations)
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
    return _grow_all(_pixels(image), seeds, tolerance, iterations, grid)


def flood(image: Any, seeds: Any, tolerance: float = 10.0) -> np.ndarray:
    """Flood fill from seeds -> int32 label map (H, W), label i+1 = seed i, 0 = not reached.

    The 4-connected set around each seed whose colour lies within ``tolerance`` (Euclidean, image
    units) of the seed pixel's colour.
    """
    if seeds is None:
        raise PromptError("flood needs seed points: pass points=[(x, y), ...].")
    return _grow_all(_pixels(image), seeds, tolerance, 1, 0)


# ============================================================================ clustering
def _colour_features(image: Any, spatial_weight: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(H*W, F) features: CIELAB colour (or standardised gray) + optional scaled XY; and brightness."""
    if isinstance(image, np.ndarray) and _check_array(image, "image array").ndim == 2:
        gray = image.astype(np.float64)
        span = float(gray.max() - gray.min()) or 1.0
        colour = ((gray - gray.min()) * (100.0 / span))[..., None]
        brightness = colour[..., 0]
    else:
        from skimage.color import rgb2lab

        colour = rgb2lab(_rgb(image))
        brightness = colour[..., 0]
    h, w = colour.shape[:2]
    features = colour.reshape(h * w, -1)
    if spatial_weight:
        rr, cc = np.mgrid[0:h, 0:w]
        scale = 100.0 * float(spatial_weight) / max(h, w)
        features = np.concatenate([features, np.stack([rr.ravel(), cc.ravel()], 1) * scale], axis=1)
    return features.astype(np.float64), brightness.reshape(-1), (h, w)


def _sample(features: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    if len(features) <= max_samples:
        return features
    rng = np.random.default_rng(seed)
    return features[rng.choice(len(features), max_samples, replace=False)]


def _order_by_brightness(assignment: np.ndarray, brightness: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Renumber clusters 1..K from darkest to brightest (deterministic labels)."""
    ids = np.unique(assignment)
    means = np.array([brightness[assignment == i].mean() for i in ids])
    lut = np.zeros(int(assignment.max()) + 1, np.int32)
    lut[ids[np.argsort(means, kind="stable")]] = np.arange(1, len(ids) + 1)
    return lut[assignment].reshape(shape)


def _n_clusters(sample: np.ndarray, wanted: int) -> int:
    if int(wanted) < 1:
        raise ConfigError(f"n_segments must be >= 1, got {wanted}.")
    return int(min(int(wanted), len(np.unique(sample, axis=0))))


def kmeans(
    image: Any, n_segments: int = 4, spatial_weight: float = 0.0, max_samples: int = 10000, seed: int = 0
) -> np.ndarray:
    """k-means colour classes -> int32 label map (H, W), labels 1..K ordered dark to bright.

    Features: CIELAB colour (gray arrays: intensity stretched to 0..100) plus XY position scaled so
    ``spatial_weight=1`` spans 0..100 over the longer image side. Fitted on at most
    ``max_samples`` random pixels, then every pixel is assigned.
    """
    sklearn_cluster = require("sklearn.cluster", "classical", "k-means segmentation")
    features, brightness, shape = _colour_features(image, spatial_weight)
    sample = _sample(features, max_samples, seed)
    k = _n_clusters(sample, n_segments)
    if k == 1:  # one colour: one class
        return np.ones(shape, np.int32)
    model = sklearn_cluster.KMeans(n_clusters=k, n_init=3, random_state=seed).fit(sample)
    return _order_by_brightness(model.predict(features), brightness, shape)


def gmm(
    image: Any,
    n_segments: int = 4,
    spatial_weight: float = 0.0,
    covariance_type: str = "full",
    max_samples: int = 10000,
    seed: int = 0,
) -> np.ndarray:
    """Gaussian-mixture colour classes -> int32 label map (H, W), labels 1..K ordered dark to bright.

    Same features as :func:`kmeans`; each pixel gets its most probable component.
    """
    sklearn_mixture = require("sklearn.mixture", "classical", "Gaussian-mixture segmentation")
    features, brightness, shape = _colour_features(image, spatial_weight)
    sample = _sample(features, max_samples, seed)
    k = _n_clusters(sample, n_segments)
    if k == 1:  # one colour: one class
        return np.ones(shape, np.int32)
    model = sklearn_mixture.GaussianMixture(
        n_components=k, covariance_type=covariance_type, random_state=seed, reg_covar=1e-3
    ).fit(sample)
    return _order_by_brightness(model.predict(features), brightness, shape)


def meanshift(
    image: Any, bandwidth: float | None = None, quantile: float = 0.2, spatial_weight: float = 0.0,
    max_samples: int = 3000, seed: int = 0,
) -> np.ndarray:
    """Mean-shift colour modes -> int32 label map (H, W), labels 1..K ordered dark to bright.

    Args:
        bandwidth: kernel width in feature units (CIELAB); None = estimated at ``quantile`` of
            pairwise distances. The number of segments follows from the data.
    """
    sklearn_cluster = require("sklearn.cluster", "classical", "mean-shift segmentation")
    features, brightness, shape = _colour_features(image, spatial_weight)
    sample = _sample(features, max_samples, seed)
    if bandwidth is None:
        bandwidth = float(sklearn_cluster.estimate_bandwidth(sample, quantile=quantile, n_samples=min(len(sample), 1000)))
    if len(np.unique(sample, axis=0)) < 2 or bandwidth <= 0:
        return np.ones(shape, np.int32)
    model = sklearn_cluster.MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(sample)
    return _order_by_brightness(model.predict(features), brightness, shape)


# ============================================================================ superpixels
def slic(image: Any, n_segments: int = 100, compactness: float = 10.0, sigma: float = 1.0) -> np.ndarray:
    """SLIC superpixels in CIELAB -> int32 label map (H, W), labels 1..K.

    ``n_segments`` is approximate; ``compactness`` trades colour similarity (low) for square,
    regular cells (high); ``sigma`` pre-smoothing in pixels.
    """
    from skimage import segmentation

    rgb = _rgb(image)
    labels = segmentation.slic(rgb, n_segments=int(n_segments), compactness=compactness, sigma=sigma, start_label=1)
    return labels.astype(np.int32)


def felzenszwalb(image: Any, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation -> int32 label map (H, W), labels 1..K.

    ``scale``: larger = larger regions; ``sigma``: pre-smoothing in pixels; ``min_size``: smallest
    region in pixels.
    """
    from skimage import segmentation

    labels = segmentation.felzenszwalb(_rgb(image), scale=scale, sigma=sigma, min_size=int(min_size))
    return (labels + 1).astype(np.int32)


def quickshift(
    image: Any, kernel_size: float = 5.0, max_dist: float = 10.0, ratio: float = 0.5, sigma: float = 0.0
) -> np.ndarray:
    """Quickshift mode seeking in colour+position -> int32 label map (H, W), labels 1..K.

    ``kernel_size``: density kernel width in pixels; ``max_dist``: cut-off for linking (larger =
    fewer regions); ``ratio`` in [0, 1]: weight of colour against position.
    """
    from skimage import segmentation

    rgb = _rgb(image).astype(np.float64) / 255.0
    labels = segmentation.quickshift(rgb, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, sigma=sigma)
    return (labels + 1).astype(np.int32)


# ============================================================================ GrabCut
def grabcut(
    image: Any,
    box: Any = None,
    points: Any = None,
    labels: Any = None,
    iterations: int = 5,
    point_radius: int = 5,
) -> np.ndarray:
    """OpenCV GrabCut from a box and/or points -> bool mask (H, W) of the object.

    Args:
        box: (x0, y0, x1, y1) pixels; outside is background, inside probably foreground.
        points: (N, 2) XY pixels; ``labels`` 1 = foreground, 0 = background (default all 1). Each
            point marks a disk of ``point_radius`` pixels as certain foreground/background.
        iterations: GrabCut EM iterations.
    """
    import cv2

    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    coords, point_labels = validate_points(points, labels, (h, w), allowed_labels=(0, 1))
    box_xyxy = validate_box(box, (h, w))
    if coords is None and box_xyxy is None:
        raise PromptError("grabcut needs a box=(x0, y0, x1, y1) and/or points=[(x, y), ...] prompt.")
    if box_xyxy is not None and box_xyxy.ndim == 2:
        if len(box_xyxy) != 1:
            raise PromptError(f"grabcut segments one object: pass one box, got {len(box_xyxy)}.")
        box_xyxy = box_xyxy[0]
    if box_xyxy is not None:
        mask = np.full((h, w), cv2.GC_BGD, np.uint8)
        x0, x1 = np.clip([np.floor(box_xyxy[0]), np.ceil(box_xyxy[2])], 0, w).astype(int)
        y0, y1 = np.clip([np.floor(box_xyxy[1]), np.ceil(box_xyxy[3])], 0, h).astype(int)
        mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
    else:
        mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    if coords is not None:
        for (x, y), lab in zip(_seeds_rc(coords, (h, w))[:, ::-1], point_labels, strict=True):
            value = cv2.GC_FGD if lab == 1 else cv2.GC_BGD
            cv2.circle(mask, (int(x), int(y)), int(point_radius), int(value), thickness=-1)
    fg_like = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if not fg_like.any():
        raise PromptError("grabcut: the prompt marks no foreground; give a box with area or a positive point.")
    if fg_like.all():
        raise PromptError(
            "grabcut: the box covers the whole image, so there is no background to learn from; "
            "give a tighter box or add negative points (labels=0)."
        )
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(rgb[:, :, ::-1].copy(), mask, None, bgd_model, fgd_model, int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:
        raise PromptError(
            f"grabcut could not model the prompt on a {w}x{h} image ({str(exc).strip().splitlines()[-1]}); "
            "give a larger box or more points."
        ) from exc
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


# ============================================================================ the segmenter
@dataclass(frozen=True)
class Method:
    """A classical method: its function, what it returns and which prompts it takes."""

    function: Callable[..., np.ndarray]
    output: str  # "mask" (bool), "instances" (label map of objects), "classes" (label map of classes)
    prompts: tuple[str, ...] = ()  # subset of ("points", "box"); () = everything mode only
    needs_prompt: bool = False


METHODS: dict[str, Method] = {
    "threshold": Method(threshold, "mask"),
    "otsu": Method(otsu, "mask"),
    "li": Method(li, "mask"),
    "yen": Method(yen, "mask"),
    "adaptive": Method(adaptive, "mask"),
    "canny": Method(canny, "instances"),
    "watershed": Method(watershed, "instances"),
    "region_grow": Method(region_grow, "instances", ("points",)),
    "flood": Method(flood, "instances", ("points",), needs_prompt=True),
    "kmeans": Method(kmeans, "classes"),
    "meanshift": Method(meanshift, "classes"),
    "gmm": Method(gmm, "classes"),
    "slic": Method(slic, "instances"),
    "felzenszwalb": Method(felzenszwalb, "instances"),
    "quickshift": Method(quickshift, "instances"),
    "chan_vese": Method(chan_vese, "mask"),
    "grabcut": Method(grabcut, "mask", ("points", "box"), needs_prompt=True),
}
_PROMPT_ARGS = {"image", "seeds", "box", "points", "labels"}


def _method_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in METHODS:
        import difflib

        close = difflib.get_close_matches(key, list(METHODS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown classical method {name!r}.{hint} Known: {', '.join(METHODS)}.")
    return key


def _check_params(method: str, params: dict[str, Any]) -> None:
    signature = inspect.signature(METHODS[method].function)
    allowed = [p for p in signature.parameters if p not in _PROMPT_ARGS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{method}: unknown parameter(s) {', '.join(unknown)}. It takes: {', '.join(allowed) or 'no parameters'}."
        )


def _to_masks(result: np.ndarray, output: str) -> Masks:
    if not np.asarray(result).any():  # nothing found: an empty Masks of the image's size
        return Masks(rles=[], image_size=result.shape)
    if output == "mask":
        return Masks(np.asarray(result, bool)[None])
    if output == "classes":
        return Masks.from_label_map(result, background=0, instances=False)
    return Masks.from_label_map(result, background=0, instances=True)


class ClassicalSegmenter(Segmenter):
    """One classical method behind ``segment(image, points=, labels=, box=) -> Masks``.

    Everything mode: one mask for threshold-style methods (the foreground; none when the image
    has no foreground), one mask per object for watershed/canny/superpixels/region_grow, one mask
    per class (``labels`` = class id 1..K) for kmeans/gmm/meanshift.
    Prompt mode (``region_grow``, ``flood``: points; ``grabcut``: box and/or points): one mask.
    """

    def __init__(self, method: str, **params: Any) -> None:
        self.method = _method_name(method)
        _check_params(self.method, params)
        self.params = params
        self.name = self.method

    @property
    def supports_prompts(self) -> bool:  # type: ignore[override]
        return bool(METHODS[self.method].prompts)

    def __call__(self, image: Any, **params: Any) -> np.ndarray:
        """The method's plain function output (mask or label map) with this segmenter's parameters."""
        _check_params(self.method, params)
        return METHODS[self.method].function(image, **{**self.params, **params})

    def segment(self, image: Any, *, points: Any = None, labels: Any = None, box: Any = None, **params: Any) -> Masks:
        """Segment ``image`` (path, array, PIL image). Returns :class:`~imseg.masks.Masks`."""
        method = METHODS[self.method]
        _check_params(self.method, params)
        kwargs = {**self.params, **params}
        given = [name for name, value in (("points", points), ("box", box)) if value is not None]
        if labels is not None and points is None:
            raise PromptError("labels were given without points; pass points=[(x, y), ...] as well.")
        unsupported = [name for name in given if name not in method.prompts]
        if unsupported:
            takes = " and/or ".join(method.prompts) if method.prompts else "no prompts (everything mode only)"
            raise PromptError(f"{self.method} does not take {' or '.join(unsupported)} prompts; it takes {takes}.")
        if method.needs_prompt and not given:
            raise PromptError(f"{self.method} needs a prompt: pass {' and/or '.join(method.prompts)}.")
        if self.method == "grabcut":
            return _to_masks(grabcut(image, box=box, points=points, labels=labels, **kwargs), "mask")
        if given:  # region_grow / flood from points: union of positive regions minus negative ones
            return self._grow_prompt(image, points, labels, kwargs)
        return _to_masks(method.function(image, **kwargs), method.output)

    def _grow_prompt(self, image: Any, points: Any, labels: Any, kwargs: dict[str, Any]) -> Masks:
        pixels = _pixels(image)
        shape = pixels.shape[:2]
        coords, point_labels = validate_points(points, labels, shape, allowed_labels=(0, 1))
        assert coords is not None and point_labels is not None
        positive = point_labels == 1
        if not positive.any():
            raise PromptError(f"{self.method} needs at least one positive point (label 1) to grow from.")
        tol = kwargs.get("tolerance", 20.0 if self.method == "region_grow" else 10.0)
        iterations = kwargs.get("iterations", 10) if self.method == "region_grow" else 1
        grown = _grow_all(pixels, coords, tol, iterations, 0)
        fg = np.isin(grown, np.flatnonzero(positive) + 1)
        for i in np.flatnonzero(~positive):  # negative points: remove what grows from them
            seed = tuple(_seeds_rc(coords[i : i + 1], shape)[0])
            fg &= ~_grow(pixels, (int(seed[0]), int(seed[1])), float(tol), np.ones(shape, bool), iterations)
        return _to_masks(fg, "mask")

    def __repr__(self) -> str:
        return f"ClassicalSegmenter(method={self.method!r}, params={self.params!r})"


def build_classical_segmenter(spec: Any, checkpoint: Any = None, device: str = "auto", **kwargs: Any) -> ClassicalSegmenter:
    """Registry builder: ``imseg.load("otsu", sigma=1.0)`` -> :class:`ClassicalSegmenter`.

    Classical methods have no weights (``checkpoint`` must be None) and run on the CPU (``device``
    is accepted for API symmetry and ignored).
    """
    if checkpoint is not None:
        raise ConfigError(f"{spec.name} is a classical method and takes no checkpoint; drop checkpoint={checkpoint!r}.")
    method = spec.options.get("method", spec.name) if hasattr(spec, "options") else str(spec)
    return ClassicalSegmenter(method, **kwargs)

