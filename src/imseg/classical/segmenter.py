"""``ClassicalSegmenter``: one classical method behind the common ``segment(image, ...) -> Masks`` call.

What ``imseg.load("otsu")`` returns. The methods themselves are the plain functions of the family
modules; which function, output kind and prompts a method has comes from :mod:`.table`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..masks import Masks
from ..prompts import validate_points
from ..registry import Segmenter
from ._input import pixels, seeds_rc
from .graphcut import grabcut
from .regions import grow, grow_all
from .table import METHODS

__all__ = ["ClassicalSegmenter", "build_classical_segmenter"]

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
        values = pixels(image)
        shape = values.shape[:2]
        coords, point_labels = validate_points(points, labels, shape, allowed_labels=(0, 1))
        assert coords is not None and point_labels is not None
        positive = point_labels == 1
        if not positive.any():
            raise PromptError(f"{self.method} needs at least one positive point (label 1) to grow from.")
        tol = kwargs.get("tolerance", 20.0 if self.method == "region_grow" else 10.0)
        iterations = kwargs.get("iterations", 10) if self.method == "region_grow" else 1
        grown = grow_all(values, coords, tol, iterations, 0)
        fg = np.isin(grown, np.flatnonzero(positive) + 1)
        for i in np.flatnonzero(~positive):  # negative points: remove what grows from them
            seed = tuple(seeds_rc(coords[i : i + 1], shape)[0])
            fg &= ~grow(values, (int(seed[0]), int(seed[1])), float(tol), np.ones(shape, bool), iterations)
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
