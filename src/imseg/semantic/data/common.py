"""What every format shares: the :class:`Sample` record, layout constants, small value checks and file helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from ...io import IMAGE_SUFFIXES

FORMATS = ("folder", "voc", "coco", "labelme")
SPLITS = ("train", "val", "test")
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "SegmentationClass", "annotations", "gt")
MASK_STEM_SUFFIXES = ("_mask", "_label", "_labels", "_gt", "_seg", "_segmentation")
BACKGROUND_NAMES = ("_background_", "__background__", "background")
IGNORE_LABEL = "__ignore__"


@dataclass(frozen=True)
class Sample:
    """One image and where its labels come from.

    ``mask`` is a label image (folder/voc); ``annotation`` a COCO or labelme JSON, with ``image_id``
    for COCO; ``classes`` maps annotation label names to class indices (coco/labelme);
    ``binary_255`` reads mask value 255 as class 1 (set by :func:`load_data_config` for a 2-class
    dataset whose masks all hold only 0 and 255).
    """

    image: Path
    mask: Path | None = None
    format: str = "folder"
    annotation: Path | None = None
    image_id: int | None = None
    classes: Mapping[str, int] | None = field(default=None, compare=False, repr=False)
    binary_255: bool = False

    @property
    def stem(self) -> str:
        return self.image.stem


LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: More distinct class values than this in masks without ``names`` means greyscale, not class ids.
MAX_INFERRED_CLASSES = 64
LOSSY_MASK_ADVICE = ("JPEG compression changes pixel values around every edge, so they are no longer class ids; "
                     "save the masks as lossless PNG index masks (pixel value = class id, e.g. 0/1 or 0/255) with the "
                     "same stems as the images")


def _positive_int(value: Any) -> int | None:
    """``value`` as a positive int (ints and integral floats), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if value != int(value) or value <= 0:
        return None
    return int(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _narrow(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    if mask.size and mask.min() >= 0 and mask.max() < 256:
        return mask.astype(np.uint8)
    return mask.astype(np.int32)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p)) if folder.is_dir() else []


def _find_child(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_dir():
            return candidate
    return None


def _names_file(folder: Path) -> list[str] | None:
    for name in ("class_names.txt", "labels.txt", "classes.txt"):
        path = folder / name
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            lines = [ln for ln in lines if ln != IGNORE_LABEL]
            if lines:
                return lines
    return None


def _label_classes(names: list[str]) -> dict[str, int]:
    """Annotation label -> class index; background aliases map to 0."""
    classes = {name: i for i, name in enumerate(names)}
    for alias in BACKGROUND_NAMES:
        classes.setdefault(alias, 0)
    return classes


def _attach_classes(splits: dict[str, list[Sample]], classes: dict[str, int]) -> dict[str, list[Sample]]:
    return {k: [replace(s, classes=classes) for s in v] for k, v in splits.items()}


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the header, EXIF rotation applied, as :func:`imseg.io.read_image` would return."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format in ("JPEG", "TIFF", "PNG", "WEBP") and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image ({exc})") from exc
    return height, width
