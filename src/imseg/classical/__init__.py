"""Classical segmentation: thresholds, edges, watershed, region growing, clustering, superpixels, GrabCut.

Two forms, as in scikit-image:

* plain functions ``imseg.classical.otsu(image, **params)`` that take an image and return a
  boolean mask (H, W) or an int32 label map (H, W) (0 = background where there is one);
* :class:`ClassicalSegmenter` (what ``imseg.load("otsu")`` returns) that wraps one function
  behind the common ``segment(image, points=, labels=, box=) -> Masks`` call.

One module per family of methods: ``thresholds`` (threshold, otsu, li, yen, adaptive), ``edges``
(canny), ``regions`` (watershed, region_grow, flood), ``clustering`` (kmeans, meanshift, gmm),
``superpixels`` (slic, felzenszwalb, quickshift), ``contours`` (chan_vese), ``graphcut``
(grabcut); ``segmenter`` holds the segmenter class and ``table`` the method table (``METHODS``)
that this package and the model registry are built from.

Intensity methods work on the raw gray values, so a 16-bit image is thresholded on its real
intensities (read such files with :func:`read_gray`); colour methods use the RGB ``uint8`` image
of :func:`imseg.io.read_image`. Only glue is written here: the algorithms come from
scikit-image, OpenCV and scikit-learn.

Names are re-exported lazily (as scikit-image does), so reading the table imports no numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

from .table import FAMILIES
from .table import METHODS as METHODS
from .table import Method as Method

# public name -> the module of this package that defines it
_HOMES: dict[str, str] = {name: module for module, names in FAMILIES.items() for name in names}
_HOMES.update({"read_gray": "_input", "ClassicalSegmenter": "segmenter", "build_classical_segmenter": "segmenter"})

__all__ = sorted([*_HOMES, "METHODS", "Method"])


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
