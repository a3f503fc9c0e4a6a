"""In-memory instance annotations: one record per image, one object per instance.

An object's mask is held in the form it was read in (COCO RLE or polygon rings) and rasterised
lazily with pycocotools. Polygon rings follow COCO's rule: every ring is a filled region and the
object is their union, so a hole is held as an RLE (or as rings with ``hole=True`` from
:meth:`imseg.Masks.to_polygons`, which use the even-odd rule).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..masks import Masks, decode_rle, encode_rle


@dataclass(frozen=True)
class Source:
    """Where an object came from, for messages: a file plus an annotation id, line or shape index."""

    file: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.file} ({self.where})" if self.where else self.file


class InstanceMask:
    """One object's mask on an (H, W) image: polygon rings (union) or a COCO RLE, rasterised on demand.

    ``rings``: list of (K, 2) float arrays of XY pixel-corner coordinates (COCO polygon convention).
    ``rle``: a COCO RLE dict (compressed ``counts`` str/bytes or an uncompressed list).
    """

    def __init__(self, height: int, width: int, *, rings: list[np.ndarray] | None = None, rle: dict | None = None):
        if (rings is None) == (rle is None):
            raise ValueError("InstanceMask takes either rings or rle")
        self.height, self.width = int(height), int(width)
        self.rings = None if rings is None else [np.asarray(r, np.float64).reshape(-1, 2) for r in rings]
        self._rle = None if rle is None else _compressed(rle)
        self._dense: np.ndarray | None = None

    @classmethod
    def from_array(cls, mask: np.ndarray) -> InstanceMask:
        """From an (H, W) bool array (kept as a compressed RLE)."""
        mask = np.asarray(mask, bool)
        return cls(mask.shape[0], mask.shape[1], rle=encode_rle(mask[None])[0])

    @property
    def kind(self) -> str:
        return "polygon" if self.rings is not None else "rle"

    def rle(self) -> dict:
        """Compressed COCO RLE (``counts`` str) of the whole object."""
        if self._rle is None:
            from pycocotools import mask as mask_utils

            polys = [r.ravel().tolist() for r in self.rings]
            merged = mask_utils.merge(mask_utils.frPyObjects(polys, self.height, self.width))
            self._rle = _compressed(merged)
        return self._rle

    def decode(self) -> np.ndarray:
        """(H, W) bool."""
        if self._dense is None:
            self._dense = decode_rle([self.rle()])[0]
        return self._dense

    @property
    def area(self) -> int:
        from pycocotools import mask as mask_utils

        return int(mask_utils.area(_bytes_counts(self.rle())))

    def bbox(self) -> list[float]:
        """Tight XYWH box of the rasterised pixels (pycocotools ``toBbox``)."""
        from pycocotools import mask as mask_utils

        return [float(v) for v in mask_utils.toBbox(_bytes_counts(self.rle()))]

    def outline(self) -> tuple[list[np.ndarray], bool]:
        """Rings that trace the mask and whether it has holes (which union-rule rings cannot hold).

        Polygon masks return their own rings unless the rings overlap (a union that one list of rings
        filled by another rule would get wrong); the rest is traced from the pixels with :meth:`Masks.to_polygons`.
        """
        if self.rings is not None and (len(self.rings) == 1 or not self._rings_overlap()):
            return [r.copy() for r in self.rings], False
        traced = Masks(self.decode()[None]).to_polygons()[0]
        outer = [r["points"].astype(np.float64) for r in traced if not r["hole"]]
        return outer, any(r["hole"] for r in traced)

    def _rings_overlap(self) -> bool:
        from pycocotools import mask as mask_utils

        from ..masks.rle import rle_areas

        parts = mask_utils.frPyObjects([r.ravel().tolist() for r in self.rings], self.height, self.width)
        return int(rle_areas(parts).sum()) != self.area

    def iou(self, other: InstanceMask) -> float:
        from pycocotools import mask as mask_utils

        value = mask_utils.iou([_bytes_counts(self.rle())], [_bytes_counts(other.rle())], [0])
        return float(np.asarray(value).ravel()[0])


def _compressed(rle: dict) -> dict:
    """RLE with compressed ``counts`` as str and ``size`` as ints."""
    if isinstance(rle.get("counts"), list):
        from pycocotools import mask as mask_utils

        h, w = (int(v) for v in rle["size"])
        rle = mask_utils.frPyObjects(rle, h, w)
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _bytes_counts(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


@dataclass
class InstanceObject:
    """One instance: its class name, mask, crowd flag and where it was read from."""

    category: str
    mask: InstanceMask
    iscrowd: bool = False
    source: Source = field(default_factory=lambda: Source("<memory>"))


@dataclass
class InstanceSample:
    """One image and its instances. ``ignore``: pixels to leave out of training/evaluation, if any."""

    image_path: str
    height: int
    width: int
    objects: list[InstanceObject] = field(default_factory=list)
    ignore: InstanceMask | None = None

    def to_masks(self, categories: list[str]) -> Masks:
        """The objects as one :class:`imseg.Masks` (RLE-backed): ``labels`` index ``categories``
        (``class_names``), and an ``iscrowd`` field."""
        index = {name: i for i, name in enumerate(categories)}
        return Masks(
            rles=[o.mask.rle() for o in self.objects],
            labels=[index[o.category] for o in self.objects],
            class_names=list(categories),
            image_size=(self.height, self.width),
            iscrowd=np.array([o.iscrowd for o in self.objects], bool),
        )

    @property
    def stem(self) -> str:
        from pathlib import PurePath

        return PurePath(self.image_path).stem


@dataclass
class InstanceDataset:
    """Categories (names, in id order) plus samples, and notes on what reading skipped or repaired."""

    categories: list[str]
    samples: list[InstanceSample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    category_ids: dict[str, int] | None = None

    def category_id(self, name: str) -> int:
        """The COCO id of ``name``: the source's own id if it had one, else its 1-based position."""
        if self.category_ids and name in self.category_ids:
            return self.category_ids[name]
        return self.categories.index(name) + 1

    def objects_per_class(self) -> dict[str, int]:
        counts = Counter(obj.category for s in self.samples for obj in s.objects)
        return {name: counts.get(name, 0) for name in self.categories}

    def __len__(self) -> int:
        return len(self.samples)
