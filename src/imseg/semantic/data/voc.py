"""Pascal VOC (``JPEGImages/`` + ``SegmentationClass/`` palette PNGs, ``ImageSets/Segmentation`` lists)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .common import SPLITS, Sample
from .folder import _by_dir_folder, _pair_folders
from .splits import _resolve_splits

VOC_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def _voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def _voc_splits(voc: Path, spec: dict[str, Any]) -> tuple[dict[str, list[Sample]], list[str], tuple[str, ...]]:
    """Splits of a Pascal VOC folder. Returns (splits, problems, declared).

    With split lists (``ImageSets/Segmentation/*.txt``, the config's ``train``/``val``/``test`` or a
    ``split``/``split.json`` file) the lists define the samples, and a listed image without a mask is
    a problem. Without lists, the images that have a mask are the pool (real VOC2012 holds ~17k
    JPEGs for ~2.9k masks; the others are detection-only) and a warning says how many were left out.
    """
    sets = voc / "ImageSets" / "Segmentation"
    if not any(spec.get(k) for k in SPLITS) and spec.get("split") is None:
        for key in SPLITS:
            if (sets / f"{key}.txt").is_file():
                spec[key] = str((sets / f"{key}.txt").relative_to(voc))
    image_dir, mask_dir = voc / "JPEGImages", voc / "SegmentationClass"
    everything, problems = _pair_folders(image_dir, mask_dir, missing_ok=True)
    listed = (any(spec.get(k) is not None for k in SPLITS) or isinstance(spec.get("split"), str)
              or (voc / "split.json").is_file())
    pool = [s for s in everything if s.mask is not None]
    if not listed and len(pool) < len(everything):
        warnings.warn(
            f"{voc}: {len(everything) - len(pool)} of {len(everything)} images in JPEGImages/ have no mask in "
            f"SegmentationClass/ (detection-only images) and are not used; {len(pool)} image/mask pairs are. "
            f"Add ImageSets/Segmentation/train.txt and val.txt (or set train/val) to choose the samples.",
            UserWarning, stacklevel=4,
        )
    splits, found, declared = _resolve_splits(voc, spec, everything if listed else pool, _by_dir_folder)
    problems += found
    for key, samples in splits.items():
        for sample in samples:
            if sample.mask is None:
                problems.append(f"{sample.image}: listed in the '{key}' split but has no mask '{sample.stem}.png' in "
                                f"{mask_dir}; add the mask or remove the image from the list")
        splits[key] = [s for s in samples if s.mask is not None]
    return splits, problems, declared
