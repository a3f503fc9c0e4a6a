"""Masks on disk: ``Masks.save`` writes png/coco/rle/polygons/npz, ``Masks.load`` reads them (and COCO JSON).

The functions take the ``Masks`` class (``cls``) or instance as an argument, so this module needs no import of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

SAVE_FORMATS = ("png", "coco", "rle", "polygons", "npz")


def save_masks(masks: Any, directory: Any, format: str = "png", stem: str = "masks", image_id: int = 0) -> list[Any]:
    """Write ``masks`` under ``directory``; see :meth:`Masks.save`."""
    import json
    from pathlib import Path

    from ..io import atomic_path, write_bytes, write_image

    fmt = format.lower()
    if fmt not in SAVE_FORMATS:
        raise InputError(f"unknown mask format {format!r}; use one of {', '.join(SAVE_FORMATS)}.")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    meta = masks._meta()

    def dump(path: Path, payload: dict) -> Path:
        return write_bytes(path, json.dumps(payload).encode("utf-8"))

    if fmt == "npz":
        path = root / f"{stem}.npz"
        arrays = {"masks": np.packbits(masks.masks, axis=-1), "width": np.int64(masks.width),
                  "scores": masks.scores, "boxes": masks.boxes, "areas": masks.areas}
        if masks.labels is not None:
            arrays["labels"] = masks.labels
        for key, value in masks.fields.items():
            if value.dtype == object:
                raise InputError(f"field {key!r} holds Python objects, which npz cannot store safely; give it a "
                                 f"numeric or string dtype, or save with format='rle' (JSON).")
            arrays[f"field_{key}"] = value
        if masks.class_names is not None:
            arrays["class_names"] = np.asarray(masks.class_names, dtype=str)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        return [path]
    if fmt == "png":
        paths = []
        for i, mask in enumerate(masks.masks):
            paths.append(write_image(root / f"{stem}_{i:03d}.png", mask))
        meta["files"] = [p.name for p in paths]
        return [*paths, dump(root / f"{stem}.json", meta)]
    if fmt == "coco":
        return [dump(root / f"{stem}.json", masks.to_coco_dataset(file_name=f"{stem}", image_id=image_id))]
    if fmt == "rle":
        meta["rles"] = masks.to_rle()
        return [dump(root / f"{stem}.rle.json", meta)]
    meta["polygons"] = [
        [{"points": r["points"].tolist(), "hole": r["hole"]} for r in rings] for rings in masks.to_polygons()
    ]
    return [dump(root / f"{stem}.polygons.json", meta)]


def load_masks(cls: Any, path: Any, stem: str | None = None) -> Any:
    """Read masks of class ``cls`` from ``path``; see :meth:`Masks.load`."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        if stem is not None:  # exactly the names save() gives, not a pattern
            names = (f"{stem}.npz", f"{stem}.json", f"{stem}.rle.json", f"{stem}.polygons.json")
            candidates = [p / name for name in names if (p / name).is_file()]
        else:
            candidates = sorted(p.glob("*.npz")) + sorted(p.glob("*.json"))
        if not candidates:
            raise InputError(f"{p}: no saved masks{'' if stem is None else f' named {stem!r}'} (.npz or .json) "
                             f"found; pass the file written by Masks.save.")
        p = candidates[0]
    if not p.is_file():
        raise InputError(f"{p}: no such file; pass a path written by Masks.save().")
    try:
        return load_file(cls, p)
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(
            f"{p}: not a masks file this version can read ({type(exc).__name__}: {exc}); pass a file written "
            f"by Masks.save() or a COCO JSON of one image."
        ) from exc


def load_file(cls: Any, p) -> Any:
    import json

    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as data:
            width = int(data["width"])
            dense = np.unpackbits(data["masks"], axis=-1, count=width).astype(bool)
            fields = {k[6:]: data[k] for k in data.files if k.startswith("field_")}
            return cls(dense, scores=data["scores"], boxes=data["boxes"], areas=data["areas"],
                       labels=data["labels"] if "labels" in data.files else None,
                       class_names=data["class_names"].tolist() if "class_names" in data.files else None,
                       **fields)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable JSON file ({exc}).") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{p}: holds a JSON {type(doc).__name__}, not masks; pass a file written by Masks.save().")
    if "annotations" in doc and "images" in doc:
        return from_coco(cls, doc, p)
    if doc.get("imseg_masks") != 1:
        raise InputError(f"{p}: not a file written by Masks.save (no 'imseg_masks' key) nor a COCO JSON.")
    size = tuple(doc["image_size"])
    common = dict(scores=doc["scores"], boxes=doc["boxes"], areas=doc["areas"], labels=doc["labels"],
                  class_names=doc["class_names"], image_size=size,
                  **{k: np.asarray(v) for k, v in doc["fields"].items()})
    if "rles" in doc:
        return cls(rles=doc["rles"], **common)
    if "polygons" in doc:
        dense = [cls.polygons_to_mask(rings, size) for rings in doc["polygons"]]
        return cls(np.stack(dense) if dense else np.zeros((0, *size), bool), **common)
    if "files" in doc:
        from ..io import read_image

        dense = [read_image(p.parent / f)[..., 0] > 127 for f in doc["files"]]
        return cls(np.stack(dense) if dense else np.zeros((0, *size), bool), **common)
    raise InputError(f"{p}: saved masks have no 'rles', 'polygons' or 'files' entry.")


def from_coco(cls: Any, doc: dict, where: Any) -> Any:
    from pycocotools import mask as mask_utils

    images = doc["images"]
    if len(images) != 1:
        raise InputError(f"{where}: COCO file has {len(images)} images; Masks.load reads one image's masks.")
    h, w = int(images[0]["height"]), int(images[0]["width"])
    anns = doc["annotations"]
    rles = []
    for ann in anns:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):
            seg = mask_utils.frPyObjects(seg, h, w)
        rles.append(seg)
    cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
    labels = [a.get("category_id", 1) for a in anns]
    names = None
    if cats and all(isinstance(k, int) and k >= 0 for k in cats):
        names = [cats.get(i, f"class_{i}") for i in range(max(cats) + 1)]
    skip = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "score", "iscrowd"}
    extra_keys = [k for k in (anns[0] if anns else {}) if k not in skip and all(k in a for a in anns)]
    return cls(
        rles=rles, image_size=(h, w), scores=[a.get("score", 1.0) for a in anns], labels=labels or None,
        class_names=names, **{k: np.asarray([a[k] for a in anns]) for k in extra_keys},
    )
