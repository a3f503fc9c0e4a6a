"""The torch ``Dataset`` of image/mask pairs and ``build_datasets`` (one per declared split)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ...errors import DatasetError
from ...io import read_image
from ..transforms import build_transforms, parse_augment
from .common import Sample
from .config import DataConfig, load_data_config
from .masks import read_mask
from .validation import validate_dataset

# ============================================================================ torch dataset
try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[misc,assignment]


class SegmentationDataset(_TorchDataset):
    """Image/mask pairs as tensors: ``[i] -> (float32 (3, H, W) normalised, int64 (H, W))``.

    Args:
        samples: the pairs (e.g. ``DataConfig.train``).
        transform: callable ``(rgb uint8 (H,W,3), mask (H,W)) -> (tensor, tensor)``, e.g. from
            :func:`~imseg.semantic.transforms.build_transforms`; None = normalise only.
        ignore_index: mask value that losses and metrics skip.
        num_classes: number of classes (informational; the 0/255 -> 0/1 reading of binary masks is
            decided per dataset by :func:`load_data_config` and carried by each ``Sample.binary_255``).
        seed: None draws augmentation randomness from torch's global RNG (seed it, and DataLoader
            workers, e.g. with ``lightning.seed_everything(seed, workers=True)``). An int makes
            sample ``i`` in epoch ``e`` use a generator seeded from ``(seed, e, i)``, independent of
            workers and order; call :meth:`set_epoch` each epoch.
        cache: keep decoded images and masks in memory after the first read (small datasets).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]] | None = None,
        ignore_index: int = 255,
        num_classes: int | None = None,
        seed: int | None = None,
        cache: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.ignore_index = int(ignore_index)
        self.num_classes = num_classes
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentations when ``seed`` is set (call before each epoch)."""
        self.epoch = int(epoch)

    def at_size(self, imgsz: int) -> SegmentationDataset | None:
        """The same samples, seed and epoch, each item made at ``imgsz``, k times this dataset's (from one seed,
        exactly the same view at k times the pixels: see ``SegmentationTransform.at_size``); decoded images are
        shared. None where the transform has no such twin."""
        transform = getattr(self.transform, "at_size", lambda size: None)(imgsz)
        if transform is None:
            return None
        twin = SegmentationDataset(self.samples, transform, self.ignore_index, self.num_classes, self.seed, self.cache)
        twin._cache, twin.epoch = self._cache, self.epoch
        return twin

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        rgb = read_image(sample.image)
        mask = read_mask(sample, self.ignore_index)
        if mask.shape != rgb.shape[:2]:
            raise DatasetError(
                f"{sample.image} is {rgb.shape[1]}x{rgb.shape[0]} but its mask {sample.mask or sample.annotation} is "
                f"{mask.shape[1]}x{mask.shape[0]}; masks are never resized: fix the pair (run validate_dataset)."
            )
        if self.cache:
            self._cache[index] = (rgb, mask)
        return rgb, mask

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed pair: (RGB uint8 (H, W, 3), mask int64 (H, W))."""
        rgb, mask = self._load(index)
        return rgb.copy(), mask.astype(np.int64)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import torch

        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"sample index {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        rgb, mask = self._load(index)
        transform = self.transform or _default_transform()
        if self.seed is None:
            return transform(rgb, mask)
        with torch.random.fork_rng(devices=[]):
            # CPU generator only (what the transforms use): torch.manual_seed also seeds CUDA/XPU/MTIA lazily,
            # formatting a stack trace each time (~2 ms per sample).
            seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            torch.default_generator.manual_seed(seed)
            return transform(rgb, mask)

    def __repr__(self) -> str:
        return f"SegmentationDataset({len(self)} samples, num_classes={self.num_classes}, transform={self.transform!r})"


@lru_cache(maxsize=1)
def _default_transform():
    return build_transforms(None, "none", train=False)


def eval_augment(augment: str | Mapping[str, Any] | None) -> str | dict[str, bool]:
    """The augmentation of the validation and test splits of a run trained with ``augment``: none (a letterbox),
    or, when training crops at native resolution (``native``), the native-mode eval transform (the centre crop):
    validation must see the pixel scale training sees, or the best checkpoint is chosen at the wrong one; whole
    images would match too, but mixed sizes do not batch."""
    return {"native": True} if parse_augment(augment)["native"] else "none"


def build_datasets(
    config: DataConfig | str | os.PathLike | Mapping[str, Any],
    imgsz: int | Sequence[int] | None = 512,
    augment: str | Mapping[str, Any] | None = "default",
    seed: int | None = 0,
    cache: bool = False,
    validate: bool = True,
) -> dict[str, SegmentationDataset]:
    """Validate the dataset and build one :class:`SegmentationDataset` per declared split.

    ``train`` gets ``augment`` (see :mod:`imseg.semantic.transforms`) with per-sample seeds from
    ``seed`` (call ``set_epoch``; None = global RNG); ``val``/``test`` get :func:`eval_augment`: they only
    letterbox to ``imgsz`` (None = native size), or take the centre ``imgsz`` crop at native resolution when
    ``augment`` trains on native-resolution crops.
    """
    cfg = load_data_config(config)
    if validate:
        validate_dataset(cfg)
    evaluate = eval_augment(augment)
    out: dict[str, SegmentationDataset] = {}
    for split, samples in cfg.splits.items():
        train = split == "train"
        transform = build_transforms(imgsz, augment if train else evaluate, train=train, ignore_index=cfg.ignore_index)
        out[split] = SegmentationDataset(
            samples, transform, ignore_index=cfg.ignore_index, num_classes=cfg.num_classes,
            seed=seed if train else None, cache=cache,
        )
    return out
