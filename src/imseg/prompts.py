"""Prompt validation shared by every promptable segmenter: points, labels and boxes.

Every check here that needs no image (shapes, numbers, label values, inverted boxes) runs with
``image_size=None``, so callers can refuse a bad prompt before any image is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import PromptError
from .sam.transforms import SAM_LABELS

#: point labels users give to Segmenter.segment: 1 foreground, 0 background
USER_LABELS = (0, 1)


def prompt_array(value: Any, what: str) -> np.ndarray:
    """``value`` (array, tensor or nested lists) as a float32 array; a :class:`PromptError` naming ``what`` if it
    is not a regular grid of numbers."""
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise PromptError(f"{what} must be numbers (pixel coordinates) in a regular array; got {shown} ({exc}).") from None


def _point_labels(labels: Any, n: int, allowed: Sequence[int]) -> np.ndarray:
    """``labels`` as int32 (n,): whole numbers from ``allowed``, one per point."""
    raw = np.atleast_1d(np.asarray(labels))
    if raw.ndim != 1 or len(raw) != n:
        raise PromptError(f"labels must have one entry per point: got {n} points and {raw.size} labels.")
    meaning = "1 = foreground, 0 = background" + (", -1 = padding, 2/3 = box corners" if -1 in allowed else "")
    if raw.dtype.kind not in "biuf":
        raise PromptError(f"labels must be whole numbers ({meaning}); got dtype {raw.dtype}.")
    if raw.dtype.kind == "f":
        whole = np.isfinite(raw) & (raw == np.round(raw))
        if not whole.all():
            raise PromptError(f"labels must be whole numbers ({meaning}); got {raw[~whole][0]:g}.")
    lab = raw.astype(np.int32)
    unknown = ~np.isin(lab, allowed)
    if unknown.any():
        raise PromptError(f"label {int(lab[np.argmax(unknown)])} is not one of {sorted(allowed)} ({meaning}).")
    return lab


def validate_points(
    points: Any, labels: Any, image_size: tuple[int, int] | None = None, allowed_labels: Sequence[int] = SAM_LABELS
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check point prompts. Returns float32 (N, 2) XY coords and int32 (N,) labels, or (None, None).

    ``image_size`` is (H, W); points must lie within [0, W] x [0, H]. Labels: 1 foreground,
    0 background; by default also SAM's -1 padding and 2/3 box corners (the official predictor API's
    vocabulary, :data:`imseg.sam.transforms.SAM_LABELS`); ``Segmenter.segment`` passes :data:`USER_LABELS`.
    """
    if points is None:
        if labels is not None and len(np.atleast_1d(labels)):
            raise PromptError("labels were given without points; pass points=[(x, y), ...] as well.")
        return None, None
    coords = prompt_array(points, "points")
    if coords.ndim == 1 and coords.size == 2:
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise PromptError(f"points must have shape (N, 2) as (x, y) pairs; got shape {tuple(coords.shape)}.")
    if not np.isfinite(coords).all():
        raise PromptError("points contain NaN or infinite values.")
    lab = np.ones(len(coords), np.int32) if labels is None else _point_labels(labels, len(coords), allowed_labels)
    if image_size is not None:
        h, w = image_size
        bad = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
        if bad.any():
            first = coords[np.argmax(bad)]
            raise PromptError(
                f"{int(bad.sum())} point(s) lie outside the {w}x{h} image (first: x={first[0]:g}, "
                f"y={first[1]:g}); coordinates are (x, y) pixels with 0 <= x <= {w}, 0 <= y <= {h}."
            )
    return coords, lab


def validate_box(box: Any, image_size: tuple[int, int] | None = None) -> np.ndarray | None:
    """Check box prompt(s) in XYXY pixels. Returns float32 (4,) or (B, 4), or None."""
    if box is None:
        return None
    arr = prompt_array(box, "box")
    single = arr.ndim == 1
    arr2 = arr[None] if single else arr
    if arr2.ndim != 2 or arr2.shape[1] != 4:
        raise PromptError(f"box must be (x0, y0, x1, y1) or shape (B, 4); got shape {tuple(arr.shape)}.")
    if not np.isfinite(arr2).all():
        raise PromptError("box contains NaN or infinite values.")
    inverted = (arr2[:, 2] < arr2[:, 0]) | (arr2[:, 3] < arr2[:, 1])
    if inverted.any():
        b = arr2[np.argmax(inverted)]
        raise PromptError(
            f"box {b.tolist()} is inverted: boxes are (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0."
        )
    if image_size is not None:
        h, w = image_size
        outside = (arr2[:, 2] < 0) | (arr2[:, 3] < 0) | (arr2[:, 0] > w) | (arr2[:, 1] > h)
        if outside.any():
            b = arr2[np.argmax(outside)]
            raise PromptError(f"box {b.tolist()} lies entirely outside the {w}x{h} image.")
    return arr2[0] if single else arr2
