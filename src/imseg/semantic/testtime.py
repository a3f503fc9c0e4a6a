"""Test-time augmentation options shared by every semantic engine (PyTorch, ONNX Runtime, OpenVINO): which flips
are averaged, at which scales, and the letterbox side of a scale. Numpy only, so the exported engines stay
torch-free."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError


def check_flips(flips: str, what: str) -> str:
    """``flips`` ("h", "v" or "hv"), or a ConfigError naming ``what``."""
    if not isinstance(flips, str) or not flips or set(flips) - {"h", "v"}:
        raise ConfigError(f"{what} must be True/False or flips to average: 'h' (horizontal), 'v' (vertical) or 'hv'; "
                          f"got {flips!r}")
    return flips


def parse_scales(scales: Any) -> tuple[float, ...]:
    """Test-time scale factors from a number, a sequence of numbers or a comma-separated string ("1,1.2,1.4")."""
    items = scales.split(",") if isinstance(scales, str) else scales if isinstance(scales, list | tuple) else [scales]
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError("scales must be one or more positive factors of the inference size (comma-separated "
                          f"numbers such as 1,1.2,1.4, or a sequence of them); got {scales!r}")
    return values


def flip_views(tta: bool | str, tta_flips: str) -> list[tuple[bool, bool]]:
    """(flip width, flip height) views averaged: the image itself plus each flip of ``tta`` (True = ``tta_flips``;
    a string of "h"/"v" picks the flips)."""
    flips = check_flips(tta, "tta") if isinstance(tta, str) else (tta_flips if tta else "")
    return [(False, False)] + [(True, False)] * ("h" in flips) + [(False, True)] * ("v" in flips)


def letterbox_side(imgsz: int, scale: float, multiple: int) -> int:
    """The letterbox side for a test-time ``scale``: ``imgsz * scale`` rounded to the nearest multiple the model
    needs (``imgsz`` itself at scale 1)."""
    return int(imgsz) if scale == 1.0 else max(multiple, round(imgsz * scale / multiple) * multiple)
