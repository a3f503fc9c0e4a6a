"""Colour clustering: k-means, Gaussian mixture, mean shift -> int32 class map (H, W), 1..K dark to bright.

Features: CIELAB colour (gray arrays: intensity stretched to 0..100) plus, with
``spatial_weight``, XY position scaled so ``spatial_weight=1`` spans 0..100 over the longer image
side. Models are fitted on a random sample of pixels, then every pixel is assigned.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, require
from ._input import check_array, rgb

__all__ = ["gmm", "kmeans", "meanshift"]


def _colour_features(image: Any, spatial_weight: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(H*W, F) features: CIELAB colour (or standardised gray) + optional scaled XY; and brightness."""
    if isinstance(image, np.ndarray) and check_array(image, "image array").ndim == 2:
        values = image.astype(np.float64)
        span = float(values.max() - values.min()) or 1.0
        colour = ((values - values.min()) * (100.0 / span))[..., None]
        brightness = colour[..., 0]
    else:
        from skimage.color import rgb2lab

        colour = rgb2lab(rgb(image))
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

    Fitted on at most ``max_samples`` random pixels (``seed``), then every pixel is assigned.
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
