"""Data loading speed: imseg's SegmentationDataset vs a plain torchvision v2 pipeline, one process.

Both decode the same Weizmann horse JPEG/PNG pairs, apply scale jitter + crop + flip + colour
jitter to ``imgsz``, and return a normalised float image and an int64 mask; single thread, no
workers, so the figure is per-core samples/s. The plain pipeline is what one would write by hand
(PIL decode, ``v2.RandomResizedCrop``); imseg adds validation-free pair lookup, letterbox-relative
scale jitter and ignore-filled padding.

    .venv/bin/python benchmarks/data_loading.py [--imgsz 256] [--n 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _data import data_dir
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from imseg.semantic.data import SegmentationDataset, load_data_config
from imseg.semantic.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

DATA = data_dir() / "weizmann-horse"


def plain_pipeline(imgsz: int):
    tf = v2.Compose([
        v2.RandomResizedCrop(imgsz, scale=(0.25, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.2, 0.2, 0.2),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
    ])

    def load(image_path: Path, mask_path: Path):
        image = tv_tensors.Image(torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(mask_path))))
        return tf(image, mask)

    return load


def best_rate(fn, n: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        rates.append(n / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_data_config(DATA)
    samples = cfg.train[: args.n]
    torch.manual_seed(0)
    plain = plain_pipeline(args.imgsz)
    ours = SegmentationDataset(samples, build_transforms(args.imgsz, "default", train=True), num_classes=2)
    heavy = SegmentationDataset(samples, build_transforms(
        args.imgsz, {"rotate": 15, "elastic": 0.5, "clahe": 0.5, "blur": 0.5}, train=True), num_classes=2)
    for fn in (lambda i: plain(samples[i].image, samples[i].mask), lambda i: ours[i], lambda i: heavy[i]):
        fn(0)  # warm-up
    r_plain = best_rate(lambda i: plain(samples[i].image, samples[i].mask), len(samples))
    r_ours = best_rate(lambda i: ours[i], len(samples))
    r_heavy = best_rate(lambda i: heavy[i], len(samples))
    print(f"imgsz {args.imgsz}, {len(samples)} horse pairs (~300x220 px), 1 thread, samples/s (best of 3):")
    print(f"  plain torchvision v2 pipeline        {r_plain:8.1f}")
    print(f"  imseg default augment                {r_ours:8.1f}   ratio imseg/plain = {r_ours / r_plain:.2f}")
    print(f"  imseg + rotate/elastic/CLAHE/blur    {r_heavy:8.1f}")


if __name__ == "__main__":
    main()
