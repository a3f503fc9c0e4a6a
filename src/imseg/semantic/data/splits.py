"""Splits: list files, stem selection, ratio splits and the order in which split settings are looked for."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...io import IMAGE_SUFFIXES
from .common import SPLITS, Sample, _is_number
from .folder import _pairs_layout


def _read_list(path: Path) -> list[str] | dict[str, list[str]]:
    """Stems from a .txt (one per line) or .json/.yaml (list, or {split: list})."""
    if not path.is_file():
        raise ConfigError(f"split list {path} does not exist; check the path (relative to the dataset 'path').")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc}).") from exc
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if isinstance(data, dict):
        return {str(k): [str(v) for v in vals] for k, vals in data.items()}
    if isinstance(data, list):
        return [str(v) for v in data]
    raise ConfigError(f"{path}: expected a list of file stems or a {{train: [...], val: [...]}} mapping.")


def _entry_stem(entry: str) -> str:
    name = entry.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and "." + suffix.lower() in IMAGE_SUFFIXES + (".json",) else name


def _select(pool: list[Sample], entries: Sequence[str], where: str) -> tuple[list[Sample], list[str]]:
    by_stem = {s.stem: s for s in pool}
    chosen, problems = [], []
    for entry in entries:
        sample = by_stem.get(_entry_stem(entry))
        if sample is None:
            problems.append(f"{entry}: listed in {where} but no image/label pair with that name was found")
        else:
            chosen.append(sample)
    return chosen, problems


def _ratio_split(pool: list[Sample], val_ratio: float, test_ratio: float, seed: int) -> dict[str, list[Sample]]:
    for name, ratio in (("val_ratio", val_ratio), ("test_ratio", test_ratio)):
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"{name} must be in [0, 1); got {ratio}.")
    if val_ratio + test_ratio >= 1.0:
        raise ConfigError(
            f"val_ratio + test_ratio must be < 1 (some images must remain for training); got {val_ratio + test_ratio}."
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    n_val = round(val_ratio * len(pool)) if val_ratio > 0 else 0
    n_test = round(test_ratio * len(pool)) if test_ratio > 0 else 0
    if len(pool) >= 3:
        n_val = max(n_val, 1 if val_ratio > 0 else 0)
        n_test = max(n_test, 1 if test_ratio > 0 else 0)
    shuffled = [pool[i] for i in order]
    out = {"val": sorted(shuffled[:n_val], key=lambda s: s.stem),
           "test": sorted(shuffled[n_val : n_val + n_test], key=lambda s: s.stem),
           "train": sorted(shuffled[n_val + n_test :], key=lambda s: s.stem)}
    return out


def _ratio_setting(spec: Mapping[str, Any], key: str, default: float) -> float:
    """``spec[key]`` as a fraction in [0, 1); ConfigError naming the key otherwise."""
    value = spec.get(key)
    if value is None:
        return default
    if not _is_number(value) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{key} must be a number in [0, 1) (the fraction of images to hold out, e.g. 0.2); "
                          f"got {value!r}.")
    return float(value)


def _seed_setting(spec: Mapping[str, Any]) -> int:
    value = spec.get("seed")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"seed must be an integer (e.g. 0); got {value!r}.")
    return int(value)


def _named_splits(root: Path, spec: dict[str, Any], pool: list[Sample] | None,
                  by_dir: Callable[[Path], tuple[list[Sample], list[str]]]) -> tuple[dict[str, list[Sample]], list[str]]:
    """The splits the config names with ``train``/``val``/``test`` (a list of stems, a folder or a list file)."""
    splits: dict[str, list[Sample]] = {}
    problems: list[str] = []
    for key in SPLITS:
        value = spec.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if pool is None:
                raise ConfigError(f"'{key}' as a list of stems needs a single image pool; give a folder instead.")
            splits[key], found = _select(pool, [str(v) for v in value], key)
            problems += found
            continue
        target = (root / str(value)).resolve()
        if target.is_dir():
            splits[key], found = by_dir(target)
            problems += found
        elif target.suffix.lower() in (".txt", ".json", ".yaml", ".yml"):
            if pool is None:
                raise ConfigError(f"'{key}: {value}' is a list file but this layout has no single image pool.")
            entries = _read_list(target)
            if isinstance(entries, dict):
                if key not in entries:
                    raise ConfigError(f"{target}: has no '{key}' list (found {sorted(entries)}).")
                entries = entries[key]
            splits[key], found = _select(pool, entries, f"{key} ({target.name})")
            problems += found
        else:
            raise ConfigError(f"'{key}: {value}': {target} is neither a folder nor a .txt/.json list; check the path.")
    return splits, problems


def _split_setting(root: Path, spec: dict[str, Any], pool: list[Sample] | None) -> tuple[dict[str, list[Sample]], list[str]]:
    """The ``split`` setting: a file of lists (the splits), or ratios (moved to ``val_ratio``/``test_ratio``)."""
    splits: dict[str, list[Sample]] = {}
    problems: list[str] = []
    split = spec["split"]
    if isinstance(split, str):
        lists = _read_list((root / split).resolve())
        if not isinstance(lists, dict):
            raise ConfigError(f"split file {split} must map split names to lists, e.g. {{train: [...], val: [...]}}.")
        assert pool is not None
        for key in SPLITS:
            if key in lists:
                splits[key], found = _select(pool, lists[key], f"{key} ({split})")
                problems += found
    elif isinstance(split, (Mapping, list, tuple)):
        ratios = dict(split) if isinstance(split, Mapping) else dict(zip(SPLITS, split, strict=False))
        unknown = sorted(str(k) for k in ratios if k not in SPLITS)
        if unknown:
            raise ConfigError(f"split ratios: unknown key(s) {unknown}; use train, val and test, e.g. "
                              f"{{train: 0.8, val: 0.2}}.")
        for key, value in ratios.items():
            if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"split.{key} must be a fraction in [0, 1] (e.g. split: {{train: 0.8, val: 0.2}}); "
                                  f"got {value!r}.")
        spec.setdefault("val_ratio", float(ratios.get("val", 0.0)))
        spec.setdefault("test_ratio", float(ratios.get("test", 0.0)))
    else:
        raise ConfigError(f"split must be a file of lists or ratios like {{train: 0.8, val: 0.2}}; got {split!r}.")
    return splits, problems


def _ratio_splits(splits: dict[str, list[Sample]], spec: dict[str, Any], pool: list[Sample] | None) -> None:
    """Without a declared ``val``: hold out ``val_ratio`` (and ``test_ratio``) of the undeclared images."""
    val_ratio = _ratio_setting(spec, "val_ratio", 0.2)
    test_ratio = _ratio_setting(spec, "test_ratio", 0.0) if "test" not in splits else 0.0
    base = splits.get("train", pool) or []
    if "train" not in splits:  # the pool minus the declared splits' samples (e.g. a declared test split)
        taken = {s.image for samples in splits.values() for s in samples}
        base = [s for s in base if s.image not in taken]
    seed = _seed_setting(spec)
    spec.update(val_ratio=val_ratio, seed=seed)
    if val_ratio > 0 or test_ratio > 0:
        parts = _ratio_split(base, val_ratio, test_ratio, seed)
        splits["train"] = parts["train"]
        if val_ratio > 0:
            splits["val"] = parts["val"]
        if test_ratio > 0:
            spec["test_ratio"] = test_ratio
            splits["test"] = parts["test"]
    else:
        splits.setdefault("train", list(base))


def _resolve_splits(
    root: Path, spec: dict[str, Any], pool: list[Sample] | None, by_dir: Callable[[Path], tuple[list[Sample], list[str]]],
    defaults: dict[str, list[Sample]] | None = None,
) -> tuple[dict[str, list[Sample]], list[str], tuple[str, ...]]:
    """Apply the config's split settings to a pool of samples. Returns (splits, problems, declared).

    Looked for in order: train/val/test settings, ``split``, ``defaults``, a ``split.json``, split subfolders;
    then a ratio split holds out ``val`` (and ``test``) when no ``val`` was declared.
    """
    splits, problems = _named_splits(root, spec, pool, by_dir)
    if not splits and spec.get("split") is not None:
        splits, found = _split_setting(root, spec, pool)
        problems += found
    if not splits and defaults:
        splits = dict(defaults)
    if not splits and pool is not None and (root / "split.json").is_file():
        lists = _read_list(root / "split.json")
        if isinstance(lists, dict):
            spec["split"] = "split.json"
            for key in SPLITS:
                if key in lists:
                    splits[key], found = _select(pool, lists[key], f"{key} (split.json)")
                    problems += found
    if not splits:
        for key in SPLITS:
            sub = root / key
            if sub.is_dir() and _pairs_layout(sub) is not None:
                splits[key], found = by_dir(sub)
                problems += found
    if not splits and pool is None:
        raise ConfigError(f"{root}: no split found; set train/val (folders or lists) in the dataset config.")
    if "val" not in splits and "val" not in spec:
        _ratio_splits(splits, spec, pool)
    return splits, problems, tuple(k for k in SPLITS if k in splits)


def _overlap_problems(splits: Mapping[str, Sequence[Sample]]) -> list[str]:
    """One problem per image that two declared splits share (a leak between train and val/test)."""
    problems, owner = [], {}
    for key in SPLITS:
        for sample in splits.get(key, []):
            first = owner.setdefault(sample.image, key)
            if first != key:
                problems.append(f"{sample.image}: in both the '{first}' and the '{key}' split; list each image in one "
                                f"split only")
    return problems
