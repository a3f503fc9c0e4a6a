"""COCO instance JSON: indexing with malformed entries listed, rasterising to class maps (pycocotools)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from .common import BACKGROUND_NAMES, Sample, _is_number, _narrow, _positive_int


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


def _is_coco_file(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as fh:
        head = fh.read(4096)
    return '"annotations"' in head or '"images"' in head or ('"categories"' in head and '"shapes"' not in head)


def _coco_files(root: Path) -> list[Path]:
    found = [p for p in sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json")) if _is_coco_file(p)]
    return [p for p in found if p.name != "split.json"]


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
