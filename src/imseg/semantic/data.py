"""Semantic-segmentation datasets: formats, splits, validation, torch ``Dataset``.

Supported layouts (auto-detected from a directory, or named with ``format``):

- ``folder``: ``images/`` + ``masks/`` with matching stems (also ``image/`` + ``label/``,
  ``img/`` + ``mask/``, ``images/`` + ``labels/``; split subfolders ``train/``, ``val/``, ``test/``
  or ``images/train`` + ``masks/train``). Masks are lossless index PNGs, palette PNGs (read as
  indices, not colours) or 0/255 binary images: 255 becomes class 1 only when the dataset has 2
  classes (``names`` of length 2 or ``binary: true``) and every mask holds only 0 and 255 (decided
  once per dataset, so a 0/1/255 dataset keeps 255 as ignore). JPEG masks are refused (lossy).
- ``voc``: Pascal VOC (``JPEGImages/``, ``SegmentationClass/`` palette PNGs, 255 = ignore,
  ``ImageSets/Segmentation/{train,val,test}.txt``; names from ``class_names.txt`` or the 21 VOC classes).
  The ImageSets lists define the samples (the detection-only JPEGs without a mask are not samples);
  without lists, the images that have a mask are used (with a warning saying how many were left out).
- ``coco``: COCO instance JSON, rasterised to class maps with pycocotools; category ids are mapped
  to 1..K in id order (0 = background; a category named ``_background_``/``background`` maps to 0).
  Malformed entries (polygons under 3 points, unknown category or image ids, images without
  height/width) are listed by :func:`validate_dataset`, never dropped silently.
- ``labelme``: labelme JSON (polygon, rectangle, circle, line, linestrip, point), label
  ``__ignore__`` = ignore_index; names from the config, a ``labels.txt``/``class_names.txt``, or
  the sorted labels found (0 = background). Without ``imageHeight``/``imageWidth`` the image file's
  size is used.

Splits come from the config (``train``/``val``/``test``: a folder, a .txt/.json list of stems, a
COCO .json, or a list of stems), from a ``split``/``split.json`` file, from split subfolders or
``ImageSets``, or by ratio (``val_ratio``, default 0.2, ``test_ratio``, ``seed``). A ratio split
draws from the images that no declared split holds (a declared ``test`` never leaks into train/val);
an image in two declared splits is a problem. ``ignore_index`` may not equal a class id (any format).

API contract (used by training, validation and prediction):

- :func:`load_data_config` (YAML path | directory | dict) -> :class:`DataConfig`
  (``names``, ``num_classes``, ``ignore_index``, ``format``, ``train``/``val``/``test`` sample
  lists, ``to_dict()`` for ``config.yaml``).
- :class:`SegmentationDataset` ``[i]`` -> ``(image float32 (3, H, W) ImageNet-normalised,
  mask int64 (H, W))``; ``read_raw(i)`` -> ``(RGB uint8 (H, W, 3), mask int64 (H, W))``.
- :func:`build_datasets` -> ``{"train"|"val"|"test": SegmentationDataset}`` after
  :func:`validate_dataset` (one :class:`~imseg.errors.DatasetError` listing offending files).
- :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, :func:`denormalize`.

Example::

    from imseg.semantic.data import load_data_config, build_datasets
    cfg = load_data_config("../shared/data/weizmann-horse")      # or "data.yaml" or a dict
    sets = build_datasets(cfg, imgsz=256, augment={"hflip": 0.5, "rotate": 15})
    image, mask = sets["train"][0]          # float32 (3, 256, 256), int64 (256, 256)
    for epoch in range(epochs):
        sets["train"].set_epoch(epoch)      # new (reproducible) augmentations every epoch

A dataset YAML::

    path: ../shared/data/weizmann-horse   # relative to the YAML file
    names: [background, horse]             # or {0: background, 1: horse}
    split: split.json                      # or train: images/train, val: val.txt, val_ratio: 0.2
    ignore_index: 255
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError, describe_files
from ..io import IMAGE_SUFFIXES, read_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize

FORMATS = ("folder", "voc", "coco", "labelme")
SPLITS = ("train", "val", "test")
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "SegmentationClass", "annotations", "gt")
MASK_STEM_SUFFIXES = ("_mask", "_label", "_labels", "_gt", "_seg", "_segmentation")
BACKGROUND_NAMES = ("_background_", "__background__", "background")
IGNORE_LABEL = "__ignore__"
VOC_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
CONFIG_KEYS = ("path", "train", "val", "test", "names", "nc", "ignore_index", "format", "split", "val_ratio",
               "test_ratio", "seed", "binary", "num_classes", "counts")

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "DataConfig", "Sample", "SegmentationDataset", "build_datasets",
    "denormalize", "load_data_config", "read_mask", "validate_dataset",
]


# ============================================================================ samples and config
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


@dataclass
class DataConfig:
    """A resolved dataset: class names, ignore value, format and the samples of each split."""

    names: list[str]
    ignore_index: int = 255
    format: str = "folder"
    path: Path | None = None
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    declared: tuple[str, ...] = ("train", "val")
    problems: dict[str, list[str]] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def splits(self) -> dict[str, list[Sample]]:
        """Declared splits (train first) -> samples; a declared split may be empty (validation refuses it)."""
        return {name: getattr(self, name) for name in SPLITS if name in self.declared}

    def to_dict(self) -> dict[str, Any]:
        """Plain settings for ``config.yaml``; ``load_data_config(cfg.to_dict())`` gives the same samples."""
        out: dict[str, Any] = {k: v for k, v in self.spec.items() if k not in ("names", "nc", "counts", "num_classes")}
        out.update(
            path=str(self.path) if self.path is not None else None,
            format=self.format,
            names=list(self.names),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            counts={name: len(samples) for name, samples in self.splits.items()},
        )
        return out


# ============================================================================ mask reading
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: More distinct class values than this in masks without ``names`` means greyscale, not class ids.
MAX_INFERRED_CLASSES = 64
LOSSY_MASK_ADVICE = ("JPEG compression changes pixel values around every edge, so they are no longer class ids; "
                     "save the masks as lossless PNG index masks (pixel value = class id, e.g. 0/1 or 0/255) with the "
                     "same stems as the images")


def _read_label_file(path: Path) -> np.ndarray:
    """Decode a label image as integers (palette PNG -> indices). Returns (H, W) uint8/uint16/int32."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "HSV", "LAB"):
                    array = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
                else:
                    array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read mask ({exc}); the file may be corrupt.") from exc
    if array.ndim == 3:
        if array.shape[2] == 1 or (array[..., :1] == array).all():
            array = array[..., 0]
        else:
            raise DatasetError(
                f"{path}: mask is a colour (RGB) image; save masks as index or palette PNGs whose pixel "
                f"values are class ids (0..K-1, 255 = ignore)."
            )
    if array.ndim != 2:
        raise DatasetError(f"{path}: mask has shape {array.shape}; expected a 2-D label image (H, W).")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int32)
        else:
            raise DatasetError(f"{path}: mask holds non-integer values ({array.dtype}); class ids must be integers.")
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.int32)
    return array


def _present_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer mask (bincount for small unsigned types: O(n))."""
    if mask.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=1))
    return np.unique(mask)


def _map_binary(mask: np.ndarray) -> np.ndarray:
    """255 -> 1 (any integer dtype) for a 0/255 binary dataset; other values are kept (validation reports them)."""
    out = np.where(mask == 255, 1, mask)
    return out.astype(np.uint8) if out.size == 0 or (out.min() >= 0 and out.max() < 256) else out.astype(np.int32)


def _positive_int(value: Any) -> int | None:
    """``value`` as a positive int (ints and integral floats), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if value != int(value) or value <= 0:
        return None
    return int(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coco_segmentation_problem(seg: Any, height: int | None, width: int | None) -> str | None:
    """Why a COCO ``segmentation`` cannot be rasterised, or None (empty = no mask, allowed)."""
    if not seg:
        return None
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return (f"segmentation[{k}] is not a list of numbers; polygons are [[x1, y1, x2, y2, ...], ...] "
                        f"(or give an RLE dict with 'counts' and 'size')")
            if len(poly) < 6 or len(poly) % 2:
                return (f"polygon segmentation[{k}] has {len(poly)} number(s); a polygon needs an even count of at "
                        f"least 6 (x, y pairs for 3 or more points): fix or remove it")
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(counts, (list, str)) or not isinstance(size, list) or len(size) != 2:
            return "RLE segmentation needs 'counts' (list or string) and 'size' [height, width]"
        if height is not None and width is not None and [_positive_int(v) for v in size] != [height, width]:
            return f"RLE size {size} differs from the image's [height, width] [{height}, {width}]"
        return None
    return f"segmentation of type {type(seg).__name__} is neither a polygon list nor an RLE dict"


def _coco_image_size_problem(path: str, info: dict) -> str | None:
    if _positive_int(info.get("height")) is None or _positive_int(info.get("width")) is None:
        return (f"{path}: image '{info.get('file_name')}' (id {info.get('id')}) has no valid height/width (got "
                f"{info.get('height')!r}/{info.get('width')!r}); add the image's pixel size to its 'images' entry")
    return None


@lru_cache(maxsize=8)
def _coco_index(path: str, mtime: float) -> tuple[dict, dict, dict, tuple[str, ...]]:
    """(images by id, valid annotations by image id, categories by id, problems) of a COCO JSON (cached).

    Malformed entries are left out and described in ``problems`` (what, which annotation id, how to fix).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read COCO JSON ({exc}).") from exc
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise DatasetError(f"{path}: not a COCO instance file (needs 'images', 'annotations' and 'categories').")
    if not all(isinstance(data[key], list) for key in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: 'images', 'annotations' and 'categories' must be lists.")
    problems: list[str] = []
    images: dict[Any, dict] = {}
    for i, info in enumerate(data["images"]):
        if not isinstance(info, dict) or "id" not in info or not info.get("file_name"):
            problems.append(f"{path}: images[{i}] has no 'id' or 'file_name'; every image entry needs id, file_name, "
                            f"height and width")
            continue
        images[info["id"]] = info
        problem = _coco_image_size_problem(path, info)
        if problem:
            problems.append(problem)
    cats: dict[Any, dict] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(f"{path}: categories[{i}] has no 'id' or 'name'; every category needs both")
            continue
        cats[cat["id"]] = cat
    anns: dict[Any, list] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"{path}: annotations[{i}] is not an object; remove it")
            continue
        where = f"{path}: annotation id {ann.get('id', f'(none, annotations[{i}])')}"
        image_id = ann.get("image_id")
        info = images.get(image_id) if isinstance(image_id, (int, str)) else None
        if info is None:
            problems.append(f"{where}: image_id {image_id!r} is not in 'images'; add that image entry or remove the "
                            f"annotation")
            continue
        where += f" (image '{info.get('file_name')}')"
        category_id = ann.get("category_id")
        if not isinstance(category_id, (int, str)) or category_id not in cats:
            problems.append(f"{where}: category_id {category_id!r} is not in 'categories' (ids {sorted(cats, key=str)}); "
                            f"add the category or fix the id")
            continue
        problem = _coco_segmentation_problem(
            ann.get("segmentation"), _positive_int(info.get("height")), _positive_int(info.get("width"))
        )
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        anns.setdefault(image_id, []).append(ann)
    return images, anns, cats, tuple(problems)


def _coco_load(path: Path) -> tuple[dict, dict, dict, tuple[str, ...]]:
    return _coco_index(str(path), path.stat().st_mtime)


def _rasterize_coco(sample: Sample, ignore_index: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    assert sample.annotation is not None and sample.classes is not None
    images, anns, cats, _ = _coco_load(sample.annotation)
    info = images.get(sample.image_id)
    if info is None:
        raise DatasetError(f"{sample.annotation}: no image with id {sample.image_id!r} in 'images'.")
    problem = _coco_image_size_problem(str(sample.annotation), info)
    if problem:
        raise DatasetError(problem)
    height, width = int(info["height"]), int(info["width"])
    out = np.zeros((height, width), np.int32)
    for ann in anns.get(sample.image_id, []):  # malformed annotations were left out (and listed) by _coco_index
        name = cats[ann["category_id"]]["name"]
        value = sample.classes.get(name)
        if value is None:
            raise DatasetError(
                f"{sample.annotation}: category '{name}' (id {ann['category_id']}) of image "
                f"{info.get('file_name')} is not in names; add it to names or remove the annotation."
            )
        seg = ann.get("segmentation")
        if not seg:
            continue
        if isinstance(seg, list):
            rles = mask_utils.frPyObjects(seg, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        with warnings.catch_warnings():  # pycocotools' decode trips a numpy-2 copy= DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            region = mask_utils.decode(rle).astype(bool)
        out[region] = value
    return _narrow(out, ignore_index)


def _narrow(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    if mask.size and mask.min() >= 0 and mask.max() < 256:
        return mask.astype(np.uint8)
    return mask.astype(np.int32)


def _load_labelme(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read labelme JSON ({exc}).") from exc
    if not isinstance(data, dict) or "shapes" not in data:
        raise DatasetError(f"{path}: not a labelme file (no 'shapes').")
    return data


def _rasterize_labelme(sample: Sample, ignore_index: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    assert sample.annotation is not None and sample.classes is not None
    data = _load_labelme(sample.annotation)
    raw_size = data.get("imageHeight"), data.get("imageWidth")
    if raw_size == (None, None):  # not recorded: the image file's size (EXIF-upright, as read_image gives it)
        height, width = _image_size(sample.image)
    else:
        checked = _positive_int(raw_size[0]), _positive_int(raw_size[1])
        if checked[0] is None or checked[1] is None:
            raise DatasetError(
                f"{sample.annotation}: imageHeight/imageWidth must be positive integers; got {raw_size[0]!r}/"
                f"{raw_size[1]!r}. Fix them, or remove both keys to use the size of {sample.image.name}."
            )
        height, width = checked[0], checked[1]
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in data["shapes"]:
        label = shape.get("label")
        value = ignore_index if label == IGNORE_LABEL else sample.classes.get(label)
        if value is None:
            raise DatasetError(
                f"{sample.annotation}: label '{label}' is not in names {sorted(sample.classes)}; add it to names."
            )
        points = [tuple(map(float, p)) for p in shape.get("points", [])]
        kind = shape.get("shape_type") or "polygon"
        if kind == "polygon" and len(points) >= 3:
            draw.polygon(points, fill=value, outline=value)
        elif kind == "rectangle" and len(points) == 2:
            (x0, y0), (x1, y1) = points
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value, outline=value)
        elif kind == "circle" and len(points) == 2:
            (cx, cy), (px, py) = points
            r = math.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
        elif kind in ("line", "linestrip") and len(points) >= 2:
            draw.line(points, fill=value, width=10)
        elif kind == "point" and len(points) == 1:
            (cx, cy), r = points[0], 5
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
        else:
            raise DatasetError(
                f"{sample.annotation}: shape '{label}' of type '{kind}' with {len(points)} point(s) cannot be "
                f"rasterised; supported: polygon (>=3), rectangle (2), circle (2), line/linestrip (>=2), point (1)."
            )
    return _narrow(np.asarray(canvas, dtype=np.int32), ignore_index)


def read_mask(sample: Sample, ignore_index: int = 255) -> np.ndarray:
    """Class-index map of a sample as (H, W) uint8 (or uint16/int32 when values exceed 255).

    Palette PNGs give their indices; 255 becomes 1 when ``sample.binary_255`` (a 0/255 binary
    dataset, decided once for the whole dataset by :func:`load_data_config`). ``ignore_index`` is
    the value labelme shapes with the ignore label are drawn with; rasterised COCO/labelme maps get a
    dtype that can hold it.
    """
    if sample.format == "coco":
        return _rasterize_coco(sample, ignore_index)
    if sample.format == "labelme":
        return _rasterize_labelme(sample, ignore_index)
    if sample.mask is None:
        raise DatasetError(f"{sample.image}: no mask for this image; add one with the same stem in the masks folder.")
    mask = _read_label_file(sample.mask)
    return _map_binary(mask) if sample.binary_255 else mask


# ============================================================================ discovery helpers
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


def _pair_folders(image_dir: Path, mask_dir: Path, missing_ok: bool = False) -> tuple[list[Sample], list[str]]:
    """Pair images and masks by stem. Returns (samples, problems).

    ``missing_ok``: an image without a mask gives a ``Sample`` with ``mask=None`` instead of a problem
    (VOC, where only some images are segmentation samples). Images sharing a stem (``a.jpg`` and
    ``a.png``) are a problem: they would share one mask.
    """
    masks: dict[str, list[Path]] = {}
    for path in _images_in(mask_dir):
        stem = path.stem
        masks.setdefault(stem, []).append(path)
        for suffix in MASK_STEM_SUFFIXES:
            if stem.endswith(suffix):
                masks.setdefault(stem[: -len(suffix)], []).append(path)
    samples, problems, used = [], [], set()
    images = _images_in(image_dir)
    images_by_stem: dict[str, list[Path]] = {}
    for image in images:
        images_by_stem.setdefault(image.stem, []).append(image)
    for stem, same in images_by_stem.items():
        if len(same) > 1:
            problems.append(f"{image_dir}: images {', '.join(p.name for p in same)} share the stem '{stem}' and would "
                            f"share one mask; rename or remove all but one")
    for image in images:
        if len(images_by_stem[image.stem]) > 1:
            continue
        found = masks.get(image.stem, [])
        if not found:
            if missing_ok:
                samples.append(Sample(image=image))
            else:
                problems.append(f"{image}: no mask with stem '{image.stem}' in {mask_dir}")
            continue
        if len(found) > 1:
            pngs = [p for p in found if p.suffix.lower() == ".png"]
            if len(pngs) != 1:
                problems.append(f"{image}: several masks match ({', '.join(p.name for p in found)}); keep one")
                continue
            found = pngs
        used.add(found[0])
        samples.append(Sample(image=image, mask=found[0]))
    image_stems = set(images_by_stem)
    for stem, paths in sorted(masks.items()):
        for path in paths:
            if path not in used and path.stem == stem and not any(
                path.stem.endswith(s) and path.stem[: -len(s)] in image_stems for s in MASK_STEM_SUFFIXES
            ) and stem not in image_stems:
                problems.append(f"{path}: mask without an image (no image with stem '{stem}' in {image_dir})")
    return samples, problems


def _pairs_layout(folder: Path) -> tuple[Path, Path] | None:
    """(image_dir, mask_dir) if ``folder`` holds an images/masks pair (or is an images dir with a sibling)."""
    image_dir = _find_child(folder, IMAGE_DIR_NAMES)
    mask_dir = _find_child(folder, MASK_DIR_NAMES)
    if image_dir is not None and mask_dir is not None and _images_in(image_dir) and _images_in(mask_dir):
        return image_dir, mask_dir
    parts = folder.parts
    for i in range(len(parts) - 1, -1, -1):  # images/train -> masks/train
        if parts[i] in IMAGE_DIR_NAMES:
            for mask_name in MASK_DIR_NAMES:
                sibling = Path(*parts[:i], mask_name, *parts[i + 1 :])
                if sibling.is_dir() and _images_in(folder):
                    return folder, sibling
    return None


def _read_list(path: Path) -> list[str] | dict[str, list[str]]:
    """Stems from a .txt (one per line) or .json/.yaml (list, or {split: list})."""
    if not path.is_file():
        raise ConfigError(f"split list {path} does not exist; check the path (relative to the dataset 'path').")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc}).") from exc
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if isinstance(data, dict):
        return {str(k): [str(v) for v in vals] for k, vals in data.items()}
    if isinstance(data, list):
        return [str(v) for v in data]
    raise ConfigError(f"{path}: expected a list of file stems or a {{train: [...], val: [...]}} mapping.")


def _entry_stem(entry: str) -> str:
    name = entry.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and "." + suffix.lower() in IMAGE_SUFFIXES + (".json",) else name


def _select(pool: list[Sample], entries: Sequence[str], where: str) -> tuple[list[Sample], list[str]]:
    by_stem = {s.stem: s for s in pool}
    chosen, problems = [], []
    for entry in entries:
        sample = by_stem.get(_entry_stem(entry))
        if sample is None:
            problems.append(f"{entry}: listed in {where} but no image/label pair with that name was found")
        else:
            chosen.append(sample)
    return chosen, problems


def _ratio_split(pool: list[Sample], val_ratio: float, test_ratio: float, seed: int) -> dict[str, list[Sample]]:
    for name, ratio in (("val_ratio", val_ratio), ("test_ratio", test_ratio)):
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"{name} must be in [0, 1); got {ratio}.")
    if val_ratio + test_ratio >= 1.0:
        raise ConfigError(
            f"val_ratio + test_ratio must be < 1 (some images must remain for training); got {val_ratio + test_ratio}."
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    n_val = round(val_ratio * len(pool)) if val_ratio > 0 else 0
    n_test = round(test_ratio * len(pool)) if test_ratio > 0 else 0
    if len(pool) >= 3:
        n_val = max(n_val, 1 if val_ratio > 0 else 0)
        n_test = max(n_test, 1 if test_ratio > 0 else 0)
    shuffled = [pool[i] for i in order]
    out = {"val": sorted(shuffled[:n_val], key=lambda s: s.stem),
           "test": sorted(shuffled[n_val : n_val + n_test], key=lambda s: s.stem),
           "train": sorted(shuffled[n_val + n_test :], key=lambda s: s.stem)}
    return out


def _ratio_setting(spec: Mapping[str, Any], key: str, default: float) -> float:
    """``spec[key]`` as a fraction in [0, 1); ConfigError naming the key otherwise."""
    value = spec.get(key)
    if value is None:
        return default
    if not _is_number(value) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{key} must be a number in [0, 1) (the fraction of images to hold out, e.g. 0.2); "
                          f"got {value!r}.")
    return float(value)


def _seed_setting(spec: Mapping[str, Any]) -> int:
    value = spec.get("seed")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"seed must be an integer (e.g. 0); got {value!r}.")
    return int(value)


def _class_count_setting(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{key} must be a positive number of classes; got {value!r}.")
    return int(value)


def _parse_names(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"names as a mapping must be {{id: name}} with integer ids; got keys {list(raw)}.") from exc
        if keys != list(range(len(keys))):
            raise ConfigError(f"names ids must be 0..K-1 without gaps; got {keys}.")
        lookup = {int(k): v for k, v in raw.items()}
        return [str(lookup[i]) for i in keys]
    if isinstance(raw, (list, tuple)) and raw:
        return [str(v) for v in raw]
    raise ConfigError(f"names must be a non-empty list or an {{id: name}} mapping; got {raw!r}.")


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


# ============================================================================ per-format resolution
def _detect_format(root: Path, spec: Mapping[str, Any]) -> str:
    for key in SPLITS:
        value = spec.get(key)
        if isinstance(value, str) and value.lower().endswith(".json") and _is_coco_file(root / value):
            return "coco"
    if _voc_root(root) is not None:
        return "voc"
    if _pairs_layout(root) is not None or any(_pairs_layout(root / s) for s in SPLITS if (root / s).is_dir()):
        return "folder"
    if _coco_files(root):
        return "coco"
    if _labelme_files(root):
        return "labelme"
    for key in SPLITS:
        value = spec.get(key)
        if isinstance(value, str) and (root / value).is_dir() and _pairs_layout(root / value):
            return "folder"
    raise ConfigError(
        f"{root}: cannot recognise the dataset layout. Expected images/ + masks/ folders (optionally in "
        f"train/ val/ test/), Pascal VOC (JPEGImages/ + SegmentationClass/), a COCO annotations .json or "
        f"labelme .json files; or set 'format' and the split folders in a dataset YAML."
    )


def _voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def _is_coco_file(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as fh:
        head = fh.read(4096)
    return '"annotations"' in head or '"images"' in head or ('"categories"' in head and '"shapes"' not in head)


def _coco_files(root: Path) -> list[Path]:
    found = [p for p in sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json")) if _is_coco_file(p)]
    return [p for p in found if p.name != "split.json"]


def _is_labelme_file(path: Path) -> bool:
    """A JSON object with a 'shapes' key (parsed: key order and embedded imageData do not matter)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "shapes" in data


def _labelme_files(root: Path) -> list[Path]:
    return [path for path in sorted(root.glob("*.json")) if _is_labelme_file(path)]


def _resolve_splits(
    root: Path, spec: dict[str, Any], pool: list[Sample] | None, by_dir: Callable[[Path], tuple[list[Sample], list[str]]],
    defaults: dict[str, list[Sample]] | None = None,
) -> tuple[dict[str, list[Sample]], list[str], tuple[str, ...]]:
    """Apply the config's split settings to a pool of samples. Returns (splits, problems, declared)."""
    splits: dict[str, list[Sample]] = {}
    problems: list[str] = []
    for key in SPLITS:
        value = spec.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if pool is None:
                raise ConfigError(f"'{key}' as a list of stems needs a single image pool; give a folder instead.")
            splits[key], found = _select(pool, [str(v) for v in value], key)
            problems += found
            continue
        target = (root / str(value)).resolve()
        if target.is_dir():
            splits[key], found = by_dir(target)
            problems += found
        elif target.suffix.lower() in (".txt", ".json", ".yaml", ".yml"):
            if pool is None:
                raise ConfigError(f"'{key}: {value}' is a list file but this layout has no single image pool.")
            entries = _read_list(target)
            if isinstance(entries, dict):
                if key not in entries:
                    raise ConfigError(f"{target}: has no '{key}' list (found {sorted(entries)}).")
                entries = entries[key]
            splits[key], found = _select(pool, entries, f"{key} ({target.name})")
            problems += found
        else:
            raise ConfigError(f"'{key}: {value}': {target} is neither a folder nor a .txt/.json list; check the path.")
    if not splits and spec.get("split") is not None:
        split = spec["split"]
        if isinstance(split, str):
            lists = _read_list((root / split).resolve())
            if not isinstance(lists, dict):
                raise ConfigError(f"split file {split} must map split names to lists, e.g. {{train: [...], val: [...]}}.")
            assert pool is not None
            for key in SPLITS:
                if key in lists:
                    splits[key], found = _select(pool, lists[key], f"{key} ({split})")
                    problems += found
        elif isinstance(split, (Mapping, list, tuple)):
            ratios = dict(split) if isinstance(split, Mapping) else dict(zip(SPLITS, split, strict=False))
            unknown = sorted(str(k) for k in ratios if k not in SPLITS)
            if unknown:
                raise ConfigError(f"split ratios: unknown key(s) {unknown}; use train, val and test, e.g. "
                                  f"{{train: 0.8, val: 0.2}}.")
            for key, value in ratios.items():
                if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
                    raise ConfigError(f"split.{key} must be a fraction in [0, 1] (e.g. split: {{train: 0.8, val: 0.2}}); "
                                      f"got {value!r}.")
            spec.setdefault("val_ratio", float(ratios.get("val", 0.0)))
            spec.setdefault("test_ratio", float(ratios.get("test", 0.0)))
        else:
            raise ConfigError(f"split must be a file of lists or ratios like {{train: 0.8, val: 0.2}}; got {split!r}.")
    if not splits and defaults:
        splits = dict(defaults)
    if not splits and pool is not None and (root / "split.json").is_file():
        lists = _read_list(root / "split.json")
        if isinstance(lists, dict):
            spec["split"] = "split.json"
            for key in SPLITS:
                if key in lists:
                    splits[key], found = _select(pool, lists[key], f"{key} (split.json)")
                    problems += found
    if not splits:
        for key in SPLITS:
            sub = root / key
            if sub.is_dir() and _pairs_layout(sub) is not None:
                splits[key], found = by_dir(sub)
                problems += found
    if not splits and pool is None:
        raise ConfigError(f"{root}: no split found; set train/val (folders or lists) in the dataset config.")
    if "val" not in splits and "val" not in spec:
        val_ratio = _ratio_setting(spec, "val_ratio", 0.2)
        test_ratio = _ratio_setting(spec, "test_ratio", 0.0) if "test" not in splits else 0.0
        base = splits.get("train", pool) or []
        if "train" not in splits:  # the pool minus the declared splits' samples (e.g. a declared test split)
            taken = {s.image for samples in splits.values() for s in samples}
            base = [s for s in base if s.image not in taken]
        seed = _seed_setting(spec)
        spec.update(val_ratio=val_ratio, seed=seed)
        if val_ratio > 0 or test_ratio > 0:
            parts = _ratio_split(base, val_ratio, test_ratio, seed)
            splits["train"] = parts["train"]
            if val_ratio > 0:
                splits["val"] = parts["val"]
            if test_ratio > 0:
                spec["test_ratio"] = test_ratio
                splits["test"] = parts["test"]
        else:
            splits.setdefault("train", list(base))
    return splits, problems, tuple(k for k in SPLITS if k in splits)


def _overlap_problems(splits: Mapping[str, Sequence[Sample]]) -> list[str]:
    """One problem per image that two declared splits share (a leak between train and val/test)."""
    problems, owner = [], {}
    for key in SPLITS:
        for sample in splits.get(key, []):
            first = owner.setdefault(sample.image, key)
            if first != key:
                problems.append(f"{sample.image}: in both the '{first}' and the '{key}' split; list each image in one "
                                f"split only")
    return problems


def _folder_pool(root: Path) -> tuple[list[Sample] | None, list[str]]:
    layout = _pairs_layout(root)
    if layout is None:
        return None, []
    return _pair_folders(*layout)


def _by_dir_folder(folder: Path) -> tuple[list[Sample], list[str]]:
    layout = _pairs_layout(folder)
    if layout is None:
        raise ConfigError(
            f"{folder}: expected images/ + masks/ (or image/ + label/) inside, or an images/<split> folder with masks/<split>."
        )
    return _pair_folders(*layout)


def _scan_values(samples: Sequence[Sample], ignore_index: int) -> set[int]:
    """Distinct label values over masks (threaded decode)."""
    def values(sample: Sample) -> set[int]:
        try:
            return {int(v) for v in _present_values(read_mask(sample, ignore_index))}
        except DatasetError:
            return set()

    out: set[int] = set()
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        for vals in pool.map(values, samples):
            out |= vals
    return out


def _is_binary_255(samples: Sequence[Sample]) -> bool:
    """True when every readable mask holds only 0 and 255, and some hold 255 (a 0/255 binary dataset).

    Stops at the first mask with another value; unreadable masks are skipped (validation reports them).
    """
    masks = sorted({s.mask for s in samples if s.mask is not None})

    def values(path: Path) -> set[int]:
        try:
            return {int(v) for v in _present_values(_read_label_file(path))}
        except DatasetError:
            return set()

    seen: set[int] = set()
    chunk = 32
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        for start in range(0, len(masks), chunk):
            for vals in pool.map(values, masks[start : start + chunk]):
                seen |= vals
            if not seen <= {0, 255}:
                return False
    return 255 in seen


def _infer_names(samples: Sequence[Sample], ignore_index: int, binary: bool, root: Path) -> list[str]:
    if binary:
        return ["background", "foreground"]
    values = _scan_values(samples, ignore_index)
    negative = sorted(v for v in values if v < 0)
    if negative:
        raise DatasetError(
            f"{root}: masks hold negative values {negative[:8]}; class ids are 0..K-1 and the ignore value "
            f"({ignore_index}) is non-negative. Remap them (e.g. -1 -> {ignore_index} to ignore those pixels)."
        )
    classes = sorted(v for v in values if v != ignore_index)
    if len(classes) > MAX_INFERRED_CLASSES:
        raise DatasetError(
            f"{root}: the masks hold {len(classes)} distinct values ({classes[0]}..{classes[-1]}), too many to be "
            f"class ids without 'names': they look like greyscale, anti-aliased or lossy (JPEG-compressed) images. "
            f"Save the masks as lossless PNG index masks (pixel value = class id); if the dataset really has "
            f"{classes[-1] + 1} classes, list them in 'names' (or set nc: {classes[-1] + 1})."
        )
    if values and values <= {0, 255}:
        raise ConfigError(
            f"{root}: masks hold only the values 0 and 255, which is ambiguous (255 is the ignore value). If 255 "
            f"marks the foreground, declare 2 classes: names: [background, foreground] (or binary: true); the masks "
            f"are then read as 0/1."
        )
    if not classes:
        raise ConfigError(f"{root}: no class values found in the masks; set names in the dataset config.")
    return [f"class{i}" for i in range(max(classes) + 1)]


def _attach_classes(splits: dict[str, list[Sample]], classes: dict[str, int]) -> dict[str, list[Sample]]:
    return {k: [replace(s, classes=classes) for s in v] for k, v in splits.items()}


def _coco_samples(json_path: Path, root: Path) -> tuple[list[Sample], list[str], list[str]]:
    """(samples, pairing problems, malformed-annotation problems) of a COCO JSON."""
    images, _, _, malformed = _coco_load(json_path)
    samples, problems = [], []
    for image_id, info in sorted(images.items(), key=lambda kv: str(kv[1].get("file_name"))):
        if _coco_image_size_problem(str(json_path), info):
            continue  # listed in `malformed`
        name = str(info.get("file_name", ""))
        candidates = [json_path.parent / name, root / name, root / "images" / name, json_path.parent / "images" / Path(name).name,
                      root / Path(name).name]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            problems.append(f"{json_path}: image '{name}' (id {image_id}) not found next to the JSON or under {root}")
            continue
        samples.append(Sample(image=path, format="coco", annotation=json_path, image_id=image_id))
    return samples, problems, list(malformed)


def _coco_names(json_paths: Sequence[Path]) -> list[str]:
    cats: dict[int, str] = {}
    for path in json_paths:
        for cat_id, cat in _coco_load(path)[2].items():
            cats.setdefault(int(cat_id), str(cat["name"]))
    names = ["background"]
    for cat_id in sorted(cats):
        if cats[cat_id] not in BACKGROUND_NAMES and cats[cat_id] not in names:
            names.append(cats[cat_id])
    return names


def _labelme_samples(root: Path) -> tuple[list[Sample], list[str]]:
    samples, problems = [], []
    for path in _labelme_files(root):
        data = _load_labelme(path)
        image_path = path.parent / str(data.get("imagePath") or "")
        if not _is_image(image_path):
            alternatives = [p for p in path.parent.glob(path.stem + ".*") if _is_image(p)]
            if not alternatives:
                problems.append(f"{path}: image '{data.get('imagePath')}' not found next to the JSON")
                continue
            image_path = alternatives[0]
        samples.append(Sample(image=image_path, format="labelme", annotation=path))
    return samples, problems


def _check_setting_types(spec: Mapping[str, Any]) -> None:
    """ConfigError naming the key for values of the wrong type (before any of them is used)."""
    path = spec.get("path")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path must be the dataset folder as a string (relative to the dataset YAML); got {path!r}.")
    for key in SPLITS:
        value = spec.get(key)
        if value is not None and not isinstance(value, (str, os.PathLike, list, tuple)):
            raise ConfigError(f"{key} must be a folder, a list file (.txt/.json/.yaml), a COCO .json or a list of image "
                              f"stems; got {value!r}.")
    binary = spec.get("binary")
    if binary is not None and not isinstance(binary, bool):
        raise ConfigError(f"binary must be true or false (a YAML boolean, not a string); got {binary!r}.")
    fmt = spec.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    _ratio_setting(spec, "val_ratio", 0.2)
    _ratio_setting(spec, "test_ratio", 0.0)
    _seed_setting(spec)


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


def _from_mapping(raw: Mapping[str, Any], base: Path) -> DataConfig:
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown dataset config key(s) {unknown}; valid keys: {', '.join(CONFIG_KEYS)}.")
    spec = dict(raw)
    _check_setting_types(spec)
    root = Path(spec.get("path") or base).expanduser()
    root = (base / root).resolve() if not root.is_absolute() else root
    if not root.is_dir():
        raise ConfigError(f"dataset path {root} does not exist or is not a folder; check 'path' in the dataset config.")
    ignore_index = spec.get("ignore_index", 255)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
        raise ConfigError(f"ignore_index must be a non-negative integer (usually 255); got {ignore_index!r}.")
    names = _parse_names(spec.get("names"))
    counts = {key: _class_count_setting(spec, key) for key in ("nc", "num_classes")}
    if None not in counts.values() and counts["nc"] != counts["num_classes"]:
        raise ConfigError(f"nc is {counts['nc']} but num_classes is {counts['num_classes']}; give one of them.")
    for key, count in counts.items():
        if count is None:
            continue
        if names is not None and len(names) != count:
            raise ConfigError(f"{key} is {count} but names lists {len(names)} classes {names}; make them agree "
                              f"(or drop {key}).")
        names = names or [f"class{i}" for i in range(count)]
    binary = bool(spec.get("binary", False))
    if binary and names is not None and len(names) != 2:
        raise ConfigError(f"binary: true needs exactly 2 names; got {names}.")
    fmt = spec.get("format") or _detect_format(root, spec)
    if fmt not in FORMATS:
        raise ConfigError(f"format '{fmt}' is not supported; use one of {', '.join(FORMATS)}.")

    problems: list[str] = []
    malformed: list[str] = []  # lossy masks (folder/voc) or malformed COCO entries
    if fmt in ("folder", "voc"):
        if fmt == "voc":
            voc = _voc_root(root)
            if voc is None:
                raise ConfigError(f"{root}: not a Pascal VOC folder (needs JPEGImages/ and SegmentationClass/).")
            root = voc
            splits, problems, declared = _voc_splits(voc, spec)
            names = names or _names_file(voc) or (list(VOC_NAMES) if not binary else None)
        else:
            pool, problems = _folder_pool(root)
            splits, found, declared = _resolve_splits(root, spec, pool, _by_dir_folder)
            problems += found
        everything = [s for samples in splits.values() for s in samples]
        lossy = sorted({s.mask for s in everything if s.mask is not None and s.mask.suffix.lower() in LOSSY_MASK_SUFFIXES})
        if lossy and names is None and _names_file(root) is None:  # their values cannot tell the classes
            raise DatasetError(f"{root}: {len(lossy)} mask(s) are JPEG files; {LOSSY_MASK_ADVICE}.\n"
                               + describe_files(lossy))
        malformed = [f"{path}: JPEG mask" for path in lossy]  # validate_dataset lists them with the other problems
        if names is None:
            names = _names_file(root) or _infer_names(everything, ignore_index, binary, root)
        splits = {k: [replace(s, format=fmt) for s in v] for k, v in splits.items()}
    elif fmt == "coco":
        json_by_split = {k: (root / str(spec[k])).resolve() for k in SPLITS if isinstance(spec.get(k), str)
                         and str(spec[k]).lower().endswith(".json") and _is_coco_file(root / str(spec[k]))}
        if json_by_split:
            splits = {}
            for key, path in json_by_split.items():
                splits[key], found, bad = _coco_samples(path, root)
                problems += found
                malformed += [m for m in bad if m not in malformed]  # one file may serve two splits
            rest = {k: v for k, v in spec.items() if k not in SPLITS}
            splits, found, declared = _resolve_splits(root, rest, None, _by_dir_folder, defaults=splits)
            problems += found
            spec.update({k: rest[k] for k in ("val_ratio", "test_ratio", "seed") if k in rest})
            json_paths = list(json_by_split.values())
        else:
            json_paths = _coco_files(root)
            if not json_paths:
                raise ConfigError(f"{root}: no COCO annotations .json found (looked in {root} and {root / 'annotations'}).")
            if len(json_paths) > 1:
                by_name = {k: [p for p in json_paths if k in p.stem.lower()] for k in SPLITS}
                if all(len(v) <= 1 for v in by_name.values()) and by_name["train"]:
                    for key, paths in by_name.items():
                        if paths:
                            spec[key] = str(paths[0].relative_to(root))
                    return _from_mapping(spec, base)
                raise ConfigError(f"{root}: several COCO files found ({[p.name for p in json_paths]}); set train/val to them.")
            pool, problems, malformed = _coco_samples(json_paths[0], root)
            splits, found, declared = _resolve_splits(root, spec, pool, _by_dir_folder)
            problems += found
        names = names or _coco_names(json_paths)
        splits = _attach_classes(splits, _label_classes(names))
    else:  # labelme
        pool, problems = _labelme_samples(root)
        splits, found, declared = _resolve_splits(root, spec, pool, lambda d: _labelme_samples(d))
        problems += found
        if names is None:
            names = _names_file(root)
        if names is None:
            labels: set[str] = set()
            for sample in pool:
                labels |= {str(s.get("label")) for s in _load_labelme(sample.annotation)["shapes"]}  # type: ignore[arg-type]
            labels -= {IGNORE_LABEL, *BACKGROUND_NAMES}
            names = ["background", *sorted(labels)]
        splits = _attach_classes(splits, _label_classes(names))
    if binary and names is None:
        names = ["background", "foreground"]
    assert names is not None
    if ignore_index < len(names):  # every format: a class id equal to the ignore value would never be learnt
        raise ConfigError(
            f"ignore_index {ignore_index} collides with class ids 0..{len(names) - 1} ({names[ignore_index]!r}); "
            f"pick a value outside them (e.g. 255)."
        )
    if fmt in ("folder", "voc") and len(names) == 2 and _is_binary_255([s for v in splits.values() for s in v]):
        splits = {k: [replace(s, binary_255=True) for s in v] for k, v in splits.items()}
    spec.update(format=fmt, ignore_index=ignore_index)
    spec.pop("path", None)
    kinds = {"pairing": problems, "lossy" if fmt in ("folder", "voc") else "annotations": malformed,
             "overlap": _overlap_problems(splits)}
    found_problems = {kind: items for kind, items in kinds.items() if items}
    return DataConfig(
        names=names, ignore_index=ignore_index, format=fmt, path=root,
        train=splits.get("train", []), val=splits.get("val", []), test=splits.get("test", []),
        declared=declared, problems=found_problems, spec=spec,
    )


def load_data_config(source: str | os.PathLike | Mapping[str, Any] | DataConfig) -> DataConfig:
    """Resolve a dataset YAML path, a dataset directory (format auto-detected) or a dict.

    Keys: ``path`` (root, relative to the YAML), ``train``/``val``/``test`` (folder, list file,
    COCO .json or list of stems), ``names`` (list or {id: name}), ``ignore_index`` (255),
    ``format`` (folder|voc|coco|labelme), ``split`` (file of lists, or ratios), ``val_ratio``,
    ``test_ratio``, ``seed``, ``binary``.
    """
    if isinstance(source, DataConfig):
        return source
    if isinstance(source, Mapping):
        return _from_mapping(source, Path.cwd())
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("data.yaml", "dataset.yaml"):
            if (path / name).is_file():
                return load_data_config(path / name)
        return _from_mapping({"path": str(path.resolve())}, path.resolve())
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"dataset YAML {path} does not exist; check the path.")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc}).") from exc
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: a dataset YAML must be a mapping with keys like path, train, val, names.")
        return _from_mapping(raw, path.resolve().parent)
    raise ConfigError(f"{path}: not a dataset YAML (.yaml) or a dataset folder; check the path.")


# ============================================================================ validation
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


def _check_sample(sample: Sample, num_classes: int, ignore_index: int) -> tuple[str, str, np.ndarray | None]:
    """('' | problem kind, message, per-class pixel counts)."""
    if not sample.image.is_file():
        return "unreadable", f"{sample.image}: image file is missing", None
    try:
        size = _image_size(sample.image)
    except DatasetError as exc:
        return "unreadable", f"{sample.image}: {exc}", None
    try:
        mask = read_mask(sample, ignore_index)
    except DatasetError as exc:
        return "unreadable", str(exc), None
    label_source = sample.mask or sample.annotation
    if mask.shape != size:
        return ("size", f"{sample.image} is {size[1]}x{size[0]} but its mask {label_source} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH)", None)
    values = _present_values(mask)
    bad = values[((values >= num_classes) | (values < 0)) & (values != ignore_index)]
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        return "values", f"{label_source}: values {shown} are not class ids 0..{num_classes - 1} or {ignore_index}", None
    flat = mask.ravel()
    counts = np.bincount(flat[flat != ignore_index].astype(np.int64), minlength=num_classes)[:num_classes]
    return "", "", counts


_PROBLEM_TITLES = {
    "pairing": "missing image/mask pairs",
    "unreadable": "unreadable or missing files",
    "size": "image/mask size mismatch (masks are never resized; fix or remove these pairs)",
    "values": "unknown class values (check names / num_classes, or set ignore_index)",
    "annotations": "malformed annotations (left out until fixed)",
    "lossy": f"lossy masks ({LOSSY_MASK_ADVICE})",
    "overlap": "images in more than one split (a leak between training and evaluation)",
    "empty": "empty splits",
}


def validate_dataset(config: DataConfig | str | os.PathLike | Mapping[str, Any], max_report: int = 10) -> dict[str, Any]:
    """Check every pair before training; raise one :class:`DatasetError` listing all problems.

    Checks: unpaired images/masks, unreadable files, image/mask size mismatch, class values
    outside 0..num_classes-1 (other than ignore_index), empty splits, masks that are all background.
    Returns ``{"counts": {split: n}, "class_pixels": {split: list[int] (num_classes)}}``.
    """
    cfg = load_data_config(config)
    problems: dict[str, list[str]] = {k: list(v) for k, v in cfg.problems.items()}
    if "train" not in cfg.declared:
        problems.setdefault("empty", []).append("no train split was found or declared")
    class_pixels: dict[str, np.ndarray] = {}
    reported = {message for items in problems.values() for message in items}
    for split, samples in cfg.splits.items():
        if not samples:
            problems.setdefault("empty", []).append(f"split '{split}' has no samples")
            continue
        totals = np.zeros(cfg.num_classes, np.int64)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            results = pool.map(lambda s: _check_sample(s, cfg.num_classes, cfg.ignore_index), samples)
            for sample, (kind, message, counts) in zip(samples, results, strict=True):
                if kind == "values" and sample.mask is not None and sample.mask.suffix.lower() in LOSSY_MASK_SUFFIXES:
                    continue  # listed as a lossy mask: its stray values are JPEG artefacts
                if kind:
                    if message not in reported:  # e.g. a malformed COCO entry already listed by load_data_config
                        problems.setdefault(kind, []).append(message)
                        reported.add(message)
                elif counts is not None:
                    totals += counts
        class_pixels[split] = totals
    if problems:
        total = sum(len(v) for v in problems.values())
        parts = [f"dataset at {cfg.path} has {total} problem(s):"]
        for kind, items in problems.items():
            parts.append(f"{_PROBLEM_TITLES.get(kind, kind)} ({len(items)}):\n{describe_files(items, max_report)}")
        raise DatasetError("\n".join(parts))
    train_pixels = class_pixels.get("train")
    if train_pixels is not None and cfg.num_classes > 1 and train_pixels[1:].sum() == 0:
        hint = ("" if cfg.num_classes == 2 else " If the masks are 0/255 (255 = foreground), declare 2 classes "
                "(names: [background, foreground]) so 255 is read as class 1.")
        raise DatasetError(
            f"dataset at {cfg.path}: every training mask is background (class 0) or ignore ({cfg.ignore_index}); "
            f"nothing to learn.{hint}"
        )
    return {"counts": {k: len(v) for k, v in cfg.splits.items()},
            "class_pixels": {k: v.tolist() for k, v in class_pixels.items()}}


# ============================================================================ torch dataset
try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[misc,assignment]


class SegmentationDataset(_TorchDataset):
    """Image/mask pairs as tensors: ``[i] -> (float32 (3, H, W) normalised, int64 (H, W))``.

    Args:
        samples: the pairs (e.g. ``DataConfig.train``).
        transform: callable ``(rgb uint8 (H,W,3), mask (H,W)) -> (tensor, tensor)``, e.g. from
            :func:`~imseg.semantic.transforms.build_transforms`; None = normalise only.
        ignore_index: mask value that losses and metrics skip.
        num_classes: number of classes (informational; the 0/255 -> 0/1 reading of binary masks is
            decided per dataset by :func:`load_data_config` and carried by each ``Sample.binary_255``).
        seed: None draws augmentation randomness from torch's global RNG (seed it, and DataLoader
            workers, e.g. with ``lightning.seed_everything(seed, workers=True)``). An int makes
            sample ``i`` in epoch ``e`` use a generator seeded from ``(seed, e, i)``, independent of
            workers and order; call :meth:`set_epoch` each epoch.
        cache: keep decoded images and masks in memory after the first read (small datasets).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]] | None = None,
        ignore_index: int = 255,
        num_classes: int | None = None,
        seed: int | None = None,
        cache: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.ignore_index = int(ignore_index)
        self.num_classes = num_classes
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentations when ``seed`` is set (call before each epoch)."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        rgb = read_image(sample.image)
        mask = read_mask(sample, self.ignore_index)
        if mask.shape != rgb.shape[:2]:
            raise DatasetError(
                f"{sample.image} is {rgb.shape[1]}x{rgb.shape[0]} but its mask {sample.mask or sample.annotation} is "
                f"{mask.shape[1]}x{mask.shape[0]}; masks are never resized: fix the pair (run validate_dataset)."
            )
        if self.cache:
            self._cache[index] = (rgb, mask)
        return rgb, mask

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed pair: (RGB uint8 (H, W, 3), mask int64 (H, W))."""
        rgb, mask = self._load(index)
        return rgb.copy(), mask.astype(np.int64)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import torch

        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"sample index {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        rgb, mask = self._load(index)
        transform = self.transform or _default_transform()
        if self.seed is None:
            return transform(rgb, mask)
        with torch.random.fork_rng(devices=[]):
            # CPU generator only (what the transforms use): torch.manual_seed also seeds CUDA/XPU/MTIA lazily,
            # formatting a stack trace each time (~2 ms per sample).
            seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            torch.default_generator.manual_seed(seed)
            return transform(rgb, mask)

    def __repr__(self) -> str:
        return f"SegmentationDataset({len(self)} samples, num_classes={self.num_classes}, transform={self.transform!r})"


@lru_cache(maxsize=1)
def _default_transform():
    return build_transforms(None, "none", train=False)


def build_datasets(
    config: DataConfig | str | os.PathLike | Mapping[str, Any],
    imgsz: int | Sequence[int] | None = 512,
    augment: str | Mapping[str, Any] | None = "default",
    seed: int | None = 0,
    cache: bool = False,
    validate: bool = True,
) -> dict[str, SegmentationDataset]:
    """Validate the dataset and build one :class:`SegmentationDataset` per declared split.

    ``train`` gets ``augment`` (see :mod:`imseg.semantic.transforms`) with per-sample seeds from
    ``seed`` (call ``set_epoch``; None = global RNG); ``val``/``test`` only letterbox to ``imgsz``
    (None = native size).
    """
    cfg = load_data_config(config)
    if validate:
        validate_dataset(cfg)
    out: dict[str, SegmentationDataset] = {}
    for split, samples in cfg.splits.items():
        train = split == "train"
        transform = build_transforms(imgsz, augment if train else "none", train=train, ignore_index=cfg.ignore_index)
        out[split] = SegmentationDataset(
            samples, transform, ignore_index=cfg.ignore_index, num_classes=cfg.num_classes,
            seed=seed if train else None, cache=cache,
        )
    return out
