"""The dataset config (YAML | directory | dict) resolved to a :class:`DataConfig`: format, names, splits."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ...errors import ConfigError, DatasetError, describe_files
from .coco import _coco_files, _coco_names, _coco_samples, _is_coco_file
from .common import (
    BACKGROUND_NAMES,
    FORMATS,
    IGNORE_LABEL,
    LOSSY_MASK_ADVICE,
    LOSSY_MASK_SUFFIXES,
    SPLITS,
    Sample,
    _attach_classes,
    _label_classes,
    _names_file,
)
from .folder import _by_dir_folder, _folder_pool, _infer_names, _is_binary_255, _pairs_layout
from .labelme import _labelme_files, _labelme_samples, _load_labelme
from .splits import _overlap_problems, _ratio_setting, _resolve_splits, _seed_setting
from .voc import VOC_NAMES, _voc_root, _voc_splits

CONFIG_KEYS = ("path", "train", "val", "test", "names", "nc", "ignore_index", "format", "split", "val_ratio",
               "test_ratio", "seed", "binary", "num_classes", "counts")


@dataclass
class DataConfig:
    """A resolved dataset: class names, ignore value, format and the samples of each split."""

    names: list[str]
    ignore_index: int = 255
    format: str = "folder"
    path: Path | None = None
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    declared: tuple[str, ...] = ("train", "val")
    problems: dict[str, list[str]] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def splits(self) -> dict[str, list[Sample]]:
        """Declared splits (train first) -> samples; a declared split may be empty (validation refuses it)."""
        return {name: getattr(self, name) for name in SPLITS if name in self.declared}

    def to_dict(self) -> dict[str, Any]:
        """Plain settings for ``config.yaml``; ``load_data_config(cfg.to_dict())`` gives the same samples."""
        out: dict[str, Any] = {k: v for k, v in self.spec.items() if k not in ("names", "nc", "counts", "num_classes")}
        out.update(
            path=str(self.path) if self.path is not None else None,
            format=self.format,
            names=list(self.names),
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            counts={name: len(samples) for name, samples in self.splits.items()},
        )
        return out


def _class_count_setting(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{key} must be a positive number of classes; got {value!r}.")
    return int(value)


def _parse_names(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"names as a mapping must be {{id: name}} with integer ids; got keys {list(raw)}.") from exc
        if keys != list(range(len(keys))):
            raise ConfigError(f"names ids must be 0..K-1 without gaps; got {keys}.")
        lookup = {int(k): v for k, v in raw.items()}
        return [str(lookup[i]) for i in keys]
    if isinstance(raw, (list, tuple)) and raw:
        return [str(v) for v in raw]
    raise ConfigError(f"names must be a non-empty list or an {{id: name}} mapping; got {raw!r}.")


def _detect_format(root: Path, spec: Mapping[str, Any]) -> str:
    for key in SPLITS:
        value = spec.get(key)
        if isinstance(value, str) and value.lower().endswith(".json") and _is_coco_file(root / value):
            return "coco"
    if _voc_root(root) is not None:
        return "voc"
    if _pairs_layout(root) is not None or any(_pairs_layout(root / s) for s in SPLITS if (root / s).is_dir()):
        return "folder"
    if _coco_files(root):
        return "coco"
    if _labelme_files(root):
        return "labelme"
    for key in SPLITS:
        value = spec.get(key)
        if isinstance(value, str) and (root / value).is_dir() and _pairs_layout(root / value):
            return "folder"
    raise ConfigError(
        f"{root}: cannot recognise the dataset layout. Expected images/ + masks/ folders (optionally in "
        f"train/ val/ test/), Pascal VOC (JPEGImages/ + SegmentationClass/), a COCO annotations .json or "
        f"labelme .json files; or set 'format' and the split folders in a dataset YAML."
    )


def _check_setting_types(spec: Mapping[str, Any]) -> None:
    """ConfigError naming the key for values of the wrong type (before any of them is used)."""
    path = spec.get("path")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path must be the dataset folder as a string (relative to the dataset YAML); got {path!r}.")
    for key in SPLITS:
        value = spec.get(key)
        if value is not None and not isinstance(value, (str, os.PathLike, list, tuple)):
            raise ConfigError(f"{key} must be a folder, a list file (.txt/.json/.yaml), a COCO .json or a list of image "
                              f"stems; got {value!r}.")
    binary = spec.get("binary")
    if binary is not None and not isinstance(binary, bool):
        raise ConfigError(f"binary must be true or false (a YAML boolean, not a string); got {binary!r}.")
    fmt = spec.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    _ratio_setting(spec, "val_ratio", 0.2)
    _ratio_setting(spec, "test_ratio", 0.0)
    _seed_setting(spec)


class _Resolved(NamedTuple):
    """What a format's resolver found: samples per split and the problems to report."""

    root: Path
    names: list[str] | None
    splits: dict[str, list[Sample]]
    declared: tuple[str, ...]
    problems: list[str]  # pairing problems
    malformed: list[str]  # lossy masks (folder/voc) or malformed COCO entries


def _names_setting(spec: Mapping[str, Any]) -> list[str] | None:
    """Class names from ``names``, ``nc``/``num_classes`` and ``binary`` (checked against each other)."""
    names = _parse_names(spec.get("names"))
    counts = {key: _class_count_setting(spec, key) for key in ("nc", "num_classes")}
    if None not in counts.values() and counts["nc"] != counts["num_classes"]:
        raise ConfigError(f"nc is {counts['nc']} but num_classes is {counts['num_classes']}; give one of them.")
    for key, count in counts.items():
        if count is None:
            continue
        if names is not None and len(names) != count:
            raise ConfigError(f"{key} is {count} but names lists {len(names)} classes {names}; make them agree "
                              f"(or drop {key}).")
        names = names or [f"class{i}" for i in range(count)]
    if spec.get("binary") and names is not None and len(names) != 2:
        raise ConfigError(f"binary: true needs exactly 2 names; got {names}.")
    return names


def _resolve_label_images(fmt: str, root: Path, spec: dict[str, Any], names: list[str] | None,
                          ignore_index: int) -> _Resolved:
    """folder or voc: samples whose labels are mask images."""
    binary = bool(spec.get("binary", False))
    if fmt == "voc":
        voc = _voc_root(root)
        if voc is None:
            raise ConfigError(f"{root}: not a Pascal VOC folder (needs JPEGImages/ and SegmentationClass/).")
        root = voc
        splits, problems, declared = _voc_splits(voc, spec)
        names = names or _names_file(voc) or (list(VOC_NAMES) if not binary else None)
    else:
        pool, problems = _folder_pool(root)
        splits, found, declared = _resolve_splits(root, spec, pool, _by_dir_folder)
        problems += found
    everything = [s for samples in splits.values() for s in samples]
    lossy = sorted({s.mask for s in everything if s.mask is not None and s.mask.suffix.lower() in LOSSY_MASK_SUFFIXES})
    if lossy and names is None and _names_file(root) is None:  # their values cannot tell the classes
        raise DatasetError(f"{root}: {len(lossy)} mask(s) are JPEG files; {LOSSY_MASK_ADVICE}.\n"
                           + describe_files(lossy))
    malformed = [f"{path}: JPEG mask" for path in lossy]  # validate_dataset lists them with the other problems
    if names is None:
        names = _names_file(root) or _infer_names(everything, ignore_index, binary, root)
    splits = {k: [replace(s, format=fmt) for s in v] for k, v in splits.items()}
    return _Resolved(root, names, splits, declared, problems, malformed)


def _resolve_coco(root: Path, spec: dict[str, Any], names: list[str] | None) -> _Resolved:
    """coco: one instance JSON split by the config, or one JSON per split."""
    problems: list[str] = []
    malformed: list[str] = []
    json_by_split = {k: (root / str(spec[k])).resolve() for k in SPLITS if isinstance(spec.get(k), str)
                     and str(spec[k]).lower().endswith(".json") and _is_coco_file(root / str(spec[k]))}
    if json_by_split:
        splits: dict[str, list[Sample]] = {}
        for key, path in json_by_split.items():
            splits[key], found, bad = _coco_samples(path, root)
            problems += found
            malformed += [m for m in bad if m not in malformed]  # one file may serve two splits
        rest = {k: v for k, v in spec.items() if k not in SPLITS}
        splits, found, declared = _resolve_splits(root, rest, None, _by_dir_folder, defaults=splits)
        problems += found
        spec.update({k: rest[k] for k in ("val_ratio", "test_ratio", "seed") if k in rest})
        json_paths = list(json_by_split.values())
    else:
        json_paths = _coco_files(root)
        if not json_paths:
            raise ConfigError(f"{root}: no COCO annotations .json found (looked in {root} and {root / 'annotations'}).")
        if len(json_paths) > 1:
            by_name = {k: [p for p in json_paths if k in p.stem.lower()] for k in SPLITS}
            if all(len(v) <= 1 for v in by_name.values()) and by_name["train"]:
                for key, paths in by_name.items():
                    if paths:
                        spec[key] = str(paths[0].relative_to(root))
                return _resolve_coco(root, spec, names)
            raise ConfigError(f"{root}: several COCO files found ({[p.name for p in json_paths]}); set train/val to them.")
        pool, problems, malformed = _coco_samples(json_paths[0], root)
        splits, found, declared = _resolve_splits(root, spec, pool, _by_dir_folder)
        problems += found
    names = names or _coco_names(json_paths)
    return _Resolved(root, names, _attach_classes(splits, _label_classes(names)), declared, problems, malformed)


def _resolve_labelme(root: Path, spec: dict[str, Any], names: list[str] | None) -> _Resolved:
    """labelme: one JSON per image; names from the config, a names file, or the labels found."""
    pool, problems = _labelme_samples(root)
    splits, found, declared = _resolve_splits(root, spec, pool, lambda d: _labelme_samples(d))
    problems += found
    if names is None:
        names = _names_file(root)
    if names is None:
        labels: set[str] = set()
        for sample in pool:
            labels |= {str(s.get("label")) for s in _load_labelme(sample.annotation)["shapes"]}  # type: ignore[arg-type]
        labels -= {IGNORE_LABEL, *BACKGROUND_NAMES}
        names = ["background", *sorted(labels)]
    return _Resolved(root, names, _attach_classes(splits, _label_classes(names)), declared, problems, [])


def _from_mapping(raw: Mapping[str, Any], base: Path) -> DataConfig:
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown dataset config key(s) {unknown}; valid keys: {', '.join(CONFIG_KEYS)}.")
    spec = dict(raw)
    _check_setting_types(spec)
    root = Path(spec.get("path") or base).expanduser()
    root = (base / root).resolve() if not root.is_absolute() else root
    if not root.is_dir():
        raise ConfigError(f"dataset path {root} does not exist or is not a folder; check 'path' in the dataset config.")
    ignore_index = spec.get("ignore_index", 255)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
        raise ConfigError(f"ignore_index must be a non-negative integer (usually 255); got {ignore_index!r}.")
    names = _names_setting(spec)
    fmt = spec.get("format") or _detect_format(root, spec)
    if fmt not in FORMATS:
        raise ConfigError(f"format '{fmt}' is not supported; use one of {', '.join(FORMATS)}.")
    if fmt in ("folder", "voc"):
        found = _resolve_label_images(fmt, root, spec, names, ignore_index)
    elif fmt == "coco":
        found = _resolve_coco(root, spec, names)
    else:
        found = _resolve_labelme(root, spec, names)
    root, names, splits = found.root, found.names, found.splits
    if spec.get("binary") and names is None:
        names = ["background", "foreground"]
    assert names is not None
    if ignore_index < len(names):  # every format: a class id equal to the ignore value would never be learnt
        raise ConfigError(
            f"ignore_index {ignore_index} collides with class ids 0..{len(names) - 1} ({names[ignore_index]!r}); "
            f"pick a value outside them (e.g. 255)."
        )
    if fmt in ("folder", "voc") and len(names) == 2 and _is_binary_255([s for v in splits.values() for s in v]):
        splits = {k: [replace(s, binary_255=True) for s in v] for k, v in splits.items()}
    spec.update(format=fmt, ignore_index=ignore_index)
    spec.pop("path", None)
    kinds = {"pairing": found.problems, "lossy" if fmt in ("folder", "voc") else "annotations": found.malformed,
             "overlap": _overlap_problems(splits)}
    return DataConfig(
        names=names, ignore_index=ignore_index, format=fmt, path=root,
        train=splits.get("train", []), val=splits.get("val", []), test=splits.get("test", []),
        declared=found.declared, problems={kind: items for kind, items in kinds.items() if items}, spec=spec,
    )


def load_data_config(source: str | os.PathLike | Mapping[str, Any] | DataConfig) -> DataConfig:
    """Resolve a dataset YAML path, a dataset directory (format auto-detected) or a dict.

    Keys: ``path`` (root, relative to the YAML), ``train``/``val``/``test`` (folder, list file,
    COCO .json or list of stems), ``names`` (list or {id: name}), ``ignore_index`` (255),
    ``format`` (folder|voc|coco|labelme), ``split`` (file of lists, or ratios), ``val_ratio``,
    ``test_ratio``, ``seed``, ``binary``.
    """
    if isinstance(source, DataConfig):
        return source
    if isinstance(source, Mapping):
        return _from_mapping(source, Path.cwd())
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("data.yaml", "dataset.yaml"):
            if (path / name).is_file():
                return load_data_config(path / name)
        return _from_mapping({"path": str(path.resolve())}, path.resolve())
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"dataset YAML {path} does not exist; check the path.")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc}).") from exc
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: a dataset YAML must be a mapping with keys like path, train, val, names.")
        return _from_mapping(raw, path.resolve().parent)
    raise ConfigError(f"{path}: not a dataset YAML (.yaml) or a dataset folder; check the path.")
