"""Graph cuts: OpenCV GrabCut from a box and/or points -> bool mask (H, W) of one object."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PromptError
from ..prompts import validate_box, validate_points
from ._input import rgb, seeds_rc

__all__ = ["grabcut"]


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

    colour = rgb(image)
    h, w = colour.shape[:2]
    mask = _initial_mask((h, w), box, points, labels, point_radius)
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(colour[:, :, ::-1].copy(), mask, None, bgd_model, fgd_model, int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:
        raise PromptError(
            f"grabcut could not model the prompt on a {w}x{h} image ({str(exc).strip().splitlines()[-1]}); "
            "give a larger box or more points."
        ) from exc
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _initial_mask(shape: tuple[int, int], box: Any, points: Any, labels: Any, point_radius: int) -> np.ndarray:
    """GrabCut's uint8 (H, W) trimap from the prompts: box inside = probable foreground, points = certain."""
    import cv2

    h, w = shape
    coords, point_labels = validate_points(points, labels, shape, allowed_labels=(0, 1))
    box_xyxy = validate_box(box, shape)
    if coords is None and box_xyxy is None:
        raise PromptError("grabcut needs a box=(x0, y0, x1, y1) and/or points=[(x, y), ...] prompt.")
    if box_xyxy is not None and box_xyxy.ndim == 2:
        if len(box_xyxy) != 1:
            raise PromptError(f"grabcut segments one object: pass one box, got {len(box_xyxy)}.")
        box_xyxy = box_xyxy[0]
    if box_xyxy is not None:
        mask = np.full(shape, cv2.GC_BGD, np.uint8)
        x0, x1 = np.clip([np.floor(box_xyxy[0]), np.ceil(box_xyxy[2])], 0, w).astype(int)
        y0, y1 = np.clip([np.floor(box_xyxy[1]), np.ceil(box_xyxy[3])], 0, h).astype(int)
        mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
    else:
        mask = np.full(shape, cv2.GC_PR_BGD, np.uint8)
    if coords is not None:
        for (x, y), lab in zip(seeds_rc(coords, shape)[:, ::-1], point_labels, strict=True):
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
    return mask
