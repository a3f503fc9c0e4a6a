"""Instance masks stored as pictures: a folder of label images (one value per object, 0 = background),
and the 2018 Data Science Bowl layout (``ID/images/ID.png`` with one 0/255 PNG per object in ``ID/masks/``).
These carry no class names, so every object gets ``category``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ..checks import IMAGE_SUFFIXES, Problems, find_image, image_size, read_label_image
from ..sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source

LABEL_FOLDERS = ("labels", "masks", "instances")


def _label_folders(root: Path, images: Path | None) -> tuple[Path, Path]:
    for name in LABEL_FOLDERS:
        if (root / name).is_dir() and images is None and (root / "images").is_dir():
            return root / name, root / "images"
    if images is None:
        raise DatasetError(f"{root}: expected labels/ (or masks/) beside images/, or pass images= for a labels folder.")
    return root, Path(images)


def read_label_images(path: str | Path, *, images: str | Path | None = None, category: str = "object") -> InstanceDataset:
    """Read label images: ``path`` holds labels/ (or masks/) and images/, or is the labels folder itself
    with ``images`` naming the image folder. Files pair by name; each nonzero value is one object."""
    labels_dir, images_dir = _label_folders(Path(path), Path(images) if images else None)
    problems = Problems(f"label images {labels_dir}")
    notes, samples = [], []
    files = sorted(p for p in labels_dir.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    if not files:
        raise DatasetError(f"{labels_dir}: no label images (.png, .tif).")
    for file in files:
        image = find_image(images_dir, file.stem)
        if image is None:
            notes.append(f"{file}: label image without an image in {images_dir} (left out)")
            continue
        labels = read_label_image(file)
        if labels.shape != image_size(image):
            h, w = image_size(image)
            problems.add(
                Source(str(file)), f"label image {labels.shape[1]}x{labels.shape[0]} differs from the image's {w}x{h} ({image})"
            )
            continue
        sample = InstanceSample(str(image), *labels.shape)
        for value in np.unique(labels):
            if value != 0:
                where = Source(str(file), f"value {int(value)}")
                sample.objects.append(InstanceObject(category, InstanceMask.from_array(labels == value), False, where))
        samples.append(sample)
    problems.raise_if_any("Label images must have the size of their image (nothing is resized).")
    return InstanceDataset(categories=[category], samples=samples, notes=notes)


def is_dsb(path: Path) -> bool:
    return any((d / "images").is_dir() and (d / "masks").is_dir() for d in _dsb_dirs(path))


def _dsb_dirs(path: Path) -> list[Path]:
    root = path / "train" if (path / "train").is_dir() and not (path / "images").is_dir() else path
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def _dsb_mask(file: Path, shape: tuple[int, int], problems: Problems) -> np.ndarray | None:
    mask = read_label_image(file)
    if mask.shape != shape:
        problems.add(Source(str(file)), f"mask {mask.shape[1]}x{mask.shape[0]} differs from the image's {shape[1]}x{shape[0]}")
        return None
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1, 255}:
        problems.add(Source(str(file)), f"one-object masks hold 0 and 255 (or 0/1); found values {values[:6].tolist()}")
        return None
    if len(values) == 1 and values[0] == 0:
        problems.add(Source(str(file)), "the mask is empty")
        return None
    return mask != 0


def read_dsb(path: str | Path, *, category: str = "nucleus", ids: list[str] | None = None) -> InstanceDataset:
    """Read the DSB 2018 layout under ``path`` (or ``path/train``); ``ids`` limits it to those folders."""
    dirs = [d for d in _dsb_dirs(Path(path)) if ids is None or d.name in ids]
    problems = Problems(f"DSB data set {path}")
    samples = []
    for folder in dirs:
        image = find_image(folder / "images", folder.name)
        if image is None:
            problems.add(Source(str(folder)), f"no image images/{folder.name}.png")
            continue
        sample = InstanceSample(str(image), *image_size(image))
        for file in sorted((folder / "masks").iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                mask = _dsb_mask(file, (sample.height, sample.width), problems)
                if mask is not None:
                    sample.objects.append(InstanceObject(category, InstanceMask.from_array(mask), False, Source(str(file))))
        samples.append(sample)
    if not dirs:
        raise DatasetError(f"{path}: no DSB folders (ID/images/ID.png with ID/masks/*.png).")
    problems.raise_if_any("Each mask must be a 0/255 picture of one object, the size of its image.")
    return InstanceDataset(categories=[category], samples=samples)
