"""labelme JSON: one file per image; polygon, rectangle, circle and mask shapes are regions.

Shapes that share a label and a ``group_id`` form one object (several parts), as labelme's own COCO
export does. Shapes labelled ``__ignore__`` become the image's ignore region.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ..checks import REPAIR_HINT, Problems, check_rings, image_size
from ..report import Loss, place_image
from ..sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source

IGNORE_LABELS = ("__ignore__",)
BACKGROUND_LABELS = ("_background_", "__background__")
REGION_TYPES = ("polygon", "rectangle", "circle", "mask")


def is_labelme(doc: object) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("shapes"), list) and "imagePath" in doc


def _load(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read JSON ({exc}).") from exc
    return doc if is_labelme(doc) else None


def _circle(points: np.ndarray) -> np.ndarray:
    centre, edge = points[0], points[1]
    radius = float(np.hypot(*(edge - centre)))
    n = max(16, int(np.ceil(2 * np.pi * radius / 2)))  # a vertex every ~2 px keeps the outline within a pixel
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _mask_shape(shape: dict, h: int, w: int, where: Source, problems: Problems) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as im:
            part = np.asarray(im.convert("L")) > 0
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad shape
        problems.add(where, f"mask shape cannot be decoded ({exc})")
        return None
    (x1, y1) = np.asarray(shape["points"][0], float).round().astype(int)
    full = np.zeros((h, w), bool)
    ph, pw = part.shape
    if x1 < 0 or y1 < 0 or y1 + ph > h or x1 + pw > w:
        problems.add(where, f"mask shape {pw}x{ph} at ({x1}, {y1}) lies outside the {w}x{h} image")
        return None
    full[y1 : y1 + ph, x1 : x1 + pw] = part
    return full


def _region(shape: dict, h: int, w: int, where: Source, problems: Problems) -> InstanceMask | None:
    """The shape's mask (rings or pixels), or None (problem recorded) when it is not a valid region."""
    kind = shape.get("shape_type") or "polygon"
    try:
        points = np.asarray(shape.get("points") or [], float).reshape(-1, 2)
    except ValueError:
        problems.add(where, "points are not [[x, y], ...]")
        return None
    if kind == "mask":
        pixels = _mask_shape(shape, h, w, where, problems)
        return None if pixels is None else InstanceMask.from_array(pixels)
    if kind in ("rectangle", "circle") and len(points) != 2:
        problems.add(where, f"a {kind} needs 2 points, got {len(points)}")
        return None
    if kind == "rectangle":
        (x1, y1), (x2, y2) = points
        points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    elif kind == "circle":
        points = _circle(points)
    rings, rasterise = check_rings([points], h, w, where, problems)
    if not rings:
        return None
    mask = InstanceMask(h, w, rings=rings)
    return InstanceMask(h, w, rle=mask.rle()) if rasterise else mask


def _merge(masks: list[InstanceMask], h: int, w: int) -> InstanceMask:
    if all(m.kind == "polygon" for m in masks):
        return InstanceMask(h, w, rings=[r for m in masks for r in m.rings])
    return InstanceMask.from_array(np.logical_or.reduce([m.decode() for m in masks]))


def _read_file(path: Path, doc: dict, problems: Problems, notes: list[str], labels: list[str]) -> InstanceSample | None:
    image = (path.parent / str(doc["imagePath"]).replace("\\", "/")).resolve()
    try:
        h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
    except (KeyError, TypeError, ValueError):
        problems.add(Source(str(path)), "needs 'imageHeight' and 'imageWidth'")
        return None
    if image.is_file() and image_size(image) != (h, w):
        ih, iw = image_size(image)
        problems.add(Source(str(path)), f"annotated size {w}x{h} differs from the image's {iw}x{ih} ({image})")
        return None
    groups: dict[tuple, list[tuple[InstanceMask, Source]]] = {}
    for i, shape in enumerate(doc["shapes"]):
        label, kind = str(shape.get("label", "")), shape.get("shape_type") or "polygon"
        where = Source(str(path), f"shape {i} '{label}'")
        if kind not in REGION_TYPES:
            notes.append(f"{where}: a {kind} is not a region (left out)")
            continue
        region = _region(shape, h, w, where, problems)
        if region is None:
            continue
        gid = shape.get("group_id")
        groups.setdefault((label, i if gid is None else f"g{gid}"), []).append((region, where))
    sample = InstanceSample(str(image), h, w)
    for (label, _), parts in groups.items():
        mask = _merge([m for m, _ in parts], h, w)
        if label in IGNORE_LABELS:
            sample.ignore = mask if sample.ignore is None else _merge([sample.ignore, mask], h, w)
            continue
        if label not in labels:
            labels.append(label)
        sample.objects.append(InstanceObject(label, mask, False, parts[0][1]))
    return sample


def read_labelme(path: str | Path, *, categories: list[str] | None = None, repair: bool = False) -> InstanceDataset:
    """Read a labelme JSON file or a folder of them (searched recursively; other JSON files are skipped).

    ``categories``: the class names in order (e.g. labelme's labels.txt); a label not in it is refused.
    Without it the classes are the labels in order of first appearance.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.json"))
    problems = Problems(f"labelme data {path}", repair)
    notes: list[str] = []
    labels: list[str] = []
    samples = []
    for file in files:
        doc = _load(file)
        if doc is None:
            continue
        sample = _read_file(file, doc, problems, notes, labels)
        if sample is not None:
            samples.append(sample)
    if not samples and not problems.items:
        raise DatasetError(f"{path}: no labelme JSON files (with 'shapes' and 'imagePath').")
    if categories is not None:
        known = [c for c in categories if c not in IGNORE_LABELS + BACKGROUND_LABELS]
        for sample in samples:
            for obj in sample.objects:
                if obj.category not in known:
                    problems.add(obj.source, f"label '{obj.category}' is not in the categories {known}")
        labels = known
    problems.raise_if_any(REPAIR_HINT)
    return InstanceDataset(categories=labels, samples=samples, notes=notes + problems.repairs)


def _shapes(obj: InstanceObject, group_id: int, losses: list) -> list[dict]:
    rings, holes = obj.mask.outline()
    if holes:
        losses.append(Loss(obj.source, "hole", "labelme polygons cannot cut a hole; written filled"))
    gid = group_id if len(rings) > 1 else None
    return [
        {
            "label": obj.category,
            "points": [[round(float(x), 2), round(float(y), 2)] for x, y in r],
            "group_id": gid,
            "shape_type": "polygon",
            "flags": {},
        }
        for r in rings
    ]


def write_labelme(ds: InstanceDataset, out: Path, *, images: str = "copy", losses: list | None = None) -> list[Path]:
    """Write one ``out/NAME.json`` per image (the image beside it unless ``images="none"``).

    Several-part objects share a ``group_id``; crowd regions are left out and holes filled (both reported).
    """
    losses = [] if losses is None else losses
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in ds.samples:
        shapes: list[dict] = []
        for group_id, obj in enumerate(sample.objects):
            if obj.iscrowd:
                losses.append(Loss(obj.source, "crowd", "labelme has no crowd regions; not written", dropped=True))
                continue
            shapes += _shapes(obj, group_id, losses)
        if sample.ignore is not None:
            ignore = InstanceObject(IGNORE_LABELS[0], sample.ignore, False, Source(sample.image_path, "ignore region"))
            shapes += _shapes(ignore, len(sample.objects), losses)
        doc = {
            "version": "5.0.0",
            "flags": {},
            "shapes": shapes,
            "imagePath": place_image(Path(sample.image_path), out, images, out),
            "imageData": None,
            "imageHeight": sample.height,
            "imageWidth": sample.width,
        }
        target = out / f"{sample.stem}.json"
        target.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        written.append(target)
    return written
