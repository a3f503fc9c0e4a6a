"""Masks <-> API values: ``imseg.Masks`` written as RLE / PNG / polygons, and ``mask_input`` read from base64.

Encoding is CPU work proportional to the image size (a 36 Mpx PNG takes seconds): callers run
:func:`encode_masks` in a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from ..errors import PromptError
from ..masks import Masks
from .schemas import RLE, MaskOut

#: Largest |value| accepted in a mask_input. SAM's own low-res logits stay within a few hundred
#: (a sigmoid is saturated in float32 beyond |x| ~ 17), so 1e4 loses nothing real, while values
#: near float32's limit (3e38) overflow to inf in the mask-downscaling convolutions and come out
#: as NaN scores.
MASK_INPUT_LIMIT = 1e4


def mask_png_b64(mask: np.ndarray) -> str:
    """One (H, W) bool mask as a base64 8-bit gray PNG, 255 = mask (the pixels ``Masks.save(format="png")`` writes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def outer_polygons(masks: Masks) -> list[list[list[float]]]:
    """Per mask, its outer rings from :meth:`Masks.to_polygons` flattened to ``[x0, y0, x1, y1, ...]`` (holes left out)."""
    return [[ring["points"].reshape(-1).astype(float).tolist() for ring in rings if not ring["hole"]]
            for rings in masks.to_polygons()]


def encode_masks(masks: Masks, formats: list[str], return_logits: bool) -> list[MaskOut]:
    """Masks sorted by score (best first) as API objects in the requested formats."""
    masks = masks.sort_by("score") if len(masks) else masks
    rles = masks.to_rle() if "rle" in formats else None
    polygons = outer_polygons(masks) if "polygons" in formats else None
    stability = masks.fields.get("stability_score")
    logits = masks.fields.get("low_res_logits") if return_logits else None
    detector = masks.fields.get("detector_score")
    names = masks.class_names if masks.labels is not None and masks.class_names else None
    out = []
    for i in range(len(masks)):
        out.append(
            MaskOut(
                score=float(masks.scores[i]),
                area=int(masks.areas[i]),
                bbox=[float(v) for v in masks.boxes[i]],
                stability_score=None if stability is None else float(stability[i]),
                label=None if names is None else str(names[int(masks.labels[i])]),
                detector_score=None if detector is None else float(detector[i]),
                rle=RLE(size=[int(v) for v in rles[i]["size"]], counts=rles[i]["counts"]) if rles else None,
                png=mask_png_b64(masks.masks[i]) if "png" in formats else None,
                polygons=polygons[i] if polygons is not None else None,
                low_res_logits=None if logits is None
                else base64.b64encode(np.ascontiguousarray(logits[i], "<f4").tobytes()).decode("ascii"),
            )
        )
    return out


def _looks_like(n_bytes: int) -> str:
    """What ``n_bytes`` of float32 would be as a square map (" (a 256x256 map)"), or ""."""
    side = int(round((n_bytes / 4) ** 0.5))
    return f" (a {side}x{side} map)" if side and side * side * 4 == n_bytes else ""


def decode_mask_input(text: str, size: tuple[int, int]) -> np.ndarray:
    """base64 float32 (h, w) logits -> (1, h, w) float32; ``size`` = (h, w), the model's low-res size."""
    h, w = size
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise PromptError(f"mask_input is not valid base64 ({exc}).") from exc
    if len(raw) != h * w * 4:
        raise PromptError(
            f"mask_input must be {h}x{w} float32 logits for this model ({h * w * 4} bytes once base64-decoded), got "
            f"{len(raw)} bytes{_looks_like(len(raw))}; pass a low_res_logits value from a previous response of this "
            f"model (return_logits=true); GET /v1/models gives its low_res_size."
        )
    arr = np.frombuffer(raw, "<f4").reshape(1, h, w).astype(np.float32)
    if not np.isfinite(arr).all():
        raise PromptError("mask_input contains NaN or infinite values.")
    peak = float(np.abs(arr).max())
    if peak > MASK_INPUT_LIMIT:
        y, x = np.unravel_index(int(np.abs(arr[0]).argmax()), (h, w))
        raise PromptError(
            f"mask_input holds logits up to |{peak:.3g}| (e.g. at row {y}, column {x}); mask logits must lie within "
            f"±{MASK_INPUT_LIMIT:g}. Pass a low_res_logits value from a previous response (return_logits=true)."
        )
    return arr
