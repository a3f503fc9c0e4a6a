"""Fine-tuning data: any instance-style data set as (image, object masks) samples, checked before training.

Two routes, decided by what ``data`` is:

- instance formats (COCO instances JSON with polygons/RLE, labelme, YOLO-seg, VOC SegmentationObject, DSB
  ``ID/images`` + ``ID/masks``): read by :func:`imseg.instance.formats.read_dataset`, which lists every
  malformed entry; crowd objects are left out (they are not one object to prompt). No split in the source:
  a seeded ``val_fraction`` split.
- mask folders and dataset YAMLs as for ``imseg train`` (:mod:`imseg.semantic.data`: ``images/`` + ``masks/``,
  ``split.json``, ratios, ...): every pair decoded and checked by
  :func:`~imseg.semantic.data.validation.validate_dataset`. Each mask becomes objects by ``objects``:
  ``ids`` (every non-zero value is one object: instance label images, or a binary mask as one object),
  ``components`` (each 8-connected component of each non-zero value) or ``whole`` (all foreground as one).

Objects smaller than ``min_area`` pixels cannot be prompted reliably (a one-pixel object has no interior
distinct from its border): they are left out and counted. Images without objects stay in the data set (they
cost nothing and are counted) but give no training prompt. A split without any object is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError

OBJECT_MODES = ("ids", "components", "whole")
INSTANCE_FORMATS = ("coco", "labelme", "yolo", "voc", "dsb", "label-studio")

__all__ = ["FinetuneData", "FtSample", "OBJECT_MODES", "load_finetune_data"]


@dataclass
class FtSample:
    """One image and where its object masks come from (decoded on demand: ``masks()``)."""

    image: str
    objects: list[Any] = field(default_factory=list)  # InstanceMask (instance route)
    label: Any = None  # semantic Sample (mask-folder route)
    mode: str = "ids"
    ignore_index: int = 255
    min_area: int = 4

    def masks(self, keep_small: bool = False) -> np.ndarray:
        """(K, H, W) bool: the object masks with at least ``min_area`` pixels (all with ``keep_small``; K may
        be 0)."""
        if self.label is not None:
            from ..semantic.data.masks import read_mask

            found = _label_objects(read_mask(self.label, self.ignore_index), self.mode, self.ignore_index)
        else:
            found = [obj.decode().astype(bool) for obj in self.objects]
        kept = [m for m in found if keep_small or int(m.sum()) >= self.min_area]
        if not kept:
            return np.zeros((0, 0, 0), bool)
        return np.stack(kept)


def _label_objects(label: np.ndarray, mode: str, ignore_index: int) -> list[np.ndarray]:
    values = [int(v) for v in np.unique(label) if v != 0 and v != ignore_index]
    if mode == "whole":
        fg = np.isin(label, values)
        return [fg] if fg.any() else []
    if mode == "ids":
        return [label == v for v in values]
    from scipy import ndimage

    out = []
    for v in values:
        parts, n = ndimage.label(label == v, structure=np.ones((3, 3), int))
        out += [parts == i for i in range(1, n + 1)]
    return out


@dataclass
class FinetuneData:
    """Samples per split plus what reading left out (``notes``) and how it was read (``spec`` for config.yaml)."""

    splits: dict[str, list[FtSample]]
    notes: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)


def _route(data: Any) -> str:
    if isinstance(data, dict):
        return "masks"
    path = Path(data)
    if not path.exists():
        raise ConfigError(f"{path}: no such dataset file or folder (--data).")
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return "masks"
    from ..instance.formats import detect_format

    try:
        fmt = detect_format(path)
    except DatasetError:
        return "masks"
    return fmt if fmt in INSTANCE_FORMATS else "masks"


def load_finetune_data(data: Any, *, objects: str = "ids", min_area: int = 4, val_fraction: float = 0.2,
                       seed: int = 0) -> FinetuneData:
    """``data`` (path, YAML or mapping) -> checked :class:`FinetuneData` with at least 'train' and 'val'."""
    if objects not in OBJECT_MODES:
        raise ConfigError(f"objects must be one of {', '.join(OBJECT_MODES)}; got {objects!r}.")
    if min_area < 1:
        raise ConfigError(f"min_area must be >= 1 pixel; got {min_area}.")
    route = _route(data)
    if route == "masks":
        result = _from_masks(data, objects, min_area)
    else:
        result = _from_instances(data, route, min_area, val_fraction, seed)
    _check_objects(result, min_area)
    return result


def _from_masks(data: Any, objects: str, min_area: int) -> FinetuneData:
    from ..semantic.data import load_data_config
    from ..semantic.data.validation import validate_dataset

    cfg = load_data_config(data)
    validate_dataset(cfg)  # every pair decoded: sizes, values, unreadable files, empty splits
    if not cfg.val:
        raise DatasetError(f"dataset at {cfg.path}: no 'val' split; declare one (val: ... or split.json) or a "
                           f"val_ratio.")
    splits = {name: [FtSample(str(s.image), label=s, mode=objects, ignore_index=cfg.ignore_index, min_area=min_area)
                     for s in samples] for name, samples in cfg.splits.items()}
    return FinetuneData(splits, spec=dict(cfg.to_dict(), objects=objects, min_area=min_area))


def _from_instances(data: Any, fmt: str, min_area: int, val_fraction: float, seed: int) -> FinetuneData:
    from ..instance.formats import read_dataset
    from ..instance.train import split_dataset

    _, dataset = read_dataset(data, fmt)
    notes = list(dataset.notes)
    crowd = sum(o.iscrowd for s in dataset.samples for o in s.objects)
    if crowd:
        notes.append(f"{crowd} crowd region(s) left out (not single objects)")
    train, val = split_dataset(dataset, val_fraction, seed)

    def samples(ds):
        return [FtSample(s.image_path, objects=[o.mask for o in s.objects if not o.iscrowd], min_area=min_area)
                for s in ds.samples]

    spec = {"path": str(data), "format": fmt, "val_fraction": val_fraction, "seed": seed, "min_area": min_area}
    return FinetuneData({"train": samples(train), "val": samples(val)}, notes, spec)


def _check_objects(result: FinetuneData, min_area: int) -> None:
    """Count objects per split (decoding every mask once); refuse a train/val split without any object."""
    for split, samples in result.splits.items():
        every = [s.masks(keep_small=True) for s in samples]
        counts = [int((m.reshape(len(m), -1).sum(1) >= min_area).sum()) if len(m) else 0 for m in every]
        small = sum(len(m) for m in every) - sum(counts)
        if small:
            result.notes.append(f"{split}: {small} object(s) under {min_area} px left out (too small to prompt)")
        empty = sum(c == 0 for c in counts)
        if empty:
            result.notes.append(f"{split}: {empty} of {len(samples)} image(s) have no object of >= {min_area} px "
                                f"(kept, but they give no prompt)")
        if split in ("train", "val") and sum(counts) == 0:
            raise DatasetError(
                f"the {split} split ({len(samples)} images) has no object of at least {min_area} pixels: every mask "
                f"is empty (or objects are smaller). Check the masks (0 = background) or lower min_area."
            )
        result.spec.setdefault("objects_per_split", {})[split] = int(sum(counts))


def describe(result: FinetuneData) -> str:
    parts = [f"{split}: {len(s)} images" for split, s in result.splits.items()]
    return "; ".join(parts) + "".join(f"\nnote: {n}" for n in result.notes)

