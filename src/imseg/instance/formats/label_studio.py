"""Label Studio JSON export (a list of tasks): ``polygonlabels`` and ``rectanglelabels`` results, in percent
of the image size. Brush masks use Label Studio's own bit-packed RLE and are left out (listed in notes);
export those projects as COCO or through label-studio-converter first."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np

from ...errors import DatasetError
from ..checks import REPAIR_HINT, Problems, check_rings
from ..sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source

REGION_TYPES = {"polygonlabels": "points", "rectanglelabels": "x"}


def is_label_studio(doc: object) -> bool:
    """A list of tasks, each with ``data`` and ``annotations`` (or ``predictions``) lists of results."""
    return (
        isinstance(doc, list)
        and bool(doc)
        and all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in doc)
        and any(isinstance(t.get("annotations"), list) for t in doc)
    )


def _image_path(url: str, root: Path) -> Path:
    """The local file for a task's image URL: same name in ``root``, or without Label Studio's upload prefix."""
    name = PurePosixPath(unquote(urlparse(url).path)).name
    for candidate in (root / name, root / name.split("-", 1)[-1]):
        if candidate.is_file():
            return candidate
    return root / name


def _rectangle(value: dict, w: int, h: int) -> np.ndarray:
    x, y = value["x"] / 100 * w, value["y"] / 100 * h
    bw, bh = value["width"] / 100 * w, value["height"] / 100 * h
    corners = np.array([[0, 0], [bw, 0], [bw, bh], [0, bh]], float)
    angle = np.deg2rad(float(value.get("rotation", 0) or 0))  # Label Studio rotates about the top-left corner
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return corners @ rot.T + [x, y]


def _result_object(result: dict, sample: InstanceSample, where: Source, problems: Problems, notes: list) -> InstanceObject | None:
    kind, value = result.get("type"), result.get("value") or {}
    if kind not in REGION_TYPES:
        notes.append(f"{where}: a {kind} result is not a polygon or rectangle region (left out)")
        return None
    labels = value.get(kind) or []
    if len(labels) != 1:
        problems.add(where, f"expected one label, got {labels}")
        return None
    h, w = sample.height, sample.width
    try:
        points = _rectangle(value, w, h) if kind == "rectanglelabels" else np.asarray(value["points"], float).reshape(-1, 2)
    except (KeyError, TypeError, ValueError):
        problems.add(where, f"malformed {kind} value {str(value)[:80]!r}")
        return None
    if kind == "polygonlabels":
        points = points / 100 * [w, h]
    rings, rasterise = check_rings([points], h, w, where, problems)
    if not rings:
        return None
    mask = InstanceMask(h, w, rings=rings)
    return InstanceObject(str(labels[0]), InstanceMask(h, w, rle=mask.rle()) if rasterise else mask, False, where)


def _task_sample(task: dict, path: Path, root: Path, problems: Problems, notes: list) -> InstanceSample | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    task_where = Source(str(path), f"task {task.get('id')}")
    if not done:
        notes.append(f"{task_where}: no annotation (left out)")
        return None
    if len(done) > 1:
        notes.append(f"{task_where}: {len(done)} annotations; the first (id {done[0].get('id')}) is read")
    results = done[0].get("result") or []
    sizes = {(r.get("original_height"), r.get("original_width")) for r in results if "original_width" in r}
    if len(sizes) != 1 or None in next(iter(sizes)):
        problems.add(
            task_where, f"results give the image size as {sorted(sizes, key=str) or 'nothing'}; need one original_width/height"
        )
        return None
    h, w = (int(v) for v in sizes.pop())
    image = _image_path(str(next(iter(task["data"].values()), "")), root)
    sample = InstanceSample(str(image), h, w)
    for k, result in enumerate(results):
        where = Source(str(path), f"task {task.get('id')} result {result.get('id', k)}")
        obj = _result_object(result, sample, where, problems, notes)
        if obj is not None:
            sample.objects.append(obj)
    return sample


def read_label_studio(path: str | Path, *, image_root: str | Path | None = None, repair: bool = False) -> InstanceDataset:
    """Read a Label Studio JSON export; images are looked up by file name in ``image_root`` (default: the JSON's folder)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read JSON ({exc}).") from exc
    if not is_label_studio(doc):
        raise DatasetError(f"{path}: not a Label Studio export (a list of tasks with 'data' and 'annotations').")
    problems = Problems(f"Label Studio export {path}", repair)
    notes: list[str] = []
    root = Path(image_root) if image_root else path.parent
    samples = [s for t in doc if (s := _task_sample(t, path, root, problems, notes)) is not None]
    problems.raise_if_any(REPAIR_HINT)
    labels = list(dict.fromkeys(o.category for s in samples for o in s.objects))
    return InstanceDataset(categories=labels, samples=samples, notes=notes + problems.repairs)
