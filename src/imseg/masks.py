"""``Masks``: the one result type every segmenter returns and every writer takes.

N binary masks of one image, each with a score, an XYWH box, an area, an optional class label,
and free-form per-mask fields (e.g. SAM's ``stability_score``). Masks are held either as a dense
boolean array (N, H, W) or as COCO RLEs (decoded lazily on first access of ``.masks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError


def _rle_counts_to_str(rle: dict) -> dict:
    out = dict(rle)
    if isinstance(out.get("counts"), bytes):
        out["counts"] = out["counts"].decode("ascii")
    return out


def encode_rle(masks: np.ndarray) -> list[dict]:
    """Encode (N, H, W) bool masks as COCO compressed RLEs (``counts`` as str) via pycocotools."""
    from pycocotools import mask as mask_utils

    if masks.ndim != 3:
        raise InputError(f"encode_rle expects (N, H, W) masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    return [_rle_counts_to_str(r) for r in mask_utils.encode(fortran)]


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


class Masks:
    """N binary masks of one image with per-mask scores, boxes (XYWH), areas and labels.

    Args:
        masks: (N, H, W) bool array (or anything castable). Give either this or ``rles``.
        scores: (N,) float confidences; default 1.0.
        boxes: (N, 4) XYWH float boxes; computed from the masks when omitted.
        areas: (N,) int pixel counts; computed when omitted.
        labels: (N,) int class ids, or None.
        class_names: names indexed by label id, or None.
        image_size: (H, W); required with ``rles``-less empty masks.
        rles: list of COCO RLE dicts instead of dense masks (decoded lazily).
        **fields: extra per-mask arrays of length N (e.g. ``stability_score``, ``point_coords``).
    """

    def __init__(
        self,
        masks: np.ndarray | None = None,
        scores: Any = None,
        boxes: Any = None,
        areas: Any = None,
        labels: Any = None,
        class_names: Sequence[str] | None = None,
        image_size: tuple[int, int] | None = None,
        rles: list[dict] | None = None,
        **fields: Any,
    ) -> None:
        if (masks is None) == (rles is None):
            raise InputError("Masks needs exactly one of masks= (N, H, W) or rles= (list of COCO RLE dicts)")
        self._rles: list[dict] | None = None
        self._masks: np.ndarray | None = None
        if masks is not None:
            arr = np.asarray(masks)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise InputError(f"masks must have shape (N, H, W); got {arr.shape}")
            self._masks = arr.astype(bool, copy=False)
            n, h, w = arr.shape
            if image_size is not None and tuple(image_size) != (h, w):
                raise InputError(f"image_size {tuple(image_size)} does not match masks of size {(h, w)}")
            self.image_size = (int(h), int(w))
        else:
            self._rles = [_rle_counts_to_str(r) for r in rles]
            n = len(self._rles)
            if n:
                self.image_size = (int(self._rles[0]["size"][0]), int(self._rles[0]["size"][1]))
            elif image_size is None:
                raise InputError("an empty Masks built from rles needs image_size=(H, W)")
            else:
                self.image_size = (int(image_size[0]), int(image_size[1]))
        self.scores = self._per_mask(scores, n, np.float32, "scores", default=1.0)
        if areas is None:
            if self._masks is not None:
                areas = self._masks.reshape(n, h * w).sum(axis=1)
            else:
                from pycocotools import mask as mask_utils

                areas = mask_utils.area(self._coco_rles()) if n else np.zeros(0)
        self.areas = self._per_mask(areas, n, np.int64, "areas")
        if boxes is None:
            if self._masks is not None:
                boxes = boxes_from_masks(self._masks)
            else:
                from pycocotools import mask as mask_utils

                boxes = mask_utils.toBbox(self._coco_rles()) if n else np.zeros((0, 4))
        self.boxes = np.asarray(boxes, np.float32).reshape(n, 4)
        self.labels = None if labels is None else self._per_mask(labels, n, np.int64, "labels")
        self.class_names = list(class_names) if class_names is not None else None
        self.fields: dict[str, np.ndarray] = {}
        for key, value in fields.items():
            value = np.asarray(value)
            if len(value) != n:
                raise InputError(f"field {key!r} has {len(value)} entries for {n} masks")
            self.fields[key] = value

    @staticmethod
    def _per_mask(values: Any, n: int, dtype, name: str, default: float | None = None) -> np.ndarray:
        if values is None:
            if default is None:
                raise InputError(f"{name} is required")
            return np.full(n, default, dtype)
        arr = np.asarray(values, dtype=dtype).reshape(-1)
        if len(arr) != n:
            raise InputError(f"{name} has {len(arr)} entries for {n} masks")
        return arr

    def _coco_rles(self) -> list[dict]:
        assert self._rles is not None
        return [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in self._rles]

    # ------------------------------------------------------------------ access
    @property
    def masks(self) -> np.ndarray:
        """Dense (N, H, W) bool masks (decoded from RLE on first access)."""
        if self._masks is None:
            self._masks = decode_rle(self._rles, self.image_size)
        return self._masks

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"Masks(n={len(self)}, image_size=({h}, {w}), fields={sorted(self.fields)})"

    def __getitem__(self, index) -> Masks:
        """Select masks by int, slice, index array or boolean array; always returns ``Masks``."""
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"mask index {i} out of range for {len(self)} masks")
            index = [i]
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        kwargs = dict(
            scores=self.scores[idx],
            boxes=self.boxes[idx],
            areas=self.areas[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            image_size=self.image_size,
            **{k: v[idx] for k, v in self.fields.items()},
        )
        if self._masks is not None:
            return Masks(self._masks[idx], **kwargs)
        return Masks(rles=[self._rles[i] for i in idx], **kwargs)

    # ------------------------------------------------------------------ selection
    def filter(self, min_area: int = 0, min_score: float = -np.inf, max_area: int | None = None) -> Masks:
        """Keep masks with area >= min_area (pixels), <= max_area, and score >= min_score."""
        keep = (self.areas >= min_area) & (self.scores >= min_score)
        if max_area is not None:
            keep &= self.areas <= max_area
        return self[keep]

    def sort_by(self, key: str = "score", descending: bool = True) -> Masks:
        """Order masks by ``score``, ``area`` or any extra field name."""
        values = {"score": self.scores, "scores": self.scores, "area": self.areas, "areas": self.areas}.get(key)
        if values is None:
            if key not in self.fields:
                raise InputError(f"cannot sort by {key!r}; use 'score', 'area' or one of {sorted(self.fields)}")
            values = self.fields[key]
        order = np.argsort(-values if descending else values, kind="stable")
        return self[order]

    # ------------------------------------------------------------------ conversions
    def label_map(self, background: int = 0) -> np.ndarray:
        """(H, W) int32 map. With ``labels`` set, pixel = class label; otherwise pixel = mask index + 1.

        Larger masks are painted first so smaller (usually nested) masks stay visible.
        """
        out = np.full(self.image_size, background, np.int32)
        order = np.argsort(-self.areas, kind="stable")
        dense = self.masks
        for i in order:
            value = int(self.labels[i]) if self.labels is not None else int(i) + 1
            out[dense[i]] = value
        return out

    @classmethod
    def from_label_map(
        cls,
        label_map: np.ndarray,
        *,
        background: int | None = 0,
        instances: bool = False,
        class_names: Sequence[str] | None = None,
        scores: Any = None,
    ) -> Masks:
        """Build masks from an (H, W) integer map.

        ``instances=False``: one mask per distinct value (a class map), ``labels`` = the value.
        ``instances=True``: one mask per distinct value without labels (an instance map).
        ``background`` values are skipped (None keeps all).
        """
        lm = np.asarray(label_map)
        if lm.ndim != 2:
            raise InputError(f"label_map must be (H, W); got shape {lm.shape}")
        values = np.unique(lm)
        if background is not None:
            values = values[values != background]
        dense = lm[None] == values[:, None, None] if len(values) else np.zeros((0, *lm.shape), bool)
        labels = None if instances else values.astype(np.int64)
        return cls(dense, scores=scores, labels=labels, class_names=class_names, image_size=lm.shape)

    def to_rle(self) -> list[dict]:
        """COCO compressed RLEs ``{"size": [H, W], "counts": str}``, one per mask."""
        if self._rles is not None:
            return [dict(r) for r in self._rles]
        self._rles = encode_rle(self._masks)
        return [dict(r) for r in self._rles]

    def to_coco(self, image_id: int = 0, category_id: int | None = None, start_id: int = 1) -> list[dict]:
        """COCO result/annotation dicts (``segmentation`` RLE, ``bbox`` XYWH, ``area``, ``score``).

        ``category_id`` overrides per-mask labels; without both, category 1 is used.
        """
        anns = []
        for i, rle in enumerate(self.to_rle()):
            if category_id is not None:
                cat = int(category_id)
            elif self.labels is not None:
                cat = int(self.labels[i])
            else:
                cat = 1
            anns.append(
                {
                    "id": start_id + i,
                    "image_id": int(image_id),
                    "category_id": cat,
                    "segmentation": rle,
                    "area": int(self.areas[i]),
                    "bbox": [float(v) for v in self.boxes[i]],
                    "score": float(self.scores[i]),
                    "iscrowd": 0,
                }
            )
        return anns

    @classmethod
    def concat(cls, items: Sequence[Masks]) -> Masks:
        """Join several ``Masks`` of the same image into one."""
        items = list(items)
        if not items:
            raise InputError("Masks.concat needs at least one Masks")
        size = items[0].image_size
        if any(m.image_size != size for m in items):
            raise InputError("Masks.concat: all parts must share one image_size")
        keys = set(items[0].fields)
        fields = {k: np.concatenate([m.fields[k] for m in items]) for k in keys if all(k in m.fields for m in items)}
        has_labels = all(m.labels is not None for m in items)
        return cls(
            np.concatenate([m.masks for m in items]) if items else None,
            scores=np.concatenate([m.scores for m in items]),
            boxes=np.concatenate([m.boxes for m in items]),
            areas=np.concatenate([m.areas for m in items]),
            labels=np.concatenate([m.labels for m in items]) if has_labels else None,
            class_names=items[0].class_names,
            image_size=size,
            **fields,
        )
