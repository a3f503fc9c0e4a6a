"""Folder pairs (``images/`` + ``masks/`` with matching stems): pairing, label-image decoding, class inference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DatasetError
from .common import (
    IMAGE_DIR_NAMES,
    MASK_DIR_NAMES,
    MASK_STEM_SUFFIXES,
    MAX_INFERRED_CLASSES,
    Sample,
    _find_child,
    _images_in,
)


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


def _scan_values(samples: Sequence[Sample]) -> set[int]:
    """Distinct label values over masks (threaded decode)."""
    def values(sample: Sample) -> set[int]:
        if sample.mask is None:  # folder/voc samples only: a mask-less one is reported by validation
            return set()
        try:
            return {int(v) for v in _present_values(_read_label_file(sample.mask))}
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
    values = _scan_values(samples)
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
