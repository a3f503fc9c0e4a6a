"""The training recipe of SAM / SAM 2 for one image: prompts sampled from the ground truth, correction clicks
from the error region over several rounds, multimask outputs trained on their lowest-loss candidate.

Round 0 prompts every selected object with a jittered box or a point from its interior (one kind per image,
drawn from ``prompts``); a single point is ambiguous, so it asks for the 3 candidate masks. Each later round
adds one click sampled uniformly from the error region of the previous prediction (positive where the object
was missed, negative where background was taken) and, with ``mask`` in ``prompts``, feeds the previous
low-resolution logits back as the mask prompt, as SAM's interactive training does.

Loss (``LOSS_PRESETS``): ``official`` is SAM's focal (alpha 0.25, gamma 2) x 20 + dice x 1 + IoU-prediction
MSE x 1. The default ``bce+dice`` swaps the focal term for plain BCE at weight 1: focal with alpha 0.25
weights foreground pixels a third as much as background, and a decoder that starts from random weights (or
meets a new domain) first collapses to all-background under it, losing many steps before masks appear,
while BCE + dice has a balanced gradient from the first step and is equally stable from a pretrained start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LOSS_PRESETS", "PROMPT_KINDS", "Recipe", "interactive_rounds"]

PROMPT_KINDS = ("box", "point", "mask")
LOSS_PRESETS = {
    "bce+dice": {"bce": 1.0, "dice": 1.0, "iou": 1.0},
    "official": {"focal": 20.0, "dice": 1.0, "iou": 1.0},
}


@dataclass
class Recipe:
    prompts: tuple[str, ...] = ("box", "point", "mask")
    clicks: int = 2  # correction rounds after the first prompt
    max_objects: int = 8  # objects per image per step
    box_noise: float = 0.1  # box jitter: up to this fraction of the box side, at most max_box_noise px
    max_box_noise: int = 20
    loss: str = "bce+dice"
    loss_size: int = 256  # masks are compared at min(imgsz, loss_size) pixels


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, (size, size), mode="bilinear", align_corners=False)


def mask_losses(logits: torch.Tensor, target: torch.Tensor, weights: dict[str, float]) -> tuple[torch.Tensor, ...]:
    """(K, C, L, L) logits, (K, 1, L, L) 0/1 target -> per-candidate (K, C) mask term (focal or BCE, weighted),
    dice (weighted) and the candidates' true IoU (no gradient)."""
    from ..sam.losses import dice_loss, sigmoid_bce_loss, sigmoid_focal_loss

    logits = logits.float()
    t = target.expand_as(logits).float()
    # the official multimask form: per-candidate pixel mean divided by num_objects; num_objects=1 keeps the
    # per-object values (round_loss averages over objects)
    if "focal" in weights:
        mask = sigmoid_focal_loss(logits, t, 1, alpha=0.25, gamma=2.0, loss_on_multimask=True) * weights["focal"]
    else:
        mask = sigmoid_bce_loss(logits, t, 1, loss_on_multimask=True) * weights["bce"]
    dice = dice_loss(logits, t, 1, loss_on_multimask=True) * weights["dice"]
    with torch.no_grad():
        pred, tt = logits.detach() > 0, t > 0.5
        inter = (pred & tt).flatten(2).sum(-1).float()
        union = (pred | tt).flatten(2).sum(-1).float()
        actual_iou = inter / union.clamp(min=1.0)
    return mask, dice, actual_iou


def round_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, weights: dict[str, float]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one round (mean over objects) and the index of each object's lowest-loss candidate."""
    mask, dice, actual = mask_losses(logits, target, weights)
    best = (mask + dice).argmin(1)
    rows = torch.arange(len(best), device=best.device)
    iou = F.mse_loss(iou_pred.float()[rows, best], actual[rows, best], reduction="none") * weights["iou"]
    return (mask[rows, best] + dice[rows, best] + iou).mean(), best


def chosen_iou(chosen: torch.Tensor, target: torch.Tensor) -> float:
    """Mean IoU of each object's chosen (K, L, L) bool mask against its (K, 1, L, L) 0/1 target."""
    with torch.no_grad():
        truth = target[:, 0] > 0.5
        inter = (chosen & truth).flatten(1).sum(1).float()
        union = (chosen | truth).flatten(1).sum(1).float().clamp(min=1)
        return float((inter / union).mean())


def add_correction_click(target: torch.Tensor, chosen: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                         scale: float, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``coords`` (K, n, 2) and ``labels`` (K, n) with one more click per object, sampled from its error region
    (the loss-size masks' clicks scaled by ``scale`` to the input geometry); labels keep their dtype."""
    from ..sam.clicks import sample_random_points_from_errors

    xy, lab = sample_random_points_from_errors(target.cpu() > 0.5, chosen[:, None].cpu(), 1, generator=gen)
    return torch.cat([coords, (xy + 0.5) * scale - 0.5], 1), torch.cat([labels, lab.to(labels.dtype)], 1)


def interactive_rounds(model: Any, embedding: torch.Tensor, gt: torch.Tensor, recipe: Recipe,
                       gen: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Train-time rounds on one image: ``embedding`` (1, C, g, g), ``gt`` (K, S, S) object masks at the input
    geometry -> summed loss over rounds and {"iou_round0": ..., "iou_last": ...} (box/point IoU at loss size)."""
    weights = LOSS_PRESETS[recipe.loss]
    size = min(gt.shape[-1], recipe.loss_size)
    target = _resize(gt[:, None], size).gt(0.5).float()
    kinds = [k for k in recipe.prompts if k != "mask"] or ["box"]
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=gen))]
    from ..sam.clicks import sample_box_points, sample_random_points_from_errors

    masks = gt[:, None] > 0.5
    boxes = None
    coords = torch.zeros(len(gt), 0, 2)
    labels = torch.zeros(len(gt), 0)
    if kind == "box":
        corners, _ = sample_box_points(masks.cpu(), recipe.box_noise, recipe.max_box_noise, generator=gen)
        boxes = corners.reshape(len(gt), 4).to(embedding.device)
    else:  # one positive click uniform inside the object (no prediction yet)
        coords, point_labels = sample_random_points_from_errors(masks.cpu(), None, 1, generator=gen)
        labels = point_labels.float()
    mask_input = None
    total, stats = 0.0, {}
    dense_pe = model.prompt_encoder.get_dense_pe()
    scale = gt.shape[-1] / size
    for step in range(1 + recipe.clicks):
        points = (coords.to(embedding.device), labels.to(embedding.device)) if coords.shape[1] else None
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        multimask = boxes is None and coords.shape[1] == 1
        low_res, iou_pred = model.mask_decoder(embedding, dense_pe, sparse, dense, multimask)
        logits = _resize(low_res, size)
        loss, best = round_loss(logits, iou_pred, target, weights)
        total = total + loss
        rows = torch.arange(len(best))
        chosen = logits.detach()[rows, best] > 0
        stats["iou_round0" if step == 0 else "iou_last"] = chosen_iou(chosen, target)
        if step == recipe.clicks:
            break
        coords, labels = add_correction_click(target, chosen, coords, labels, scale, gen)
        if "mask" in recipe.prompts:
            mask_input = low_res.detach()[rows, best][:, None]
    return total, stats
