"""A dataset's fingerprint: what the planning rules need to know, measured on an even sample of training pairs.

Everything is in the images' own pixels. ``roundtrip`` answers "what does letterboxing to S pixels cost?":
each sampled mask is scaled (area-averaged class probabilities) so its longer side is S, scaled back (bilinear)
and compared with itself; the mean IoU over classes is the best score a network working at S could reach.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: letterbox sizes the planner may choose (multiples of 32: every encoder depth the rules pick divides them)
CANDIDATE_SIZES = (64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024)


@dataclass
class Fingerprint:
    """Measured properties of a training set (sizes in native pixels)."""

    num_train: int
    num_val: int
    class_names: list[str]
    median_size: tuple[int, int]  # (height, width)
    min_side: int
    max_side: int
    same_size: bool  # every sampled image has one size
    grayscale: bool  # every sampled image has R == G == B
    class_fraction: list[float]  # share of labelled pixels per class
    object_extent: float  # 10th percentile over foreground objects of sqrt(area) / image longer side
    thinnest: float  # the thinnest class's median width in pixels (2 x distance to its border)
    roundtrip: dict[int, float] = field(default_factory=dict)  # letterbox size -> mask round-trip mean IoU
    sampled: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["median_size"] = list(self.median_size)
        out["roundtrip"] = {int(k): round(float(v), 4) for k, v in self.roundtrip.items()}
        for key in ("object_extent", "thinnest"):
            out[key] = round(float(out[key]), 4)
        out["class_fraction"] = [round(float(v), 4) for v in self.class_fraction]
        return out


def _even_sample(n: int, count: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, min(n, count))}) if n else []


def class_widths(mask: np.ndarray, num_classes: int) -> dict[int, float]:
    """Median width in pixels (2 x the distance to the nearest other-label pixel) of each class present."""
    from scipy.ndimage import distance_transform_edt

    out = {}
    for c in range(num_classes):
        region = mask == c
        if region.any() and not region.all():
            out[c] = 2.0 * float(np.median(distance_transform_edt(region)[region]))
    return out


def object_extents(mask: np.ndarray, num_classes: int) -> list[float]:
    """sqrt(area) / longer side of every 8-connected object of the foreground classes (1..C-1)."""
    from scipy.ndimage import label

    longer = max(mask.shape)
    extents = []
    for c in range(1, num_classes):
        labels, count = label(mask == c, structure=np.ones((3, 3)))
        if count:
            areas = np.bincount(labels.ravel())[1:]
            extents.extend((np.sqrt(areas[areas >= 4]) / longer).tolist())
    return extents


def roundtrip_ious(mask: np.ndarray, num_classes: int, ignore_index: int | None, sizes: list[int]) -> list[float]:
    """Mean IoU (classes present) of ``mask`` against itself scaled to each longer side in ``sizes`` and back."""
    import torch
    import torch.nn.functional as F

    longer = max(mask.shape)
    top, left = max(0, (mask.shape[0] - 1024) // 2), max(0, (mask.shape[1] - 1024) // 2)
    mask = mask[top : top + 1024, left : left + 1024]  # a central window at full resolution bounds the memory
    h, w = mask.shape
    valid = torch.from_numpy(mask != ignore_index if ignore_index is not None else np.ones_like(mask, dtype=bool))
    target = torch.from_numpy(mask).long().where(valid, 0)
    onehot = F.one_hot(target, num_classes).permute(2, 0, 1)[None].float()
    present = [c for c in range(num_classes) if bool(((target == c) & valid).any())]
    out = []
    for size in sizes:
        scale = size / longer  # the whole image's letterbox scale
        small = (max(1, round(h * scale)), max(1, round(w * scale)))
        down = F.interpolate(onehot, size=small, mode="area")
        back = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
        ious = [float(((target == c) & (back == c) & valid).sum() / (((target == c) | (back == c)) & valid).sum())
                for c in present]
        out.append(float(np.mean(ious)) if ious else 1.0)
    return out


def fingerprint(datasets: dict, class_names: list[str], ignore_index: int | None = 255,
                sample: int = 24) -> Fingerprint:
    """Fingerprint of ``datasets["train"]`` (``read_raw(i) -> (rgb, mask)``) from ``sample`` evenly spaced pairs."""
    train = datasets["train"]
    num_classes = len(class_names)
    sizes, counts, extents, widths, gray = [], np.zeros(num_classes), [], {}, True
    pairs = [train.read_raw(i) for i in _even_sample(len(train), sample)]
    for i, (rgb, mask) in enumerate(pairs):
        sizes.append(mask.shape)
        gray = gray and bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        valid = mask[(mask >= 0) & (mask < num_classes)]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
        extents.extend(object_extents(mask, num_classes))
        for c, width in (class_widths(mask, num_classes) if i % 2 == 0 else {}).items():  # half: EDT is the cost
            widths.setdefault(c, []).append(width)
    heights, widths_px = [s[0] for s in sizes], [s[1] for s in sizes]
    max_side = max(max(s) for s in sizes)
    below = [size for size in CANDIDATE_SIZES if size < max_side]
    scores = [roundtrip_ious(m, num_classes, ignore_index, below) for _, m in pairs[::max(1, len(pairs) // 8)]]
    roundtrip = {size: float(np.mean([s[i] for s in scores])) for i, size in enumerate(below)}
    return Fingerprint(
        num_train=len(train), num_val=len(datasets.get("val") or []), class_names=list(class_names),
        median_size=(int(np.median(heights)), int(np.median(widths_px))),
        min_side=int(min(min(s) for s in sizes)), max_side=int(max_side), same_size=len(set(sizes)) == 1,
        grayscale=gray, class_fraction=(counts / max(counts.sum(), 1)).tolist(),
        object_extent=float(np.percentile(extents, 10)) if extents else 1.0,
        thinnest=float(min(np.median(v) for v in widths.values())) if widths else float(max_side),
        roundtrip=roundtrip, sampled=len(pairs),
    )
