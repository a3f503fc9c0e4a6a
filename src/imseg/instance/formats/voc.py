"""Pascal VOC instance layout: ``SegmentationObject/NAME.png`` (one value per object) with
``SegmentationClass/NAME.png`` (the class of each pixel) and ``JPEGImages/``; 255 marks ignore/border.

The writer uses the same layout (so ``to="png"`` round-trips through the reader), with a 16-bit object
image when an image holds more than 254 objects (then 65535 marks ignore).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ..checks import Problems, find_image, image_size, read_label_image
from ..report import Loss, place_image
from ..sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source

VOC_CLASSES = (
    "_background_",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (256 RGB triples, flattened) that its label PNGs use."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def is_voc(path: Path) -> bool:
    return (path / "SegmentationObject").is_dir() and (path / "SegmentationClass").is_dir()


def _class_names(root: Path) -> list[str]:
    names_file = root / "class_names.txt"
    if names_file.is_file():
        return [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(VOC_CLASSES)


def _objects(obj: np.ndarray, cls: np.ndarray, names: list[str], where: Source, problems: Problems) -> list:
    ignore_value = 255 if obj.dtype == np.uint8 else 65535
    found = []
    for value in np.unique(obj):
        if value in (0, ignore_value):
            continue
        pixels = obj == value
        classes = [int(c) for c in np.unique(cls[pixels]) if c != 255]
        here = Source(where.file, f"object {int(value)}")
        if len(classes) != 1 or classes[0] == 0 or classes[0] >= len(names):
            problems.add(
                here, f"the class image gives this object the class value(s) {classes}; expected one of 1..{len(names) - 1}"
            )
            continue
        found.append(InstanceObject(names[classes[0]], InstanceMask.from_array(pixels), False, here))
    return found


def read_voc(path: str | Path) -> InstanceDataset:
    """Read a VOC-style instance data set (class names from ``class_names.txt``, else the 21 VOC names)."""
    root = Path(path)
    if not is_voc(root):
        raise DatasetError(f"{root}: not a VOC instance layout (needs SegmentationObject/ and SegmentationClass/).")
    names = _class_names(root)
    problems = Problems(f"VOC data set {root}")
    samples = []
    for obj_file in sorted((root / "SegmentationObject").glob("*.png")):
        cls_file = root / "SegmentationClass" / obj_file.name
        where = Source(str(obj_file))
        if not cls_file.is_file():
            problems.add(where, f"no class image {cls_file}")
            continue
        obj, cls = read_label_image(obj_file), read_label_image(cls_file)
        image = find_image(root / "JPEGImages", obj_file.stem) or obj_file
        size = image_size(image) if image != obj_file else obj.shape
        if obj.shape != cls.shape or tuple(size) != obj.shape:
            problems.add(
                where, f"object {obj.shape[::-1]}, class {cls.shape[::-1]} and image {tuple(size)[::-1]} sizes (WxH) differ"
            )
            continue
        sample = InstanceSample(str(image), obj.shape[0], obj.shape[1], _objects(obj, cls, names, where, problems))
        ignore = (obj == (255 if obj.dtype == np.uint8 else 65535)) | (cls == 255)
        sample.ignore = InstanceMask.from_array(ignore) if ignore.any() else None
        samples.append(sample)
    problems.raise_if_any("Each object value must cover pixels of one class; sizes must match the image.")
    return InstanceDataset(categories=names[1:], samples=samples, category_ids={n: i for i, n in enumerate(names) if i})


def _paint(sample: InstanceSample, class_index: dict[str, int], losses: list) -> tuple[np.ndarray, np.ndarray]:
    n = len(sample.objects)
    dtype, ignore_value = (np.uint8, 255) if n < 255 else (np.uint16, 65535)
    obj = np.zeros((sample.height, sample.width), dtype)
    cls = np.zeros((sample.height, sample.width), np.uint8)
    masks = [o.mask.decode() for o in sample.objects]
    for value, (o, m) in enumerate(zip(sample.objects, masks, strict=True), start=1):
        obj[m], cls[m] = value, class_index[o.category]
        if o.iscrowd:
            losses.append(Loss(o.source, "crowd", "label images have no crowd flag; written as an ordinary object"))
    for value, (o, m) in enumerate(zip(sample.objects, masks, strict=True), start=1):
        hidden = int(m.sum() - (obj[m] == value).sum())
        if hidden:
            losses.append(
                Loss(o.source, "overlap", f"{hidden} of {int(m.sum())} px lie under a later object (one value per pixel)")
            )
    if sample.ignore is not None:
        ign = sample.ignore.decode() & (obj == 0)
        obj[ign], cls[ign] = ignore_value, 255
    return obj, cls


def write_voc(ds: InstanceDataset, out: Path, *, images: str = "copy", losses: list | None = None) -> list[Path]:
    """Write ``SegmentationObject/``, ``SegmentationClass/``, ``class_names.txt`` and ``JPEGImages/``."""
    from PIL import Image

    losses = [] if losses is None else losses
    out = Path(out)
    for sub in ("SegmentationObject", "SegmentationClass"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = ["_background_", *ds.categories]
    if len(names) > 255:
        raise DatasetError(f"{len(ds.categories)} classes do not fit a VOC class image (at most 254).")
    (out / "class_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    class_index = {n: i for i, n in enumerate(names)}
    written = [out / "class_names.txt"]
    palette = voc_palette()
    for sample in ds.samples:
        place_image(Path(sample.image_path), out / "JPEGImages", images, out)
        obj, cls = _paint(sample, class_index, losses)
        for sub, arr in (("SegmentationObject", obj), ("SegmentationClass", cls)):
            target = out / sub / f"{sample.stem}.png"
            im = Image.fromarray(arr)
            if arr.dtype == np.uint8:
                im = im.convert("P") if im.mode != "P" else im
                im.putpalette(palette)
            im.save(target)
            written.append(target)
    return written
