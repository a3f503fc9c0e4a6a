"""Outlines and pictures of masks: polygons (to and from), colours and overlays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError


def mask_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) float RGB colours in 0..255, well separated (golden-ratio hue steps, bright)."""
    import colorsys

    start = (seed * 0.1234) % 1.0
    return np.array(
        [[255 * c for c in colorsys.hsv_to_rgb((start + i * 0.618033988749895) % 1.0, 0.75, 0.95)] for i in range(n)],
        np.float32,
    ).reshape(n, 3)


def mask_polygons(masks: np.ndarray, tolerance: float = 0.0) -> list[list[dict]]:
    """Rings of (N, H, W) bool masks; see :meth:`Masks.to_polygons`."""
    import cv2

    out: list[list[dict]] = []
    for mask in masks:
        rings: list[dict] = []
        if mask.any():
            # pad 1 px and upsample 2x so rings run along pixel edges, not pixel centres
            big = np.kron(np.pad(mask, 1).astype(np.uint8), np.ones((2, 2), np.uint8))
            contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            for contour, info in zip(contours, hierarchy[0], strict=True):
                if tolerance > 0:
                    contour = cv2.approxPolyDP(contour, 2 * tolerance, True)
                pts = contour.reshape(-1, 2).astype(np.float32)
                pts = np.floor((pts + 1) / 2) - 1  # back to original pixel-corner coordinates
                keep = np.ones(len(pts), bool)
                keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
                pts = pts[keep]
                if len(pts) >= 3:
                    rings.append({"points": pts, "hole": bool(info[3] >= 0)})
        out.append(rings)
    return out


def polygons_to_mask(rings: Sequence[dict], image_size: tuple[int, int]) -> np.ndarray:
    """Rasterise rings back to an (H, W) bool mask; see :meth:`Masks.polygons_to_mask`."""
    from pycocotools import mask as mask_utils

    h, w = image_size
    mask = np.zeros((h, w), bool)
    polys = [np.asarray(r["points"], np.float64).ravel().tolist() for r in rings]
    polys = [p for p in polys if len(p) >= 6]
    if polys:
        for area in np.moveaxis(mask_utils.decode(mask_utils.frPyObjects(polys, h, w)), -1, 0):
            mask ^= area.astype(bool)
    return mask


def draw_overlay(masks: Any, image: Any, alpha: float, outline: bool, seed: int, colour_by: str) -> np.ndarray:
    """RGB uint8 picture of ``masks`` (a ``Masks``) over ``image``; see :meth:`Masks.overlay`."""
    import cv2

    from ..io import read_image

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}.")
    rgb = read_image(image)
    if rgb.shape[:2] != masks.image_size:
        raise InputError(
            f"overlay: image is {rgb.shape[1]}x{rgb.shape[0]} but the masks are "
            f"{masks.width}x{masks.height}; pass the image the masks were computed on."
        )
    if colour_by not in ("mask", "label"):
        raise InputError(f"colour_by must be 'mask' or 'label', got {colour_by!r}.")
    if colour_by == "label" and masks.labels is not None and len(masks):
        colours = mask_colours(int(masks.labels.max()) + 1, seed)[masks.labels]
    else:
        colours = mask_colours(len(masks), seed)
    out = rgb.astype(np.float32)
    order = np.argsort(-masks.areas, kind="stable")
    dense = masks.masks
    kernel = np.ones((3, 3), np.uint8)
    for i in order:
        m = dense[i]
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
        if outline:
            m8 = m.astype(np.uint8)
            edge = (m8 - cv2.erode(m8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)).astype(bool)
            out[edge] = colours[i]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
