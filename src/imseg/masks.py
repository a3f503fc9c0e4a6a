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
                from pycocotools import mask as mask_utils

                areas = mask_utils.area(self._coco_rles()) if n else np.zeros(0)
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
        import cv2

        out: list[list[dict]] = []
        for mask in self.masks:
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

    @staticmethod
    def polygons_to_mask(rings: Sequence[dict], image_size: tuple[int, int]) -> np.ndarray:
        """Rasterise rings from :meth:`to_polygons` back to an (H, W) bool mask.

        Even-odd rule: a pixel is in the mask when an odd number of rings enclose it, so holes are cut
        from their outer ring and islands inside a hole are kept (the ``hole`` flags are informative).
        """
        from pycocotools import mask as mask_utils

        h, w = image_size
        mask = np.zeros((h, w), bool)
        polys = [np.asarray(r["points"], np.float64).ravel().tolist() for r in rings]
        polys = [p for p in polys if len(p) >= 6]
        if polys:
            for area in np.moveaxis(mask_utils.decode(mask_utils.frPyObjects(polys, h, w)), -1, 0):
                mask ^= area.astype(bool)
        return mask

    def overlay(self, image: Any, alpha: float = 0.5, outline: bool = True, seed: int = 0,
                colour_by: str = "mask") -> np.ndarray:
        """RGB uint8 (H, W, 3) picture of the masks over ``image`` (any ``read_image`` source).

        Each mask gets a distinct colour (golden-ratio hues; ``colour_by="label"`` gives every mask of a
        class its class's colour, the same in every image), blended with ``alpha``; larger masks are
        drawn first so nested ones stay visible; ``outline`` draws 1-px boundaries in the mask colour.
        """
        import cv2

        from .io import read_image

        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {alpha}.")
        rgb = read_image(image)
        if rgb.shape[:2] != self.image_size:
            raise InputError(
                f"overlay: image is {rgb.shape[1]}x{rgb.shape[0]} but the masks are "
                f"{self.width}x{self.height}; pass the image the masks were computed on."
            )
        if colour_by not in ("mask", "label"):
            raise InputError(f"colour_by must be 'mask' or 'label', got {colour_by!r}.")
        if colour_by == "label" and self.labels is not None and len(self):
            colours = mask_colours(int(self.labels.max()) + 1, seed)[self.labels]
        else:
            colours = mask_colours(len(self), seed)
        out = rgb.astype(np.float32)
        order = np.argsort(-self.areas, kind="stable")
        dense = self.masks
        kernel = np.ones((3, 3), np.uint8)
        for i in order:
            m = dense[i]
            out[m] = (1 - alpha) * out[m] + alpha * colours[i]
            if outline:
                m8 = m.astype(np.uint8)
                edge = (m8 - cv2.erode(m8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)).astype(bool)
                out[edge] = colours[i]
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def save(self, directory: Any, format: str = "png", stem: str = "masks", image_id: int = 0) -> list[Any]:
        """Write the masks under ``directory`` (created) atomically; returns the paths written.

        Formats: ``png`` (one 0/255 PNG per mask ``{stem}_{i:03d}.png`` plus ``{stem}.json`` metadata),
        ``coco`` (``{stem}.json``: a COCO dataset with images/annotations/categories), ``rle``
        (``{stem}.rle.json``), ``polygons`` (``{stem}.polygons.json``), ``npz`` (``{stem}.npz``).
        Every format loads back with :meth:`Masks.load`.
        """
        import json
        from pathlib import Path

        from .io import atomic_path, write_bytes, write_image

        fmt = format.lower()
        if fmt not in SAVE_FORMATS:
            raise InputError(f"unknown mask format {format!r}; use one of {', '.join(SAVE_FORMATS)}.")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        meta = self._meta()

        def dump(path: Path, payload: dict) -> Path:
            return write_bytes(path, json.dumps(payload).encode("utf-8"))

        if fmt == "npz":
            path = root / f"{stem}.npz"
            arrays = {"masks": np.packbits(self.masks, axis=-1), "width": np.int64(self.width),
                      "scores": self.scores, "boxes": self.boxes, "areas": self.areas}
            if self.labels is not None:
                arrays["labels"] = self.labels
            for key, value in self.fields.items():
                if value.dtype == object:
                    raise InputError(f"field {key!r} holds Python objects, which npz cannot store safely; give it a "
                                     f"numeric or string dtype, or save with format='rle' (JSON).")
                arrays[f"field_{key}"] = value
            if self.class_names is not None:
                arrays["class_names"] = np.asarray(self.class_names, dtype=str)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            return [path]
        if fmt == "png":
            paths = []
            for i, mask in enumerate(self.masks):
                paths.append(write_image(root / f"{stem}_{i:03d}.png", mask))
            meta["files"] = [p.name for p in paths]
            return [*paths, dump(root / f"{stem}.json", meta)]
        if fmt == "coco":
            return [dump(root / f"{stem}.json", self.to_coco_dataset(file_name=f"{stem}", image_id=image_id))]
        if fmt == "rle":
            meta["rles"] = self.to_rle()
            return [dump(root / f"{stem}.rle.json", meta)]
        meta["polygons"] = [
            [{"points": r["points"].tolist(), "hole": r["hole"]} for r in rings] for rings in self.to_polygons()
        ]
        return [dump(root / f"{stem}.polygons.json", meta)]

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
        from pathlib import Path

        p = Path(path)
        if p.is_dir():
            if stem is not None:  # exactly the names save() gives, not a pattern
                names = (f"{stem}.npz", f"{stem}.json", f"{stem}.rle.json", f"{stem}.polygons.json")
                candidates = [p / name for name in names if (p / name).is_file()]
            else:
                candidates = sorted(p.glob("*.npz")) + sorted(p.glob("*.json"))
            if not candidates:
                raise InputError(f"{p}: no saved masks{'' if stem is None else f' named {stem!r}'} (.npz or .json) "
                                 f"found; pass the file written by Masks.save.")
            p = candidates[0]
        if not p.is_file():
            raise InputError(f"{p}: no such file; pass a path written by Masks.save().")
        try:
            return cls._load_file(p)
        except InputError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(
                f"{p}: not a masks file this version can read ({type(exc).__name__}: {exc}); pass a file written "
                f"by Masks.save() or a COCO JSON of one image."
            ) from exc

    @classmethod
    def _load_file(cls, p) -> Masks:
        import json

        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as data:
                width = int(data["width"])
                dense = np.unpackbits(data["masks"], axis=-1, count=width).astype(bool)
                fields = {k[6:]: data[k] for k in data.files if k.startswith("field_")}
                return cls(dense, scores=data["scores"], boxes=data["boxes"], areas=data["areas"],
                           labels=data["labels"] if "labels" in data.files else None,
                           class_names=data["class_names"].tolist() if "class_names" in data.files else None,
                           **fields)
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: not a readable JSON file ({exc}).") from exc
        if not isinstance(doc, dict):
            raise InputError(f"{p}: holds a JSON {type(doc).__name__}, not masks; pass a file written by Masks.save().")
        if "annotations" in doc and "images" in doc:
            return cls._from_coco(doc, p)
        if doc.get("imseg_masks") != 1:
            raise InputError(f"{p}: not a file written by Masks.save (no 'imseg_masks' key) nor a COCO JSON.")
        size = tuple(doc["image_size"])
        common = dict(scores=doc["scores"], boxes=doc["boxes"], areas=doc["areas"], labels=doc["labels"],
                      class_names=doc["class_names"], image_size=size,
                      **{k: np.asarray(v) for k, v in doc["fields"].items()})
        if "rles" in doc:
            return cls(rles=doc["rles"], **common)
        if "polygons" in doc:
            dense = [cls.polygons_to_mask(rings, size) for rings in doc["polygons"]]
            return cls(np.stack(dense) if dense else np.zeros((0, *size), bool), **common)
        if "files" in doc:
            from .io import read_image

            dense = [read_image(p.parent / f)[..., 0] > 127 for f in doc["files"]]
            return cls(np.stack(dense) if dense else np.zeros((0, *size), bool), **common)
        raise InputError(f"{p}: saved masks have no 'rles', 'polygons' or 'files' entry.")

    @classmethod
    def _from_coco(cls, doc: dict, where: Any) -> Masks:
        from pycocotools import mask as mask_utils

        images = doc["images"]
        if len(images) != 1:
            raise InputError(f"{where}: COCO file has {len(images)} images; Masks.load reads one image's masks.")
        h, w = int(images[0]["height"]), int(images[0]["width"])
        anns = doc["annotations"]
        rles = []
        for ann in anns:
            seg = ann["segmentation"]
            if isinstance(seg, list):  # polygons
                seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                seg = mask_utils.frPyObjects(seg, h, w)
            rles.append(seg)
        cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
        labels = [a.get("category_id", 1) for a in anns]
        names = None
        if cats and all(isinstance(k, int) and k >= 0 for k in cats):
            names = [cats.get(i, f"class_{i}") for i in range(max(cats) + 1)]
        skip = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "score", "iscrowd"}
        extra_keys = [k for k in (anns[0] if anns else {}) if k not in skip and all(k in a for a in anns)]
        return cls(
            rles=rles, image_size=(h, w), scores=[a.get("score", 1.0) for a in anns], labels=labels or None,
            class_names=names, **{k: np.asarray([a[k] for a in anns]) for k in extra_keys},
        )


SAVE_FORMATS = ("png", "coco", "rle", "polygons", "npz")


def mask_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) float RGB colours in 0..255, well separated (golden-ratio hue steps, bright)."""
    import colorsys

    start = (seed * 0.1234) % 1.0
    return np.array(
        [[255 * c for c in colorsys.hsv_to_rgb((start + i * 0.618033988749895) % 1.0, 0.75, 0.95)] for i in range(n)],
        np.float32,
    ).reshape(n, 3)
