"""Torch side of the fine-tuning data: an image resized as SAM sees it, its object masks, or a cached embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import FtSample

__all__ = ["FinetuneDataset", "collate", "resize_masks"]


def resize_masks(masks: np.ndarray, input_size: tuple[int, int], size: int) -> torch.Tensor:
    """(K, H, W) bool -> (K, size, size) float at SAM's input geometry (resized to ``input_size``, zero-padded)."""
    t = torch.from_numpy(masks.astype(np.float32))[None]
    t = F.interpolate(t, input_size, mode="bilinear", align_corners=False)[0]
    t = (t > 0.5).float()
    return F.pad(t, (0, size - input_size[1], 0, size - input_size[0]))


class FinetuneDataset(torch.utils.data.Dataset):
    """Item: ``{"index", "key", "masks" (K, S, S) float at the input geometry, "input_size", "original_size",
    and "embedding" (C, g, g) from ``cache`` or "image" (3, h, w) float 0..255 resized (not padded)}``.

    ``full_masks``: also return the original-size masks (validation). ``flip``: random horizontal flips (only
    without a cache: a cached embedding is of the unflipped image)."""

    def __init__(self, samples: list[FtSample], imgsz: int, cache: Any = None, *, full_masks: bool = False,
                 flip: bool = False, seed: int = 0) -> None:
        from ..sam.transforms import ResizeLongestSide

        self.samples, self.imgsz, self.cache = samples, imgsz, cache
        self.full_masks, self.flip, self.seed = full_masks, flip and cache is None, seed
        self.transform = ResizeLongestSide(imgsz)
        self.epoch = 0
        self._masks: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def input_shape(self, original: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the resized image inside the ``imgsz`` square (SAM: longest side, the rest padded)."""
        return self.transform.get_preprocess_shape(original[0], original[1], self.imgsz)

    def image_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """(3, h, w) float 0..255, resized as SAM's ``preprocess`` expects it."""
        return torch.from_numpy(np.array(self.transform.apply_image(rgb))).permute(2, 0, 1).float()

    def _object_masks(self, i: int, original: tuple[int, int]) -> tuple[np.ndarray, torch.Tensor]:
        if i not in self._masks:
            full = self.samples[i].masks()
            h, w = self.input_shape(original)
            small = resize_masks(full, (h, w), self.imgsz) if len(full) else torch.zeros(0, self.imgsz, self.imgsz)
            self._masks[i] = (full if self.full_masks else np.zeros((0, 0, 0), bool), small)
        return self._masks[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        from ..io import read_image
        from .cache import file_key

        sample = self.samples[i]
        key = file_key(sample.image)
        entry = self.cache.get(key) if self.cache is not None else None
        item: dict[str, Any] = {"index": i, "key": key}
        if entry is not None:
            item.update({k: entry[k] for k in ("embedding", "high_res_feats", "input_size", "original_size")
                         if k in entry})
        else:
            rgb = read_image(sample.image)
            image = self.image_tensor(rgb)
            item.update(image=image, input_size=tuple(image.shape[1:]), original_size=tuple(rgb.shape[:2]))
        full, small = self._object_masks(i, item["original_size"])
        if full.size and full.shape[1:] != tuple(item["original_size"]):
            from ..errors import DatasetError

            raise DatasetError(f"{sample.image}: image is {item['original_size'][1]}x{item['original_size'][0]} but "
                               f"its masks are {full.shape[2]}x{full.shape[1]} (WxH); fix the annotation.")
        item["masks"], item["full_masks"] = small, full
        if self.flip and "image" in item and np.random.default_rng((self.seed, self.epoch, i)).random() < 0.5:
            w = item["input_size"][1]
            item["image"] = item["image"].flip(-1)
            flipped = item["masks"][..., :w].flip(-1)
            item["masks"] = F.pad(flipped, (0, self.imgsz - w))
        return item


def collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Images differ in size and object count: the batch stays a list of items."""
    return batch
