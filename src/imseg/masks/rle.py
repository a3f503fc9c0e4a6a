"""COCO RLE encode/decode and other per-mask array helpers (boxes, binary checks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError


def _rle_counts_to_str(rle: dict) -> dict:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InputError(f"an RLE is a dict with 'size' [H, W] and 'counts'; got {str(rle)[:80]!r}.")
    out = dict(rle)
    if isinstance(out["counts"], list):  # uncompressed (COCO crowd style) -> compressed
        from pycocotools import mask as mask_utils

        out = dict(mask_utils.frPyObjects(out, int(out["size"][0]), int(out["size"][1])))
    if isinstance(out.get("counts"), bytes):
        out["counts"] = out["counts"].decode("ascii")
    out["size"] = [int(out["size"][0]), int(out["size"][1])]
    return out


#: pycocotools' ``area`` sizes its result with a uint8 scalar, which NumPy 2 refuses past 255 masks
AREA_CHUNK = 255


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """(N,) int64 pixel counts of pycocotools RLEs (``counts`` as bytes), any N: ``mask_utils.area`` is called on
    at most :data:`AREA_CHUNK` at a time, since for more it fails with an OverflowError under NumPy 2."""
    from pycocotools import mask as mask_utils

    rles = list(rles)
    parts = [np.asarray(mask_utils.area(rles[i:i + AREA_CHUNK]), np.int64).reshape(-1)
             for i in range(0, len(rles), AREA_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _as_bool_masks(arr: np.ndarray) -> np.ndarray:
    """Binary masks as bool; anything that is not 0/1 (or 0/255) is refused rather than guessed at."""
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"masks must be boolean (or 0/1 numbers); got dtype {arr.dtype}.")
    off = (arr != 0) & (arr != 1)
    if off.any() and not (np.issubdtype(arr.dtype, np.integer) and ((arr == 0) | (arr == 255)).all()):
        raise InputError(
            f"masks must be binary (bool, 0/1 or 0/255); got values such as {arr[off][0].item()!r}. "
            f"Threshold probabilities or logits first (e.g. probs > 0.5), or build from a label map with "
            f"Masks.from_label_map."
        )
    return arr != 0


def encode_rle(masks: np.ndarray) -> list[dict]:
    """Encode (N, H, W) bool masks as COCO compressed RLEs (``counts`` as str) via pycocotools."""
    if masks.ndim != 3:
        raise InputError(f"encode_rle expects (N, H, W) masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    return [_rle_counts_to_str(r) for r in coco_rles(np.ascontiguousarray(masks.transpose(0, 2, 1), dtype=np.uint8))]


def coco_rles(masks_nwh: np.ndarray) -> list[dict]:
    """pycocotools RLEs (``counts`` as bytes) of (N, W, H) C-contiguous uint8 masks: that layout is the
    (H, W, N) Fortran array pycocotools reads, so nothing is copied."""
    from pycocotools import mask as mask_utils

    if len(masks_nwh) == 0:
        return []
    return mask_utils.encode(masks_nwh.transpose(2, 1, 0))


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of an (H, W) bool mask (column-major runs, zeros first)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return counts


def decode_rle(rles: Sequence[dict], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode COCO RLEs (compressed or uncompressed) into (N, H, W) bool masks."""
    from pycocotools import mask as mask_utils

    if len(rles) == 0:
        if size is None:
            raise InputError("decode_rle needs size=(H, W) to decode an empty list")
        return np.zeros((0, *size), bool)
    fixed = []
    for r in rles:
        if isinstance(r.get("counts"), list):  # uncompressed -> compressed
            h, w = r["size"]
            r = mask_utils.frPyObjects(r, h, w)
        else:
            r = {"size": list(r["size"]), "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
        fixed.append(r)
    return np.ascontiguousarray(mask_utils.decode(fixed).transpose(2, 0, 1).astype(bool))


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight XYWH boxes (float32, (N, 4)) of (N, H, W) bool masks; empty masks get [0, 0, 0, 0]."""
    n = len(masks)
    boxes = np.zeros((n, 4), np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        if ys.size == 0:
            continue
        xs = np.flatnonzero(cols[i])
        boxes[i] = (xs[0], ys[0], xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1)
    return boxes
