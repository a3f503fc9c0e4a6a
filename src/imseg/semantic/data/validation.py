"""Checking a whole dataset before training: every pair decoded, one error listing every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ...errors import DatasetError, ImsegError, describe_files
from ...io import read_image
from .check_cache import CheckCache, sample_key
from .common import LOSSY_MASK_ADVICE, LOSSY_MASK_SUFFIXES, Sample
from .config import DataConfig, load_data_config
from .folder import _present_values
from .masks import read_mask


def _check_sample(sample: Sample, num_classes: int, ignore_index: int) -> tuple[str, str, np.ndarray | None]:
    """('' | problem kind, message, per-class pixel counts): the image and its labels decoded in full, as
    training will read them (a header can be intact over a truncated body)."""
    if not sample.image.is_file():
        return "unreadable", f"{sample.image}: image file is missing", None
    try:
        size = read_image(sample.image).shape[:2]
    except ImsegError as exc:  # e.g. a truncated body: the decoder's reason, without the path said twice
        detail = str(exc).removeprefix(f"{sample.image}: ")
        return "unreadable", f"{sample.image}: cannot read image ({detail})", None
    try:
        mask = read_mask(sample, ignore_index)
    except DatasetError as exc:
        return "unreadable", str(exc), None
    label_source = sample.mask or sample.annotation
    if mask.shape != size:
        return ("size", f"{sample.image} is {size[1]}x{size[0]} but its mask {label_source} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH)", None)
    values = _present_values(mask)
    bad = values[((values >= num_classes) | (values < 0)) & (values != ignore_index)]
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        return "values", f"{label_source}: values {shown} are not class ids 0..{num_classes - 1} or {ignore_index}", None
    flat = mask.ravel()
    counts = np.bincount(flat[flat != ignore_index].astype(np.int64), minlength=num_classes)[:num_classes]
    return "", "", counts


def _check_samples(cfg: DataConfig, samples: list[Sample]) -> list[tuple[str, str, np.ndarray | None]]:
    """:func:`_check_sample` of each sample, in order: decoded in threads (the decoders release the GIL) with a
    progress bar, except the pairs the cache has seen clean with the same files and settings."""
    from tqdm import tqdm

    cache = CheckCache(cfg.path)

    def check(sample: Sample) -> tuple[str, str, np.ndarray | None]:
        key = sample_key(sample, cfg.num_classes, cfg.ignore_index)
        counts = cache.get(key)
        if counts is not None and len(counts) == cfg.num_classes:
            return "", "", np.asarray(counts, np.int64)
        kind, message, found = _check_sample(sample, cfg.num_classes, cfg.ignore_index)
        if not kind and found is not None:
            cache.put(key, [int(c) for c in found])
        return kind, message, found

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        bar = tqdm(pool.map(check, samples), total=len(samples), desc="checking dataset", unit="pair", leave=False,
                   disable=None)  # None: no bar when stderr is not a terminal
        results = list(bar)
    cache.save()
    return results


_PROBLEM_TITLES = {
    "pairing": "missing image/mask pairs",
    "unreadable": "unreadable or missing files",
    "size": "image/mask size mismatch (masks are never resized; fix or remove these pairs)",
    "values": "unknown class values (check names / num_classes, or set ignore_index)",
    "annotations": "malformed annotations (left out until fixed)",
    "lossy": f"lossy masks ({LOSSY_MASK_ADVICE})",
    "overlap": "images in more than one split (a leak between training and evaluation)",
    "empty": "empty splits",
}


def validate_dataset(config: DataConfig | str | os.PathLike | Mapping[str, Any], max_report: int = 10) -> dict[str, Any]:
    """Check every pair before training; raise one :class:`DatasetError` listing all problems.

    Checks: unpaired images/masks, unreadable files, image/mask size mismatch, class values
    outside 0..num_classes-1 (other than ignore_index), empty splits, masks that are all background.
    Returns ``{"counts": {split: n}, "class_pixels": {split: list[int] (num_classes)}}``.
    """
    cfg = load_data_config(config)
    problems: dict[str, list[str]] = {k: list(v) for k, v in cfg.problems.items()}
    if "train" not in cfg.declared:
        problems.setdefault("empty", []).append("no train split was found or declared")
    class_pixels: dict[str, np.ndarray] = {}
    reported = {message for items in problems.values() for message in items}
    every = [(split, sample) for split, samples in cfg.splits.items() for sample in samples]
    results = _check_samples(cfg, [sample for _, sample in every])
    for split, samples in cfg.splits.items():
        if not samples:
            problems.setdefault("empty", []).append(f"split '{split}' has no samples")
            continue
        class_pixels[split] = np.zeros(cfg.num_classes, np.int64)
    for (split, sample), (kind, message, counts) in zip(every, results, strict=True):
        if kind == "values" and sample.mask is not None and sample.mask.suffix.lower() in LOSSY_MASK_SUFFIXES:
            continue  # listed as a lossy mask: its stray values are JPEG artefacts
        if kind:
            if message not in reported:  # e.g. a malformed COCO entry already listed by load_data_config
                problems.setdefault(kind, []).append(message)
                reported.add(message)
        elif counts is not None:
            class_pixels[split] += counts
    if problems:
        total = sum(len(v) for v in problems.values())
        parts = [f"dataset at {cfg.path} has {total} problem(s):"]
        for kind, items in problems.items():
            parts.append(f"{_PROBLEM_TITLES.get(kind, kind)} ({len(items)}):\n{describe_files(items, max_report)}")
        raise DatasetError("\n".join(parts))
    train_pixels = class_pixels.get("train")
    if train_pixels is not None and cfg.num_classes > 1 and train_pixels[1:].sum() == 0:
        hint = ("" if cfg.num_classes == 2 else " If the masks are 0/255 (255 = foreground), declare 2 classes "
                "(names: [background, foreground]) so 255 is read as class 1.")
        raise DatasetError(
            f"dataset at {cfg.path}: every training mask is background (class 0) or ignore ({cfg.ignore_index}); "
            f"nothing to learn.{hint}"
        )
    return {"counts": {k: len(v) for k, v in cfg.splits.items()},
            "class_pixels": {k: v.tolist() for k, v in class_pixels.items()}}
