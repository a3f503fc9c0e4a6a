"""COCO instances JSON: polygons (one or more rings, union), RLE (compressed or not), crowd regions."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import DatasetError
from ..checks import REPAIR_HINT, Problems, check_box, check_rings
from ..report import Loss, place_image
from ..sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source


def load_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read JSON ({exc}).") from exc


def is_coco(doc: object) -> bool:
    return isinstance(doc, dict) and all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories"))


def _categories(doc: dict, path: Path, problems: Problems) -> dict[int, str]:
    names: dict[int, str] = {}
    for cat in doc["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.add(Source(str(path), "categories"), f"category {str(cat)[:60]!r} needs 'id' and 'name'")
        elif cat["id"] in names:
            problems.add(Source(str(path), f"category id {cat['id']}"), "category id listed twice")
        elif str(cat["name"]) in names.values():
            problems.add(
                Source(str(path), f"category id {cat['id']}"), f"category name '{cat['name']}' is used by another id too"
            )
        else:
            names[cat["id"]] = str(cat["name"])
    return names


def _images(doc: dict, path: Path, root: Path, problems: Problems) -> dict[int, InstanceSample]:
    samples: dict[int, InstanceSample] = {}
    for info in doc["images"]:
        where = Source(str(path), f"image id {info.get('id') if isinstance(info, dict) else '?'}")
        try:
            h, w, image_id = int(info["height"]), int(info["width"]), info["id"]
            file_name = str(info["file_name"])
        except (KeyError, TypeError, ValueError):
            problems.add(where, "an image needs 'id', 'file_name', 'height' and 'width'")
            continue
        if image_id in samples:
            problems.add(where, "image id listed twice")
            continue
        samples[image_id] = InstanceSample(str(root / file_name), h, w)
    return samples


def _segmentation(ann: dict, sample: InstanceSample, where: Source, problems: Problems) -> InstanceMask | None:
    seg = ann.get("segmentation")
    h, w = sample.height, sample.width
    if isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, list | tuple) and len(size) == 2) or "counts" not in seg:
            problems.add(where, "an RLE segmentation needs 'size' [H, W] and 'counts'")
            return None
        if [int(size[0]), int(size[1])] != [h, w]:
            problems.add(where, f"mask size {int(size[1])}x{int(size[0])} differs from the image's {w}x{h}")
            return None
        try:
            return InstanceMask(h, w, rle=seg)
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare exceptions on bad counts
            problems.add(where, f"RLE counts cannot be decoded ({exc})")
            return None
    if not isinstance(seg, list) or not seg or not all(isinstance(p, list) for p in seg):
        problems.add(where, "segmentation must be a list of polygons [[x1, y1, x2, y2, ...], ...] or an RLE dict")
        return None
    if any(len(p) % 2 for p in seg):
        problems.add(where, "a polygon has an odd number of coordinates")
        return None
    rings, rasterise = check_rings([[float(v) for v in p] for p in seg], h, w, where, problems)
    if not rings:
        return None
    mask = InstanceMask(h, w, rings=rings)
    return InstanceMask(h, w, rle=mask.rle()) if rasterise else mask


def read_coco(path: str | Path, *, image_root: str | Path | None = None, repair: bool = False) -> InstanceDataset:
    """Read a COCO instances JSON. ``image_root``: folder ``file_name`` is relative to (default: the JSON's)."""
    path = Path(path)
    doc = load_json(path)
    if not is_coco(doc):
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories' lists).")
    problems = Problems(f"COCO file {path}", repair)
    names = _categories(doc, path, problems)
    samples = _images(doc, path, Path(image_root) if image_root else path.parent, problems)
    seen: set = set()
    next_id = max((a.get("id", 0) for a in doc["annotations"] if isinstance(a.get("id"), int)), default=0) + 1
    for ann in doc["annotations"]:
        ann_id = ann.get("id")
        where = Source(str(path), f"annotation id {ann_id}")
        if ann_id in seen:
            if not repair:
                problems.add(where, "annotation id used twice")
                continue
            problems.repaired(where, f"annotation id used twice (renumbered {next_id})")
            ann_id, next_id = next_id, next_id + 1
            where = Source(str(path), f"annotation id {ann_id}")
        seen.add(ann_id)
        sample = samples.get(ann.get("image_id"))
        if sample is None:
            problems.add(where, f"image_id {ann.get('image_id')!r} is not in 'images'")
            continue
        if ann.get("category_id") not in names:
            problems.add(where, f"category_id {ann.get('category_id')!r} is not in 'categories' ({sorted(names)})")
            continue
        if "bbox" in ann:
            check_box(ann["bbox"], sample.height, sample.width, where, problems)
        mask = _segmentation(ann, sample, where, problems)
        if mask is not None:
            obj = InstanceObject(names[ann["category_id"]], mask, bool(ann.get("iscrowd", 0)), where)
            sample.objects.append(obj)
    problems.raise_if_any(REPAIR_HINT)
    ordered = sorted(names.items())
    return InstanceDataset(
        categories=[n for _, n in ordered],
        samples=list(samples.values()),
        notes=problems.repairs,
        category_ids={n: i for i, n in ordered},
    )


def _annotation(obj: InstanceObject, ann_id: int, image_id: int, cat_id: int, mask_format: str, losses: list) -> dict:
    rle = obj.mask.rle()
    seg: object = rle
    if mask_format == "polygon" and not obj.iscrowd:
        rings, holes = obj.mask.outline()
        if holes:
            losses.append(Loss(obj.source, "hole", "COCO polygons cannot cut a hole; written as RLE instead (no pixels lost)"))
        else:
            seg = [[round(float(v), 2) for v in r.ravel()] for r in rings]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "segmentation": seg,
        "area": obj.mask.area,
        "bbox": obj.mask.bbox(),
        "iscrowd": int(obj.iscrowd),
    }


def write_coco(
    ds: InstanceDataset, out: Path, *, images: str = "copy", mask_format: str = "polygon", losses: list | None = None
) -> list[Path]:
    """Write ``out/annotations.json`` (and the images under ``out/images`` unless ``images="none"``).

    ``mask_format``: "polygon" (RLE for objects with holes and crowd regions) or "rle" for every object.
    """
    losses = [] if losses is None else losses
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cats = [{"id": ds.category_id(n), "name": n, "supercategory": ""} for n in ds.categories]
    doc: dict = {"info": {"description": "written by imseg"}, "images": [], "annotations": [], "categories": cats}
    ann_id = 1
    for image_id, sample in enumerate(ds.samples, start=1):
        file_name = place_image(Path(sample.image_path), out / "images", images, out)
        doc["images"].append({"id": image_id, "file_name": file_name, "height": sample.height, "width": sample.width})
        if sample.ignore is not None:
            losses.append(Loss(Source(sample.image_path), "ignore region", "COCO has no ignore region; not written"))
        for obj in sample.objects:
            doc["annotations"].append(_annotation(obj, ann_id, image_id, ds.category_id(obj.category), mask_format, losses))
            ann_id += 1
    target = out / "annotations.json"
    target.write_text(json.dumps(doc), encoding="utf-8")
    return [target]
