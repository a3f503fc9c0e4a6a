"""The classical method table: one row per method, the source of truth for the package and the registry.

Standard library only, so that ``imseg.list_models()`` and ``imseg --help`` can read it without
importing numpy, scikit-image or OpenCV. Each method's function lives in a family module of
:mod:`imseg.classical` under the method's own name and is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: what a method's function returns
OUTPUTS = ("mask", "instances", "classes")
#: the registry builder shared by every classical method
BUILDER = "imseg.classical.segmenter:build_classical_segmenter"


@dataclass(frozen=True)
class Method:
    """A classical method: where its function lives, what it returns, which prompts it takes.

    ``output``: ``"mask"`` (bool (H, W)), ``"instances"`` (int32 label map of objects, 0 =
    background) or ``"classes"`` (int32 label map of classes 1..K). ``prompts``: a subset of
    ``("points", "box")``; ``()`` = everything mode only. ``needs_prompt``: no everything mode.
    """

    name: str
    module: str  # family module inside imseg.classical
    output: str
    summary: str  # when to use it
    prompts: tuple[str, ...] = ()
    needs_prompt: bool = False

    @property
    def function(self) -> Callable[..., Any]:
        """The plain function ``f(image, ...) -> mask | labels`` (imports its family module)."""
        return getattr(importlib.import_module(f"imseg.classical.{self.module}"), self.name)


_ROWS = (
    Method("threshold", "thresholds", "mask", "global threshold at a fixed value; bright objects on a dark background"),
    Method("otsu", "thresholds", "mask", "Otsu threshold; bimodal histograms (cells, documents, silhouettes)"),
    Method("li", "thresholds", "mask", "Li minimum-cross-entropy threshold; skewed histograms, faint foreground"),
    Method("yen", "thresholds", "mask", "Yen threshold; high-contrast images with small foreground"),
    Method("adaptive", "thresholds", "mask", "local (adaptive) threshold; uneven illumination"),
    Method("canny", "edges", "instances", "Canny edges then filled regions; objects with clear closed outlines"),
    Method("watershed", "regions", "instances", "distance-transform watershed; touching round objects (nuclei, coins)"),
    Method(
        "region_grow", "regions", "instances",
        "grow regions from seed points within a colour tolerance (prompt: points)", prompts=("points",),
    ),
    Method("flood", "regions", "instances", "flood fill from seed points (prompt: points)", ("points",), True),
    Method("kmeans", "clustering", "classes", "k-means on colour(+position); a few dominant colours"),
    Method("meanshift", "clustering", "classes", "mean shift on colour; unknown number of colour modes"),
    Method("gmm", "clustering", "classes", "Gaussian mixture on colour(+position); soft colour classes"),
    Method("slic", "superpixels", "instances", "SLIC superpixels; over-segmentation as a pre-step"),
    Method(
        "felzenszwalb", "superpixels", "instances", "Felzenszwalb graph segmentation; natural images, variable region size"
    ),
    Method("quickshift", "superpixels", "instances", "Quickshift superpixels; texture-aware over-segmentation"),
    Method("chan_vese", "contours", "mask", "Chan-Vese active contour; one object without sharp edges"),
    Method(
        "grabcut", "graphcut", "mask", "OpenCV GrabCut from a box and/or points; one object with a user prompt",
        ("points", "box"), True,
    ),
)

#: method name -> :class:`Method`, in the order ``imseg classical --list`` shows them
METHODS: dict[str, Method] = {row.name: row for row in _ROWS}

#: family module -> the method names it defines
FAMILIES: dict[str, tuple[str, ...]] = {
    module: tuple(row.name for row in _ROWS if row.module == module) for module in dict.fromkeys(r.module for r in _ROWS)
}
