"""The ``Masks`` class: N binary masks of one image with per-mask scores, boxes, areas, labels and fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from . import draw, files
from .rle import _as_bool_masks, _rle_counts_to_str, boxes_from_masks, decode_rle, encode_rle, rle_areas


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
            self._masks = _as_bool_masks(arr)
            n, h, w = arr.shape
            if image_size is not None and tuple(image_size) != (h, w):
                raise InputError(f"image_size {tuple(image_size)} does not match masks of size {(h, w)}")
            self.image_size = (int(h), int(w))
        else:
            self._rles = [_rle_counts_to_str(r) for r in rles]
            n = len(self._rles)
            sizes = {tuple(r["size"]) for r in self._rles}
            if len(sizes) > 1:
                raise InputError(f"rles= mixes mask sizes {sorted(sizes)}; all masks of one Masks share one image size.")
            if n and image_size is not None and tuple(image_size) != sizes.pop():
                raise InputError(f"image_size {tuple(image_size)} does not match rles of size {self._rles[0]['size']}")
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
                areas = rle_areas(self._coco_rles())
        self.areas = self._per_mask(areas, n, np.int64, "areas")
        if boxes is None:
            if self._masks is not None:
                boxes = boxes_from_masks(self._masks)
            else:
                from pycocotools import mask as mask_utils

                boxes = mask_utils.toBbox(self._coco_rles()) if n else np.zeros((0, 4))
        try:
            boxes = np.asarray(boxes, np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"boxes must be numbers, (N, 4) XYWH; got {exc}.") from exc
        if boxes.shape != (n, 4) and not (boxes.size == 4 * n and boxes.ndim == 1):
            raise InputError(f"boxes must have shape ({n}, 4) (XYWH per mask); got {boxes.shape}.")
        self.boxes = boxes.reshape(n, 4)
        self.labels = None if labels is None else self._per_mask(labels, n, np.int64, "labels")
        self.class_names = list(class_names) if class_names is not None else None
        self.fields: dict[str, np.ndarray] = {}
        for key, value in fields.items():
            value = np.asarray(value)
            if value.ndim == 0 or len(value) != n:
                raise InputError(f"field {key!r} has {value.size if value.ndim == 0 else len(value)} entries for "
                                 f"{n} masks; pass one value per mask.")
            self.fields[key] = value

    @staticmethod
    def _per_mask(values: Any, n: int, dtype, name: str, default: float | None = None) -> np.ndarray:
        if values is None:
            if default is None:
                raise InputError(f"{name} is required")
            return np.full(n, default, dtype)
        try:
            arr = np.asarray(values, dtype=dtype).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be numbers, one per mask; got {str(values)[:60]!r}.") from exc
        if len(arr) != n:
            raise InputError(f"{name} has {len(arr)} entries for {n} masks")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise InputError(f"{name} contains NaN or infinite values; they cannot be written to JSON or ranked.")
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

    # ------------------------------------------------------------------ polygons, overlay, files
    def to_polygons(self, tolerance: float = 0.0) -> list[list[dict]]:
        """Outlines as rings: per mask a list of ``{"points": (K, 2) float XY px, "hole": bool}``.

        OpenCV contours with the two-level hierarchy (outer boundaries and the holes inside them);
        ``tolerance`` > 0 simplifies each ring with Douglas-Peucker (max deviation in px). Points are
        pixel corners, so a ring traces the outside of its pixels (COCO polygon convention).
        """
        return draw.mask_polygons(self.masks, tolerance)

    @staticmethod
    def polygons_to_mask(rings: Sequence[dict], image_size: tuple[int, int]) -> np.ndarray:
        """Rasterise rings from :meth:`to_polygons` back to an (H, W) bool mask.

        Even-odd rule: a pixel is in the mask when an odd number of rings enclose it, so holes are cut
        from their outer ring and islands inside a hole are kept (the ``hole`` flags are informative).
        """
        return draw.polygons_to_mask(rings, image_size)

    def overlay(self, image: Any, alpha: float = 0.5, outline: bool = True, seed: int = 0,
                colour_by: str = "mask") -> np.ndarray:
        """RGB uint8 (H, W, 3) picture of the masks over ``image`` (any ``read_image`` source).

        Each mask gets a distinct colour (golden-ratio hues; ``colour_by="label"`` gives every mask of a
        class its class's colour, the same in every image), blended with ``alpha``; larger masks are
        drawn first so nested ones stay visible; ``outline`` draws 1-px boundaries in the mask colour.
        """
        return draw.draw_overlay(self, image, alpha, outline, seed, colour_by)

    def save(self, directory: Any, format: str = "png", stem: str = "masks", image_id: int = 0) -> list[Any]:
        """Write the masks under ``directory`` (created) atomically; returns the paths written.

        Formats: ``png`` (one 0/255 PNG per mask ``{stem}_{i:03d}.png`` plus ``{stem}.json`` metadata),
        ``coco`` (``{stem}.json``: a COCO dataset with images/annotations/categories), ``rle``
        (``{stem}.rle.json``), ``polygons`` (``{stem}.polygons.json``), ``npz`` (``{stem}.npz``).
        Every format loads back with :meth:`Masks.load`.
        """
        return files.save_masks(self, directory, format=format, stem=stem, image_id=image_id)

    def to_coco_dataset(self, file_name: str = "image", image_id: int = 1, start_id: int = 1) -> dict:
        """A complete COCO dict (``images``, ``annotations``, ``categories``) that ``COCO()`` loads."""
        anns = self.to_coco(image_id=image_id, start_id=start_id)
        for ann, fields in zip(anns, self._field_rows(), strict=True):
            ann.update(fields)
        cat_ids = sorted({a["category_id"] for a in anns}) or [1]
        names = self.class_names or []
        categories = [{"id": c, "name": names[c] if 0 <= c < len(names) else f"class_{c}"} for c in cat_ids]
        return {
            "images": [{"id": int(image_id), "file_name": str(file_name), "height": self.height, "width": self.width}],
            "annotations": anns,
            "categories": categories,
        }

    def _field_rows(self) -> list[dict]:
        rows: list[dict] = [{} for _ in range(len(self))]
        for key, values in self._small_fields().items():
            for i, v in enumerate(values):
                rows[i][key] = v.tolist() if isinstance(v, np.ndarray) else (v.item() if hasattr(v, "item") else v)
        return rows

    def _meta(self) -> dict:
        return {
            "imseg_masks": 1,
            "image_size": list(self.image_size),
            "scores": self.scores.tolist(),
            "boxes": self.boxes.tolist(),
            "areas": self.areas.tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "class_names": self.class_names,
            "fields": {k: v.tolist() for k, v in self._small_fields().items()},
        }

    def _small_fields(self) -> dict[str, np.ndarray]:
        """Fields with at most 16 values per mask (JSON formats skip bulky ones like low-res logits)."""
        return {k: v for k, v in self.fields.items() if v.size <= 16 * max(len(v), 1)}

    @classmethod
    def load(cls, path: Any, stem: str | None = None) -> Masks:
        """Read masks written by :meth:`save` (a file, or a directory plus ``stem``), or any COCO JSON
        with RLE/polygon segmentations of one image."""
        return files.load_masks(cls, path, stem)

