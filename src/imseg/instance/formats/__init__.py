"""Instance-segmentation annotation formats: one module per format, a reader and (where it makes sense) a writer.

``detect_format(path)`` decides by parsing what is there (JSON keys, folder layout, label lines), not by
the file extension alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError, DatasetError
from .coco import is_coco, read_coco, write_coco
from .label_images import LABEL_FOLDERS, is_dsb, read_dsb, read_label_images
from .label_studio import is_label_studio, read_label_studio
from .labelme import is_labelme, read_labelme, write_labelme
from .voc import is_voc, read_voc, write_voc
from .yolo import read_yolo, write_yolo

READERS = {
    "coco": read_coco,
    "labelme": read_labelme,
    "yolo": read_yolo,
    "voc": read_voc,
    "dsb": read_dsb,
    "label-images": read_label_images,
    "label-studio": read_label_studio,
}
WRITERS = {"coco": write_coco, "labelme": write_labelme, "yolo": write_yolo, "png": write_voc}

__all__ = ["READERS", "WRITERS", "detect_format", "read_dataset"]


def _json_kind(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if is_coco(doc):
        return "coco"
    return "labelme" if is_labelme(doc) else "label-studio" if is_label_studio(doc) else None


def _is_yolo_label(path: Path) -> bool:
    """A text file whose first non-empty line is an integer class followed by an even count of numbers."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        values = lines[0].split() if lines else []
        return len(values) >= 7 and float(values[0]).is_integer() and len(values) % 2 == 1 and all(float(v) >= -1 for v in values)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _folder_kinds(root: Path) -> list[str]:
    kinds = []
    if is_voc(root):
        kinds.append("voc")
    jsons = sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
    json_kinds = {_json_kind(p) for p in jsons[:20]} - {None}
    kinds += sorted(json_kinds)
    txts = sorted((root / "labels").rglob("*.txt"))[:5] if (root / "labels").is_dir() else sorted(root.glob("*.txt"))[:5]
    if txts and any(_is_yolo_label(p) for p in txts) or (root / "data.yaml").is_file():
        kinds.append("yolo")
    elif (root / "images").is_dir() and any((root / n).is_dir() for n in LABEL_FOLDERS):
        kinds.append("label-images")
    if not kinds and is_dsb(root):
        kinds.append("dsb")
    return kinds


def detect_format(path: str | Path) -> str:
    """The reader name for ``path`` (a COCO/labelme JSON, a data.yaml, or a data set folder)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder.")
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        kind = _json_kind(path)
        if kind is None:
            raise DatasetError(f"{path}: not a COCO, labelme or Label Studio file (checked its JSON keys).")
        return kind
    kinds = _folder_kinds(path)
    if len(kinds) == 1:
        return kinds[0]
    if not kinds:
        raise DatasetError(
            f"{path}: no instance annotations recognised (COCO or labelme JSON, YOLO-seg labels/, VOC "
            f"SegmentationObject/, labels/ + images/, DSB ID/images + ID/masks). Name the format with src_format=."
        )
    raise ConfigError(f"{path}: holds several formats ({', '.join(kinds)}); name one with src_format= (CLI: --from).")


def read_dataset(path: str | Path, src_format: str | None = None, **options):
    """Read ``path`` with the reader for ``src_format`` (detected when None). A folder given for COCO or
    Label Studio means its single JSON file of that kind."""
    fmt = src_format or detect_format(path)
    if fmt not in READERS:
        raise ConfigError(f"unknown source format {fmt!r}; choose one of {', '.join(READERS)}.")
    path = Path(path)
    if fmt in ("coco", "label-studio") and path.is_dir():
        found = [p for p in sorted(path.glob("*.json")) + sorted(path.glob("annotations/*.json")) if _json_kind(p) == fmt]
        if len(found) != 1:
            raise ConfigError(
                f"{path}: {len(found)} {fmt} files found ({', '.join(map(str, found))}); pass the JSON file itself."
            )
        path = found[0]
    return fmt, READERS[fmt](path, **options)
