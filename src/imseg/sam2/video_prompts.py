"""Prompts of the SAM 2 video predictor checked and put in the model frame: clicks and boxes as (1, N, 2) points
with labels (box corners first, labelled 2 and 3), masks as (1, 1, S, S) binary masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PromptError

VALID_LABELS = (-1, 0, 1, 2, 3)


def _tensor(value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    try:
        t = value if isinstance(value, torch.Tensor) else torch.tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name} must be numbers (a list, numpy array or tensor), got {value!r}.") from exc
    t = t.detach().cpu()
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16,
                                                                         torch.int8, torch.uint8)):
        raise PromptError(f"{name} must be numbers, got dtype {t.dtype}.")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise PromptError(f"{name} contains NaN or infinite values.")
    return t.to(dtype)


def point_prompt(points: Any, labels: Any, box: Any, clear_old_points: bool, normalize_coords: bool,
                 video_hw: tuple[int, int], image_size: int, device: torch.device,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, 2) XY + labels (N,) (1 object, 0 background) and/or a box (4,) XYXY -> model-frame points
    (1, N', 2) float32 and labels (1, N') int32. Coordinates are video pixels, or in [0, 1] when
    ``normalize_coords`` is False."""
    if (points is None) != (labels is None):
        raise PromptError("points and labels must be given together: labels (N,) say 1 (object) or 0 (background) "
                          "for each of the N points.")
    if points is None and box is None:
        raise PromptError("give points (with labels) or a box for the object.")
    pts = torch.zeros(0, 2) if points is None else _tensor(points, "points", torch.float32)
    labs = torch.zeros(0, dtype=torch.int32) if labels is None else _tensor(labels, "labels", torch.int32)
    if pts.dim() == 2:
        pts = pts.unsqueeze(0)
    if labs.dim() == 1:
        labs = labs.unsqueeze(0)
    if pts.dim() != 3 or pts.shape[0] != 1 or pts.shape[-1] != 2 or labs.shape != pts.shape[:2]:
        raise PromptError(f"points must be (N, 2) XY coordinates with labels (N,); got points of shape "
                          f"{tuple(pts.shape)} and labels of shape {tuple(labs.shape)}.")
    if labels is not None and not torch.isin(labs, torch.tensor(VALID_LABELS, dtype=torch.int32)).all():
        raise PromptError(f"labels must be 1 (object) or 0 (background) (or -1 padding, 2/3 box corners); got "
                          f"{labs.flatten().tolist()}.")
    if box is not None:
        if not clear_old_points:
            raise PromptError("a box must come before any point of the object: add it with clear_old_points=True "
                              "(the default), then add points with clear_old_points=False.")
        bx = _tensor(box, "box", torch.float32)
        if bx.numel() != 4:
            raise PromptError(f"box must be 4 numbers XYXY (x0, y0, x1, y1), got shape {tuple(bx.shape)}.")
        pts = torch.cat([bx.reshape(1, 2, 2), pts], dim=1)
        labs = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), labs], dim=1)
    if normalize_coords:
        h, w = video_hw
        pts = pts / torch.tensor([w, h])
    return (pts * image_size).to(device), labs.to(device)


def mask_prompt(mask: Any, image_size: int, device: torch.device) -> torch.Tensor:
    """A binary (H, W) mask of any size -> (1, 1, S, S) float32 in {0, 1} (antialiased resize, then >= 0.5)."""
    if isinstance(mask, torch.Tensor):
        m = mask.detach()
    else:
        try:
            m = torch.tensor(np.asarray(mask), dtype=torch.bool)
        except (TypeError, ValueError) as exc:
            raise PromptError(f"mask must be a 2-D array of booleans or 0/1 values, got {type(mask).__name__}.") \
                from exc
    if m.dim() != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise PromptError(f"mask must be a 2-D (H, W) array, got shape {tuple(m.shape)}.")
    m = m[None, None].float().to(device)
    if tuple(m.shape[-2:]) != (image_size, image_size):
        m = F.interpolate(m, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m
