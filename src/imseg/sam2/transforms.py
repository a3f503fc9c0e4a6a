"""SAM 2 input and output transforms: square resize + ImageNet normalisation, prompt coordinates to the
1024x1024 model frame, low-res logits back to the image size (with optional small-region cleanup)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def preprocess(image: np.ndarray, resolution: int, device: torch.device) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, resolution, resolution); the aspect ratio is not kept
    (SAM 2 squashes the image to a square; coordinates are rescaled per axis)."""
    x = torch.as_tensor(np.ascontiguousarray(image), device=device).permute(2, 0, 1).float().div(255)
    x = F.interpolate(x[None], size=(resolution, resolution), mode="bilinear", align_corners=False,
                      antialias=True)[0]
    mean = torch.tensor(MEAN, device=device)[:, None, None]
    std = torch.tensor(STD, device=device)[:, None, None]
    return (x - mean) / std


def to_model_coords(coords: torch.Tensor, resolution: int, orig_hw: tuple[int, int] | None,
                    normalize: bool = True) -> torch.Tensor:
    """(..., 2) XY coordinates -> model-frame pixels. ``normalize``: coords are image pixels (divided by the
    image width/height first); otherwise they are already in [0, 1]."""
    if normalize:
        h, w = orig_hw  # type: ignore[misc]
        coords = coords.clone()
        coords[..., 0] = coords[..., 0] / w
        coords[..., 1] = coords[..., 1] / h
    return coords * resolution


def _small_regions(masks: torch.Tensor, threshold: float, max_area: float, holes: bool) -> torch.Tensor:
    """Bool (B, M, h, w): pixels of connected regions (8-connectivity) of at most ``max_area`` pixels among the
    holes (logit <= threshold) or the sprinkles (logit > threshold) of each mask."""
    from scipy import ndimage

    flat = masks.reshape(-1, *masks.shape[-2:]).cpu().numpy()
    small = np.zeros(flat.shape, bool)
    for i, logits in enumerate(flat):
        labels, n = ndimage.label(logits <= threshold if holes else logits > threshold, structure=np.ones((3, 3)))
        if n:
            areas = np.bincount(labels.ravel())
            areas[0] = max_area + 1  # background of the labelling
            small[i] = areas[labels] <= max_area
    return torch.as_tensor(small, device=masks.device).reshape(masks.shape)


def postprocess_masks(low_res: torch.Tensor, orig_hw: tuple[int, int], mask_threshold: float = 0.0,
                      max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0) -> torch.Tensor:
    """(B, M, 256, 256) logits -> (B, M, H, W) float32 logits at the image size. Small holes and sprinkles (both
    found on the input logits) are pushed 10 past the threshold first."""
    masks = original = low_res.float()
    if max_hole_area > 0:
        holes = _small_regions(original, mask_threshold, max_hole_area, holes=True)
        masks = torch.where(holes, mask_threshold + 10.0, masks)
    if max_sprinkle_area > 0:
        sprinkles = _small_regions(original, mask_threshold, max_sprinkle_area, holes=False)
        masks = torch.where(sprinkles, mask_threshold - 10.0, masks)
    return F.interpolate(masks, tuple(orig_hw), mode="bilinear", align_corners=False)
