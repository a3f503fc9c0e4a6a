"""labelme JSON (polygon, rectangle, circle, line, linestrip, point shapes) rasterised to class maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from .common import IGNORE_LABEL, Sample, _image_size, _is_image, _narrow, _positive_int


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
