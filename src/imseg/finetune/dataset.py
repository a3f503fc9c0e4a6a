"""Torch side of the fine-tuning data: an image resized as SAM sees it, its object masks, or a cached embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import FtSample

__all__ = ["FinetuneDataset", "collate", "jitter_colour", "resize_masks"]


def resize_masks(masks: np.ndarray, input_size: tuple[int, int], size: int) -> torch.Tensor:
    """(K, H, W) bool -> (K, size, size) float at SAM's input geometry (resized to ``input_size``, zero-padded)."""
    t = torch.from_numpy(masks.astype(np.float32))[None]
    t = F.interpolate(t, input_size, mode="bilinear", align_corners=False)[0]
    t = (t > 0.5).float()
    return F.pad(t, (0, size - input_size[1], 0, size - input_size[0]))


#: colour jitter of a training image without a cache: brightness, contrast and saturation factors drawn from
#: 1 +- this (photometric only, so the masks stay as they are)
COLOUR_JITTER = 0.2


def jitter_colour(rgb: np.ndarray, rng: np.random.Generator, amount: float = COLOUR_JITTER) -> np.ndarray:
    """(H, W, 3) uint8 with random brightness, contrast and saturation (factors in 1 +- ``amount``)."""
    x = rgb.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - amount, 1 + amount, size=3)
    x *= brightness
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray.mean()) * contrast + gray.mean()
    gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = gray + (x - gray) * saturation
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class FinetuneDataset(torch.utils.data.Dataset):
    """Item: ``{"index", "key", "masks" (K, S, S) float at the input geometry, "input_size", "original_size",
    and "embedding" (C, g, g) from ``cache`` or "image" (3, h, w) float 0..255 resized (not padded)}``.

    ``full_masks``: also return the original-size masks (validation). ``augment``: random horizontal flips, colour
    jitter (:func:`jitter_colour`) and a random shrink inside the input square (:data:`SHRINK`), only without a
    cache (a cached embedding is of the image as it is), each drawn from (seed, epoch, index)."""

    #: the image and its masks scaled by a factor in this range inside the padded square (objects seen smaller)
    SHRINK: tuple[float, float] | None = (0.75, 1.0)

    def __init__(self, samples: list[FtSample], imgsz: int, cache: Any = None, *, full_masks: bool = False,
                 augment: bool = False, seed: int = 0) -> None:
        from ..sam.transforms import ResizeLongestSide

        self.samples, self.imgsz, self.cache = samples, imgsz, cache
        self.full_masks, self.augment, self.seed = full_masks, augment and cache is None, seed
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
            original = tuple(rgb.shape[:2])
            if self.augment:
                rgb = jitter_colour(rgb, self._rng(i, 1))
            image = self.image_tensor(rgb)
            item.update(image=image, input_size=tuple(image.shape[1:]), original_size=original)
        full, small = self._object_masks(i, item["original_size"])
        if full.size and full.shape[1:] != tuple(item["original_size"]):
            from ..errors import DatasetError

            raise DatasetError(f"{sample.image}: image is {item['original_size'][1]}x{item['original_size'][0]} but "
                               f"its masks are {full.shape[2]}x{full.shape[1]} (WxH); fix the annotation.")
        item["masks"], item["full_masks"] = small, full
        if self.augment and "image" in item and self._rng(i).random() < 0.5:
            w = item["input_size"][1]
            item["image"] = item["image"].flip(-1)
            flipped = item["masks"][..., :w].flip(-1)
            item["masks"] = F.pad(flipped, (0, self.imgsz - w))
        if self.augment and "image" in item and self.SHRINK is not None:
            self._shrink(item, float(self._rng(i, 2).uniform(*self.SHRINK)))
        return item

    def _rng(self, i: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, i) + ((stream,) if stream else ()))

    def _shrink(self, item: dict[str, Any], factor: float) -> None:
        """Scale the (unpadded) image and its masks by ``factor``; the masks stay padded to the square."""
        h, w = item["input_size"]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        if size == (h, w):
            return
        item["image"] = F.interpolate(item["image"][None], size, mode="bilinear", align_corners=False,
                                      antialias=True)[0]
        masks = item["masks"][:, :h, :w]
        if len(masks):
            masks = (F.interpolate(masks[None], size, mode="bilinear", align_corners=False)[0] > 0.5).float()
        else:
            masks = masks.new_zeros((0, *size))
        item["masks"] = F.pad(masks, (0, self.imgsz - size[1], 0, self.imgsz - size[0]))
        item["input_size"] = size


def collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Images differ in size and object count: the batch stays a list of items."""
    return batch
