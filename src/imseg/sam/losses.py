"""Training losses for SAM and SAM 2 mask decoders.

The names, signatures and numbers are those of the official SAM 2 training code
(``training/loss_fns.py``): ``sigmoid_focal_loss``, ``dice_loss``, ``iou_loss`` and
``MultiStepMultiMasksAndIous``, so the official recipe (focal x 20 + dice x 1 + IoU x 1, lowest-loss
candidate of a multimask output, object-score loss for SAM 2) can be reproduced exactly.

:class:`MultiStepMultiMasksAndIousBCE` is the same loss with plain binary cross-entropy in place of the
focal term. From a random initialisation the focal term (alpha 0.25, weight 20) drives every logit to
background for the first steps; BCE + dice gives foreground pixels full weight and trains at once.

Shapes: ``N`` objects, ``M`` candidate masks per object (1 or 3), ``H x W`` mask logits.
Every per-object loss is divided by ``num_objects`` (the batch's object count), as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.errors import ConfigError, InputError

#: Key of the weighted total in the dict returned by :class:`MultiStepMultiMasksAndIous`.
CORE_LOSS_KEY = "core_loss"
#: The official SAM 2 weighting (focal : dice : IoU : object score).
OFFICIAL_WEIGHTS = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}
#: Weights for :class:`MultiStepMultiMasksAndIousBCE` (BCE : dice : IoU : object score).
BCE_DICE_WEIGHTS = {"loss_mask": 1.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}


def _reduce(loss: torch.Tensor, num_objects: float, loss_on_multimask: bool) -> torch.Tensor:
    """Per-pixel loss -> [N, M] (multimask, mean over pixels) or a scalar (mean per object, summed)."""
    if loss_on_multimask:
        if loss.dim() != 4:
            raise InputError(f"loss_on_multimask=True needs [N, M, H, W] inputs, got shape {tuple(loss.shape)}")
        return loss.flatten(2).mean(-1) / num_objects
    return loss.mean(1).sum() / num_objects


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_objects: float,
    alpha: float = 0.25,
    gamma: float = 2,
    loss_on_multimask: bool = False,
) -> torch.Tensor:
    """Focal loss (RetinaNet) on mask logits.

    ``inputs`` are logits, ``targets`` 0/1 of the same shape. ``alpha < 0`` disables the class balance.
    Multimask ([N, M, H, W]): returns [N, M], the pixel mean per candidate / ``num_objects``.
    Otherwise: the mean over dim 1 of each object, summed and divided by ``num_objects`` (a scalar).
    """
    prob = inputs.sigmoid()
    bce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    prob_of_truth = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - prob_of_truth) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, num_objects, loss_on_multimask)


def sigmoid_bce_loss(
    inputs: torch.Tensor, targets: torch.Tensor, num_objects: float, loss_on_multimask: bool = False
) -> torch.Tensor:
    """Binary cross-entropy on mask logits, reduced exactly as :func:`sigmoid_focal_loss`."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return _reduce(loss, num_objects, loss_on_multimask)


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_objects: float, loss_on_multimask: bool = False) -> torch.Tensor:
    """``1 - (2 |p * t| + 1) / (|p| + |t| + 1)`` on sigmoid probabilities ``p``, smoothed by 1.

    Multimask ([N, M, H, W]): [N, M] / ``num_objects``; otherwise the sum over objects / ``num_objects``.
    """
    prob = inputs.sigmoid()
    if loss_on_multimask:
        if prob.dim() != 4 or targets.dim() != 4:
            raise InputError(
                f"loss_on_multimask=True needs [N, M, H, W] inputs and targets, got {tuple(inputs.shape)} "
                f"and {tuple(targets.shape)}"
            )
        prob, targets = prob.flatten(2), targets.flatten(2)
    else:
        prob, targets = prob.flatten(1), targets.flatten(1)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss / num_objects if loss_on_multimask else loss.sum() / num_objects


def iou_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    pred_ious: torch.Tensor,
    num_objects: float,
    loss_on_multimask: bool = False,
    use_l1_loss: bool = False,
) -> torch.Tensor:
    """L1 or MSE between the predicted IoU [N, M] and the IoU of ``inputs > 0`` with ``targets > 0``.

    ``inputs`` and ``targets`` are [N, M, H, W]. The union is clamped to 1, so two empty masks score 0.
    """
    if inputs.dim() != 4 or targets.dim() != 4:
        raise InputError(f"iou_loss needs [N, M, H, W] masks and targets, got {tuple(inputs.shape)} and {tuple(targets.shape)}")
    pred_mask = inputs.flatten(2) > 0
    gt_mask = targets.flatten(2) > 0
    intersection = (pred_mask & gt_mask).sum(-1).float()
    union = (pred_mask | gt_mask).sum(-1).float()
    actual_ious = intersection / union.clamp(min=1.0)
    distance = F.l1_loss if use_l1_loss else F.mse_loss
    loss = distance(pred_ious, actual_ious, reduction="none")
    return loss / num_objects if loss_on_multimask else loss.sum() / num_objects


class MultiStepMultiMasksAndIous(nn.Module):
    """Focal + dice + IoU-prediction (+ object score) losses summed over the prompt steps of each frame.

    ``weight_dict`` needs ``loss_mask`` (focal), ``loss_dice`` and ``loss_iou``; ``loss_class`` (object
    score, SAM 2) defaults to 0. With several candidates per step only the one with the lowest weighted
    focal + dice is supervised (and its IoU prediction, unless ``supervise_all_iou``: then the mean
    over all candidates). Mask and IoU losses count only for objects present in the target when
    ``pred_obj_scores``; the object score itself gets a focal loss with its own alpha and gamma.
    """

    def __init__(
        self,
        weight_dict: Mapping[str, float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2,
        supervise_all_iou: bool = False,
        iou_use_l1_loss: bool = False,
        pred_obj_scores: bool = False,
        focal_gamma_obj_score: float = 0.0,
        focal_alpha_obj_score: float = -1,
    ):
        super().__init__()
        missing = {"loss_mask", "loss_dice", "loss_iou"} - set(weight_dict)
        unknown = set(weight_dict) - {"loss_mask", "loss_dice", "loss_iou", "loss_class"}
        if missing or unknown:
            raise ConfigError(
                f"weight_dict needs the keys loss_mask, loss_dice, loss_iou (and optionally loss_class); "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        self.weight_dict = {"loss_class": 0.0, **weight_dict}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss
        self.pred_obj_scores = pred_obj_scores
        self.focal_gamma_obj_score = focal_gamma_obj_score
        self.focal_alpha_obj_score = focal_alpha_obj_score

    def forward(self, outs_batch: Sequence[Mapping], targets_batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sum of the per-frame losses.

        ``outs_batch``: one dict per frame with lists (one entry per prompt step) under
        ``multistep_pred_multimasks_high_res`` ([N, M, H, W] logits), ``multistep_pred_ious`` ([N, M]) and
        ``multistep_object_score_logits`` ([N, 1]; may be absent when ``pred_obj_scores`` is False).
        ``targets_batch``: [T, N, H, W] ground-truth masks. Returns ``loss_mask``, ``loss_dice``,
        ``loss_iou``, ``loss_class`` and the weighted total under ``core_loss``.
        """
        if len(outs_batch) != len(targets_batch):
            raise InputError(f"{len(outs_batch)} frame outputs but {len(targets_batch)} target frames")
        num_objects = _global_num_objects(targets_batch)
        losses: dict[str, torch.Tensor] = {}
        for outs, targets in zip(outs_batch, targets_batch, strict=True):
            for key, value in self._forward(outs, targets, num_objects).items():
                losses[key] = losses.get(key, 0) + value
        return losses

    def _forward(self, outputs: Mapping, targets: torch.Tensor, num_objects: float) -> dict[str, torch.Tensor]:
        target_masks = targets.unsqueeze(1).float()  # [N, 1, H, W]
        masks_per_step = outputs["multistep_pred_multimasks_high_res"]
        ious_per_step = outputs["multistep_pred_ious"]
        scores_per_step = outputs.get("multistep_object_score_logits")
        if scores_per_step is None and not self.pred_obj_scores:
            scores_per_step = [None] * len(masks_per_step)
        if not len(masks_per_step) == len(ious_per_step) == len(scores_per_step):
            raise InputError(
                f"one entry per prompt step is needed in each output list, got {len(masks_per_step)} masks, "
                f"{len(ious_per_step)} IoU predictions and {len(scores_per_step)} object scores"
            )
        losses = {"loss_mask": 0, "loss_dice": 0, "loss_iou": 0, "loss_class": 0}
        for masks, ious, scores in zip(masks_per_step, ious_per_step, scores_per_step, strict=True):
            for key, value in self._step_losses(masks, target_masks, ious, num_objects, scores).items():
                losses[key] = losses[key] + value
        losses[CORE_LOSS_KEY] = self.reduce_loss(losses)
        return losses

    def mask_loss(self, masks: torch.Tensor, targets: torch.Tensor, num_objects: float) -> torch.Tensor:
        """The per-pixel term ``loss_mask`` per candidate, [N, M]: focal loss here."""
        return sigmoid_focal_loss(
            masks, targets, num_objects, alpha=self.focal_alpha, gamma=self.focal_gamma, loss_on_multimask=True
        )

    def _step_losses(self, masks, target_masks, ious, num_objects, object_score_logits) -> dict[str, torch.Tensor]:
        if masks.dim() != 4 or masks.shape[0] != target_masks.shape[0] or masks.shape[-2:] != target_masks.shape[-2:]:
            raise InputError(
                f"predicted masks {tuple(masks.shape)} do not match targets {tuple(target_masks.shape[:1])} + "
                f"[M] + {tuple(target_masks.shape[-2:])}: resize the logits to the target size first"
            )
        target_masks = target_masks.expand_as(masks)
        loss_multimask = self.mask_loss(masks, target_masks, num_objects)
        loss_multidice = dice_loss(masks, target_masks, num_objects, loss_on_multimask=True)
        loss_multiiou = iou_loss(masks, target_masks, ious, num_objects, loss_on_multimask=True, use_l1_loss=self.iou_use_l1_loss)
        if self.pred_obj_scores:
            target_obj = (target_masks[:, 0] > 0).flatten(1).any(-1)[:, None].float()
            loss_class = sigmoid_focal_loss(
                object_score_logits,
                target_obj,
                num_objects,
                alpha=self.focal_alpha_obj_score,
                gamma=self.focal_gamma_obj_score,
            )
        else:
            target_obj = torch.ones_like(loss_multimask[:, :1])
            loss_class = torch.zeros((), dtype=loss_multimask.dtype, device=loss_multimask.device)

        if loss_multimask.size(1) > 1:
            combo = loss_multimask * self.weight_dict["loss_mask"] + loss_multidice * self.weight_dict["loss_dice"]
            best = combo.argmin(-1, keepdim=True)  # [N, 1]
            loss_mask = loss_multimask.gather(1, best)
            loss_dice = loss_multidice.gather(1, best)
            loss_iou = loss_multiiou.mean(-1, keepdim=True) if self.supervise_all_iou else loss_multiiou.gather(1, best)
        else:
            loss_mask, loss_dice, loss_iou = loss_multimask, loss_multidice, loss_multiiou

        return {
            "loss_mask": (loss_mask * target_obj).sum(),
            "loss_dice": (loss_dice * target_obj).sum(),
            "loss_iou": (loss_iou * target_obj).sum(),
            "loss_class": loss_class,
        }

    def reduce_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the losses whose weight is not zero."""
        total = 0.0
        for key, weight in self.weight_dict.items():
            if weight != 0:
                total = total + losses[key] * weight
        return total


class MultiStepMultiMasksAndIousBCE(MultiStepMultiMasksAndIous):
    """:class:`MultiStepMultiMasksAndIous` with binary cross-entropy as the ``loss_mask`` term.

    Same keys, candidate selection and object-score handling; ``focal_alpha``/``focal_gamma`` are
    not used for the masks. Default weights: :data:`BCE_DICE_WEIGHTS` (BCE 1 : dice 1 : IoU 1).
    """

    def __init__(self, weight_dict: Mapping[str, float] | None = None, **kwargs):
        super().__init__(dict(BCE_DICE_WEIGHTS if weight_dict is None else weight_dict), **kwargs)

    def mask_loss(self, masks: torch.Tensor, targets: torch.Tensor, num_objects: float) -> torch.Tensor:
        return sigmoid_bce_loss(masks, targets, num_objects, loss_on_multimask=True)


def _global_num_objects(targets_batch: torch.Tensor) -> float:
    """Objects per frame, averaged over distributed workers and at least 1 (as the official loss)."""
    num_objects = torch.tensor(targets_batch.shape[1], device=targets_batch.device, dtype=torch.float)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num_objects)
        world_size = torch.distributed.get_world_size()
    return torch.clamp(num_objects / world_size, min=1).item()
