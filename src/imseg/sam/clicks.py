"""Prompts simulated from ground-truth masks, as the official SAM 2 training and evaluation do.

- a box: the mask's bounding box with each corner jittered by up to ``noise`` x the box size
  (at most ``noise_bound`` px), returned as two corner points labelled 2 (top left) and 3 (bottom right);
- a point from the object's interior: a uniform pixel of the mask (the error region of an empty prediction);
- correction clicks: a pixel of the error region, positive (1) on a false negative and negative (0)
  on a false positive, drawn either uniformly over the error (``"uniform"``, training) or at the pixel
  farthest from the error region's boundary (``"center"``, evaluation; deterministic);
- the previous mask: the decoder's low-res logits of the previous step, fed back as the mask prompt
  together with the accumulated clicks (nothing to sample; see :func:`concat_points`).

Shapes: masks are [B, 1, H, W] booleans; points [B, K, 2] as (x, y) pixel coordinates (float);
labels [B, K] int32. Random samplers take an optional ``torch.Generator`` for reproducible draws.
"""

from __future__ import annotations

import numpy as np
import torch

from imseg.errors import ConfigError, InputError

#: Point labels: negative click, positive click, box top-left corner, box bottom-right corner.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 0, 1, 2, 3


def _check_masks(gt_masks: torch.Tensor, pred_masks: torch.Tensor | None) -> torch.Tensor:
    """Validate [B, 1, H, W] boolean masks; returns the prediction (all False when ``None``)."""
    if gt_masks.dtype != torch.bool or gt_masks.dim() != 4 or gt_masks.size(1) != 1:
        raise InputError(f"ground-truth masks must be a [B, 1, H, W] bool tensor, got {gt_masks.dtype} {tuple(gt_masks.shape)}")
    if pred_masks is None:
        return torch.zeros_like(gt_masks)
    if pred_masks.dtype != torch.bool or pred_masks.shape != gt_masks.shape:
        raise InputError(
            f"predicted masks must be a bool tensor shaped like the ground truth {tuple(gt_masks.shape)}, got "
            f"{pred_masks.dtype} {tuple(pred_masks.shape)}: threshold the logits (logits > 0) first"
        )
    return pred_masks


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] bool masks -> [B, 1, 4] int boxes (x0, y0, x1, y1), inclusive pixel corners.

    Raises :class:`InputError` naming the empty masks, which have no box.
    """
    empty = ~masks.flatten(1).any(-1)
    if bool(empty.any()):
        raise InputError(
            f"masks {empty.nonzero().flatten().tolist()} are empty and have no bounding box: "
            "drop objects without pixels before sampling box prompts"
        )
    rows = masks.any(-1)  # [B, 1, H]
    cols = masks.any(-2)  # [B, 1, W]
    y0, y1 = _first_last(rows)
    x0, x1 = _first_last(cols)
    return torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int32)


def _first_last(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and last True along the last axis (every row has one)."""
    index = torch.arange(occupied.shape[-1], device=occupied.device)
    size = occupied.shape[-1]
    first = torch.where(occupied, index, size).amin(-1)
    last = torch.where(occupied, index, -1).amax(-1)
    return first, last


def sample_box_points(
    masks: torch.Tensor,
    noise: float = 0.1,
    noise_bound: int = 20,
    top_left_label: int = BOX_TOP_LEFT,
    bottom_right_label: int = BOX_BOTTOM_RIGHT,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jittered bounding boxes of [B, 1, H, W] masks as corner points: ([B, 2, 2] float, [B, 2] int32).

    Each coordinate moves uniformly within +-min(noise x box side, noise_bound) px and is clamped to the
    image (0 .. W-1, 0 .. H-1). ``noise=0`` gives the exact box.
    """
    _check_masks(masks, None)
    batch, _, height, width = masks.shape
    boxes = mask_to_box(masks)[:, 0].float()  # [B, 4]
    if noise > 0:
        box_w = boxes[:, 2] - boxes[:, 0]
        box_h = boxes[:, 3] - boxes[:, 1]
        bound = torch.as_tensor(noise_bound, dtype=boxes.dtype, device=boxes.device)
        max_dx = torch.minimum(box_w * noise, bound)
        max_dy = torch.minimum(box_h * noise, bound)
        uniform = torch.rand(batch, 4, device=masks.device, generator=generator) * 2 - 1
        boxes = boxes + uniform * torch.stack([max_dx, max_dy, max_dx, max_dy], dim=-1)
        limits = torch.tensor([width - 1, height - 1] * 2, dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    labels = torch.tensor([top_left_label, bottom_right_label], dtype=torch.int32, device=masks.device)
    return boxes.reshape(batch, 2, 2), labels.repeat(batch, 1)


def _error_regions(gt_masks: torch.Tensor, pred_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """False positives (want a negative click) and false negatives (want a positive click)."""
    return pred_masks & ~gt_masks, gt_masks & ~pred_masks


def sample_random_points_from_errors(
    gt_masks: torch.Tensor,
    pred_masks: torch.Tensor | None,
    num_pt: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_pt`` independent clicks per mask, each uniform over its error region: ([B, K, 2], [B, K]).

    A click on a false negative is positive, on a false positive negative. Where the prediction is
    already exact the click is a negative one uniform over the background; a mask that is exact and
    covers the whole image gets a negative click at (0, 0), as in the official sampler.
    ``pred_masks=None`` (no prediction yet) samples positive clicks uniformly inside the object.
    """
    pred_masks = _check_masks(gt_masks, pred_masks)
    if num_pt < 0:
        raise ConfigError(f"num_pt must be >= 0, got {num_pt}")
    batch, _, _, width = gt_masks.shape
    false_pos, false_neg = _error_regions(gt_masks, pred_masks)
    exact = ~(false_pos | false_neg).flatten(1).any(-1)  # [B]
    candidates = (false_pos | false_neg).flatten(1)
    candidates = torch.where(exact[:, None], ~gt_masks.flatten(1), candidates)
    candidates[:, 0] |= ~candidates.any(-1)  # nothing to click: fall back to pixel (0, 0)
    if num_pt == 0:
        index = torch.zeros(batch, 0, dtype=torch.long, device=gt_masks.device)
    else:
        index = torch.multinomial(candidates.float(), num_pt, replacement=True, generator=generator)
    labels = false_neg.flatten(1).gather(1, index).to(torch.int32)
    points = torch.stack([index % width, index // width], dim=-1).to(torch.float)
    return points, labels


def sample_one_point_from_error_center(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None, padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask at the centre of the larger error: the pixel farthest from its region's boundary.

    Euclidean distance transforms of the false-negative and false-positive regions; the click goes to
    the maximum of the two (positive if it lies in the false negatives, ties go to the false positive,
    the first pixel in row-major order wins). ``padding`` counts the image border as a boundary.
    Deterministic (the RITM evaluation protocol). Returns ([B, 1, 2], [B, 1]).
    """
    import cv2

    pred_masks = _check_masks(gt_masks, pred_masks)
    false_pos, false_neg = (m[:, 0].cpu().numpy() for m in _error_regions(gt_masks, pred_masks))
    width = gt_masks.shape[-1]
    points = torch.zeros(gt_masks.shape[0], 1, 2, dtype=torch.float)
    labels = torch.zeros(gt_masks.shape[0], 1, dtype=torch.int32)
    for b in range(gt_masks.shape[0]):
        fn_distance = _distance_to_boundary(false_neg[b], padding, cv2).ravel()
        fp_distance = _distance_to_boundary(false_pos[b], padding, cv2).ravel()
        fn_best, fp_best = int(fn_distance.argmax()), int(fp_distance.argmax())
        positive = bool(fn_distance[fn_best] > fp_distance[fp_best])
        index = fn_best if positive else fp_best
        points[b, 0] = torch.tensor([index % width, index // width], dtype=torch.float)
        labels[b, 0] = int(positive)
    return points.to(gt_masks.device), labels.to(gt_masks.device)


def _distance_to_boundary(region: np.ndarray, padding: bool, cv2) -> np.ndarray:
    """L2 distance of each pixel of ``region`` to the nearest pixel outside it (0 outside)."""
    region = region.astype(np.uint8)
    if padding:
        region = np.pad(region, 1)
    distance = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance[1:-1, 1:-1] if padding else distance


def get_next_point(
    gt_masks: torch.Tensor,
    pred_masks: torch.Tensor | None,
    method: str,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction click per mask: ``method="uniform"`` (random over the error) or ``"center"``."""
    if method == "uniform":
        return sample_random_points_from_errors(gt_masks, pred_masks, generator=generator)
    if method == "center":
        return sample_one_point_from_error_center(gt_masks, pred_masks)
    raise ConfigError(f"unknown click sampling method {method!r}: use 'uniform' or 'center'")


def concat_points(
    point_inputs: dict[str, torch.Tensor] | None, new_points: torch.Tensor, new_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Append clicks to ``{"point_coords": [B, K, 2], "point_labels": [B, K]}`` (``None``: start one)."""
    if point_inputs is None:
        return {"point_coords": new_points, "point_labels": new_labels}
    return {
        "point_coords": torch.cat([point_inputs["point_coords"], new_points], dim=1),
        "point_labels": torch.cat([point_inputs["point_labels"], new_labels], dim=1),
    }


def sample_initial_prompt(
    gt_masks: torch.Tensor,
    prob_to_use_box: float = 0.5,
    method: str = "uniform",
    *,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The first prompt of every object of a batch: a jittered box (probability ``prob_to_use_box``) or
    one click inside the object, as point inputs ``{"point_coords", "point_labels"}``.

    One draw decides for the whole batch, as in the official training. Objects must not be empty.
    """
    if not 0.0 <= prob_to_use_box <= 1.0:
        raise ConfigError(f"prob_to_use_box must be in [0, 1], got {prob_to_use_box}")
    _check_masks(gt_masks, None)
    empty = ~gt_masks.flatten(1).any(-1)
    if bool(empty.any()):
        raise InputError(
            f"objects {empty.nonzero().flatten().tolist()} have empty masks: no prompt can be sampled from them; "
            "drop them before prompting"
        )
    use_box = float(torch.rand((), generator=generator)) < prob_to_use_box
    if use_box:
        points, labels = sample_box_points(gt_masks, generator=generator)
    else:
        points, labels = get_next_point(gt_masks, None, method, generator=generator)
    return {"point_coords": points, "point_labels": labels}


def split_box_corners(
    point_inputs: dict[str, torch.Tensor],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Point inputs -> (points, labels, boxes) for SAM's prompt encoder, which takes boxes apart.

    A leading pair of corner points (labels 2, 3) becomes a [B, 4] XYXY box; the remaining clicks stay
    points ([B, K, 2], [B, K]); either part is ``None`` when absent. SAM 2 takes the corners as points.
    """
    coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
    has_box = (
        labels.shape[1] >= 2 and bool((labels[:, 0] == BOX_TOP_LEFT).all()) and bool((labels[:, 1] == BOX_BOTTOM_RIGHT).all())
    )
    boxes = coords[:, :2].reshape(-1, 4) if has_box else None
    if has_box:
        coords, labels = coords[:, 2:], labels[:, 2:]
    if bool(((labels == BOX_TOP_LEFT) | (labels == BOX_BOTTOM_RIGHT)).any()):
        raise InputError("box corner labels (2, 3) are only understood as the first two points of every object")
    if labels.shape[1] == 0:
        return None, None, boxes
    return coords, labels, boxes
