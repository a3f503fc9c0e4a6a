"""YOLO-seg: ``labels/**/NAME.txt`` beside ``images/**/NAME.jpg``, one object a line ``cls x1 y1 x2 y2 ...``
in coordinates normalised by the image's width and height; class names from a data.yaml or a list."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConfigError, DatasetError
from ..checks import IMAGE_SUFFIXES, REPAIR_HINT, Problems, check_rings, find_image, image_size
from ..report import Loss, place_image
from ..sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source


def _yaml_names(path: Path) -> list[str]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path}: cannot read YAML ({exc}).") from exc
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        if sorted(int(k) for k in names) != list(range(len(names))):
            raise DatasetError(f"{path}: 'names' keys must be 0..{len(names) - 1}; got {sorted(names)}.")
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DatasetError(f"{path}: no 'names' list or mapping (class index -> name).")


def _layout(root: Path) -> tuple[Path, Path, Path | None]:
    """(labels folder, images folder, data.yaml or None) of a YOLO data set given as a folder or data.yaml."""
    yaml_path = None
    if root.is_file():
        yaml_path, root = root, root.parent
    elif (root / "data.yaml").is_file():
        yaml_path = root / "data.yaml"
    if (root / "labels").is_dir():
        return root / "labels", root / "images", yaml_path
    return root, root, yaml_path


def read_yolo(path: str | Path, *, names: list[str] | None = None, repair: bool = False) -> InstanceDataset:
    """Read YOLO-seg labels. ``path``: the data set folder (with labels/ and images/) or its data.yaml.

    Class names come from ``names`` or the data.yaml; without either they are the class indices as text
    (and a note says so). Images without a label file are samples without objects; label files without
    an image cannot be placed (their size is unknown) and are left out. Both are listed in ``notes``.
    """
    labels_dir, images_dir, yaml_path = _layout(Path(path))
    notes: list[str] = []
    if names is None and yaml_path is not None:
        names = _yaml_names(yaml_path)
    label_files = sorted(p for p in labels_dir.rglob("*.txt") if p.name not in ("classes.txt",))
    if not label_files:
        raise DatasetError(f"{path}: no YOLO label files (*.txt) under {labels_dir}.")
    problems = Problems(f"YOLO-seg data set {path}", repair)
    parsed = {f: _parse_lines(f, problems) for f in label_files}
    if names is None:
        top = max((c for rows in parsed.values() for c, _, _ in rows), default=-1)
        names = [str(i) for i in range(top + 1)]
        notes.append(f"{path}: no class names (no data.yaml, no names=); classes are named by their index 0..{top}")
    samples = []
    for label_file, rows in parsed.items():
        rel = label_file.parent.relative_to(labels_dir)
        image = find_image(images_dir / rel, label_file.stem)
        if image is None:
            notes.append(f"{label_file}: label file without an image in {images_dir / rel} (left out)")
            continue
        h, w = image_size(image)
        samples.append(_sample(image, h, w, rows, names, problems))
    labelled = {s.stem for s in samples} | {f.stem for f in label_files}
    for image in sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in labelled:
            notes.append(f"{image}: image without a label file (kept, no objects)")
            h, w = image_size(image)
            samples.append(InstanceSample(str(image), h, w))
    problems.raise_if_any(REPAIR_HINT)
    return InstanceDataset(categories=list(names), samples=samples, notes=notes + problems.repairs)


def _parse_lines(path: Path, problems: Problems) -> list[tuple[int, np.ndarray, Source]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = Source(str(path), f"line {number}")
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            problems.add(where, f"not numbers: {line[:60]!r}")
            continue
        cls, coords = values[0], values[1:]
        if cls != int(cls) or cls < 0:
            problems.add(where, f"class {values[0]!r} is not a class index")
        elif len(coords) % 2:
            problems.add(where, f"{len(coords)} coordinates; a polygon needs x y pairs")
        else:
            rows.append((int(cls), np.asarray(coords).reshape(-1, 2), where))
    return rows


def _sample(image: Path, h: int, w: int, rows: list, names: list[str], problems: Problems) -> InstanceSample:
    sample = InstanceSample(str(image), h, w)
    for cls, points, where in rows:
        if cls >= len(names):
            problems.add(where, f"class {cls} is not in the {len(names)} class names (0..{len(names) - 1})")
            continue
        if len(points) == 2:
            problems.add(where, "a detection box (cls cx cy w h), not a segmentation polygon")
            continue
        rings, rasterise = check_rings([points * [w, h]], h, w, where, problems)
        if rings:
            mask = InstanceMask(h, w, rings=rings)
            sample.objects.append(
                InstanceObject(names[cls], InstanceMask(h, w, rle=mask.rle()) if rasterise else mask, False, where)
            )
    return sample


def bridged(rings: list[np.ndarray]) -> np.ndarray:
    """One ring through all ``rings``: each part is joined to the next by a zero-width bridge between their
    nearest vertices, run out and back (the YOLO-seg convention for an object in several parts)."""

    def visit(k: int, entry: int) -> np.ndarray:
        ring = np.roll(rings[k], -entry, axis=0)
        if k == len(rings) - 1:
            return np.vstack([ring, ring[:1]])
        gaps = np.linalg.norm(ring[:, None] - rings[k + 1][None], axis=2)
        exit_at, child_entry = np.unravel_index(np.argmin(gaps), gaps.shape)
        return np.vstack([ring[: exit_at + 1], visit(k + 1, int(child_entry)), ring[exit_at:], ring[:1]])

    return visit(0, 0)[:-1]  # the line closes on its first point by itself


def _ring_lines(obj: InstanceObject, index: int, w: int, h: int, losses: list) -> str | None:
    if obj.iscrowd:
        losses.append(Loss(obj.source, "crowd", "YOLO-seg has no crowd regions; not written", dropped=True))
        return None
    rings, holes = obj.mask.outline()
    if not rings:
        losses.append(Loss(obj.source, "empty", "the mask has no pixels; not written", dropped=True))
        return None
    if holes:
        losses.append(Loss(obj.source, "hole", "a YOLO-seg polygon cannot cut a hole; written filled"))
    ring = bridged(rings) if len(rings) > 1 else rings[0]
    xy = np.clip(ring / [w, h], 0.0, 1.0)
    return " ".join([str(index)] + [f"{v:.6f}" for v in xy.ravel()])


def write_yolo(ds: InstanceDataset, out: Path, *, images: str = "copy", losses: list | None = None) -> list[Path]:
    """Write ``out/data.yaml``, ``out/labels/NAME.txt`` and (unless ``images="none"``) ``out/images/``."""
    import yaml

    losses = [] if losses is None else losses
    out = Path(out)
    if images == "none":
        raise ConfigError("YOLO-seg pairs labels with images by folder; use images='copy' or 'symlink'.")
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    index = {name: i for i, name in enumerate(ds.categories)}
    for sample in ds.samples:
        place_image(Path(sample.image_path), out / "images", images, out)
        if sample.ignore is not None:
            losses.append(Loss(Source(sample.image_path), "ignore region", "YOLO-seg has no ignore region; not written"))
        lines = [_ring_lines(o, index[o.category], sample.width, sample.height, losses) for o in sample.objects]
        target = out / "labels" / f"{sample.stem}.txt"
        target.write_text("".join(f"{line}\n" for line in lines if line), encoding="utf-8")
        written.append(target)
    data = {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(ds.categories))}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return [out / "data.yaml", *written]
