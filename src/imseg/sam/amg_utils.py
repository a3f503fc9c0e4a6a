"""Array helpers of the automatic mask generator: point grids, crop boxes, stability scores, boxes of masks,
and :class:`MaskRecords`, the candidates it carries from crop to crop (the official ``MaskData``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


# ----------------------------------------------------------------------------- grids and crops
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) XY points in [0, 1], cell centres of an n x n grid, row by row."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``n_per_side / downscale**i`` points per side."""
    return [build_point_grid(int(n_per_side / (downscale**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes (pixels) and their layer index: the full image, then 2^i x 2^i overlapping crops."""
    h, w = image_size
    boxes: list[list[int]] = [[0, 0, w, h]]
    layers = [0]
    short_side = min(h, w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
            layers.append(layer)
    return boxes, layers


# ----------------------------------------------------------------------------- small mask helpers
def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(N,) IoU between the masks at ``threshold + offset`` and ``threshold - offset``; logits (N, H, W)."""
    import torch

    # int32 counts (a mask has far fewer than 2**31 pixels): summing bools into int64 is markedly slower
    high = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int32)
    low = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int32)
    return torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(high, dtype=torch.float32)).float()


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY boxes with inclusive max corner (official SAM convention) of (N, H, W) bool masks.

    Empty masks get [0, 0, 0, 0].
    """
    import torch

    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.long, device=masks.device)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ys, -1).amax(1)
    y0 = torch.where(rows, ys, h).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def box_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0):
    """(N,) bool: boxes (XYXY, crop frame) within ``atol`` px of a crop edge that is not an image edge."""
    import torch

    offset = torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], device=boxes.device)
    boxes = (boxes + offset).float()
    crop = torch.tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.tensor(image_box, dtype=torch.float, device=boxes.device)
    near_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, image[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)

# ----------------------------------------------------------------------------- candidate records
@dataclass
class MaskRecords:
    """Mask candidates held together (the official ``MaskData``): ``rles`` (n pycocotools RLEs of full-image
    masks), ``boxes`` (n, 4) XYXY torch long (inclusive max corner), ``iou`` and ``stability`` (n,) torch float,
    ``points`` (n, 2) numpy XY px, ``crop_boxes`` (n, 4) numpy int64 XYXY px."""

    rles: list
    boxes: Any
    iou: Any
    stability: Any
    points: np.ndarray
    crop_boxes: np.ndarray

    @classmethod
    def empty(cls) -> MaskRecords:
        import torch

        return cls([], torch.zeros((0, 4), dtype=torch.long), torch.zeros(0), torch.zeros(0), np.zeros((0, 2)),
                   np.zeros((0, 4), np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def filter(self, keep: Any) -> MaskRecords:
        """The records at ``keep`` (a torch or numpy index array), in that order."""
        idx = keep.cpu().numpy() if hasattr(keep, "cpu") else np.asarray(keep)
        return MaskRecords([self.rles[i] for i in idx], self.boxes[keep], self.iou[keep], self.stability[keep],
                           self.points[idx], self.crop_boxes[idx])

    @classmethod
    def cat(cls, records: list[MaskRecords]) -> MaskRecords:
        """All ``records`` one after the other."""
        import torch

        records = [r for r in records if len(r)]
        if not records:
            return cls.empty()
        return cls([rle for r in records for rle in r.rles], torch.cat([r.boxes for r in records]),
                   torch.cat([r.iou for r in records]), torch.cat([r.stability for r in records]),
                   np.concatenate([r.points for r in records]), np.concatenate([r.crop_boxes for r in records]))
