"""The SAM 2.1 side of the fine-tuning recipe: image features, train-time rounds and box-prompt validation.

Same prompts and correction clicks as :mod:`.recipe` (a jittered box or an interior point, then clicks from the
error region, the previous low-resolution logits fed back as the mask prompt), in SAM 2's own terms:

- geometry: the image is squashed to the ``imgsz`` square (no padding), and so are the masks;
- a box is given as its two corners, points labelled 2 and 3, as the SAM 2 predictors and training code do;
- the decoder also reads the two projected high-resolution levels and predicts an object score;
- of a multimask output the candidate with the highest predicted IoU goes on to the next round, as in
  SAM 2's interactive training (the loss itself supervises the lowest-loss candidate);
- loss: ``MultiStepMultiMasksAndIous`` over all rounds with the options of the official SAM 2.1 training config
  (object-score loss, L1 IoU loss on every candidate). ``--loss official`` is that loss with its official
  weights (focal x 20 : dice : IoU : object score = 20 : 1 : 1 : 1); the default ``bce+dice`` swaps the focal
  term for BCE at weight 1 for the reason :mod:`.recipe` gives, and keeps everything else.

With a frozen encoder the features are what :class:`~imseg.sam2.predictor.SAM2ImagePredictor` holds for an image
(embedding with the no-memory embedding added, the two levels through ``conv_s0``/``conv_s1``), so those two
projections and ``no_mem_embed`` stay frozen with the encoder: caching the unprojected levels would take five times
the disk space per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import FinetuneDataset
from .recipe import Recipe, _resize, add_correction_click, chosen_iou

__all__ = ["Sam2FinetuneDataset", "encoder_side_state", "is_sam2", "sam2_box_ious", "sam2_embed", "sam2_loss",
           "sam2_rounds"]

#: weights that make the cached features besides the image encoder's (frozen with it)
ENCODER_SIDE = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.", "no_mem_embed")


def is_sam2(model: Any) -> bool:
    return hasattr(model, "sam_mask_decoder")


def encoder_side_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The image encoder's tensors and those of :data:`ENCODER_SIDE` (names as in the model's state_dict)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(("image_encoder.", *ENCODER_SIDE))}


class Sam2FinetuneDataset(FinetuneDataset):
    """:class:`FinetuneDataset` in SAM 2's geometry: image and masks squashed to the ``imgsz`` square; ``"image"``
    is normalised as SAM 2's encoder takes it; cached items also carry ``"high_res_feats"``. No shrink: the
    image fills the square, which is the geometry SAM 2's encoder sees."""

    SHRINK = None

    def input_shape(self, original: tuple[int, int]) -> tuple[int, int]:
        return self.imgsz, self.imgsz

    def image_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        from ..sam2.transforms import preprocess

        return preprocess(rgb, self.imgsz, torch.device("cpu"))


def sam2_embed(module: Any, item: dict) -> dict[str, Any]:
    """``{"image_embed": (1, C, g, g), "high_res_feats": [(1, C/8, 4g, 4g), (1, C/4, 2g, 2g)]}`` of one item: the
    cached features, else the encoder's (cached when the encoder is frozen)."""
    device = module.device
    if "embedding" in item:
        return {"image_embed": item["embedding"][None].to(device),
                "high_res_feats": [t[None].to(device) for t in item["high_res_feats"]]}
    module.encoder_calls += 1
    image = item["image"][None].to(device)
    if not module.frozen:
        embed, high_res = module.model.image_features(image)
        return {"image_embed": embed, "high_res_feats": list(high_res)}
    with torch.no_grad():
        embed, high_res = module.model.image_features(image)
    if module.cache is not None:
        module.cache.put(item["key"], embed[0], item["input_size"], item["original_size"],
                         high_res_feats=[t[0] for t in high_res])
    return {"image_embed": embed, "high_res_feats": list(high_res)}


def sam2_loss(name: str) -> torch.nn.Module:
    """The fine-tuning loss ``name`` (see the module docstring) as a ``MultiStepMultiMasksAndIous``."""
    from ..sam.losses import (
        BCE_DICE_WEIGHTS,
        OFFICIAL_OPTIONS,
        OFFICIAL_WEIGHTS,
        MultiStepMultiMasksAndIous,
        MultiStepMultiMasksAndIousBCE,
    )

    if name == "official":
        return MultiStepMultiMasksAndIous(OFFICIAL_WEIGHTS, focal_alpha=0.25, focal_gamma=2.0, **OFFICIAL_OPTIONS)
    return MultiStepMultiMasksAndIousBCE(BCE_DICE_WEIGHTS, **OFFICIAL_OPTIONS)


def _decode(model: Any, features: dict, coords: torch.Tensor, labels: torch.Tensor, mask_input: Any,
            multimask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, N, 2) model-frame points + (K, N) labels (boxes as corners 2/3) -> low-res logits (K, M, 4g, 4g),
    IoU predictions (K, M), object-score logits (K, 1); the image features are shared by the K objects."""
    encoder = model.sam_prompt_encoder
    sparse, dense = encoder(points=(coords, labels), boxes=None, masks=mask_input)
    low_res, iou, _, scores = model.sam_mask_decoder(
        image_embeddings=features["image_embed"], image_pe=encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=True,
        high_res_features=features["high_res_feats"])
    return low_res, iou, scores


def _first_prompt(gt: torch.Tensor, recipe: Recipe, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round 0: box corners (labels 2, 3) or one interior point (label 1) per object, at the input geometry."""
    from ..sam.clicks import sample_box_points, sample_random_points_from_errors

    kinds = [k for k in recipe.prompts if k != "mask"] or ["box"]
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=gen))]
    masks = gt[:, None].cpu() > 0.5
    if kind == "box":
        corners, _ = sample_box_points(masks, recipe.box_noise, recipe.max_box_noise, generator=gen)
        return corners.reshape(len(gt), 2, 2).float(), torch.tensor([[2, 3]]).repeat(len(gt), 1)
    coords, labels = sample_random_points_from_errors(masks, None, 1, generator=gen)
    return coords.float(), labels.long()


def sam2_rounds(model: Any, features: dict, gt: torch.Tensor, recipe: Recipe, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Train-time rounds on one image: ``gt`` (K, S, S) object masks at the input geometry -> the loss over all
    rounds and {"iou_round0", "iou_last"} (IoU of the candidate carried on, at the loss size)."""
    device = features["image_embed"].device
    size = min(gt.shape[-1], recipe.loss_size)
    target = _resize(gt[:, None], size).gt(0.5).float()
    coords, labels = _first_prompt(gt, recipe, gen)
    scale = gt.shape[-1] / size
    steps: dict[str, list] = {"multistep_pred_multimasks_high_res": [], "multistep_pred_ious": [],
                              "multistep_object_score_logits": []}
    mask_input, stats = None, {}
    rows = torch.arange(len(gt))
    for step in range(1 + recipe.clicks):
        multimask = coords.shape[1] == 1  # a single click is ambiguous: three candidates
        low_res, iou, scores = _decode(model, features, coords.to(device), labels.to(device), mask_input, multimask)
        logits = _resize(low_res.float(), size)
        steps["multistep_pred_multimasks_high_res"].append(logits)
        steps["multistep_pred_ious"].append(iou.float())
        steps["multistep_object_score_logits"].append(scores.float())
        best = iou.detach().argmax(1).cpu()
        chosen = logits.detach()[rows, best] > 0
        stats["iou_round0" if step == 0 else "iou_last"] = chosen_iou(chosen, target)
        if step == recipe.clicks:
            break
        coords, labels = add_correction_click(target, chosen, coords, labels, scale, gen)
        if "mask" in recipe.prompts:
            mask_input = low_res.detach()[rows, best][:, None]
    losses = sam2_loss(recipe.loss)([steps], target[:, 0][None])
    return losses["core_loss"], stats


@torch.no_grad()
def sam2_box_masks(model: Any, features: dict, item: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each object's mask from its tight box (one output, as the predictor gives it) at the original size, and the
    boxes (K, 4) x0, y0, x1, y1 in image pixels."""
    from ..sam.clicks import mask_to_box

    gt_small = item["masks"]
    device = features["image_embed"].device
    corners = mask_to_box(gt_small[:, None] > 0.5)[:, 0].float().reshape(-1, 2, 2)
    labels = torch.tensor([[2, 3]]).repeat(len(corners), 1)
    features = {"image_embed": features["image_embed"].float(),
                "high_res_feats": [t.float() for t in features["high_res_feats"]]}
    low_res, _, _ = _decode(model, features, corners.to(device), labels.to(device), None, False)
    masks = F.interpolate(low_res.float(), tuple(item["original_size"]), mode="bilinear", align_corners=False)[:, 0] > 0
    height, width = item["original_size"]  # the input is the image squashed to a square
    scale = torch.tensor([width / gt_small.shape[-1], height / gt_small.shape[-2]] * 2)
    return masks.cpu().numpy(), (corners.reshape(-1, 4) * scale).numpy()


def sam2_box_ious(model: Any, features: dict, item: dict) -> list[float]:
    """IoU of each object's mask from its tight box (one output, as the predictor gives it), at the original size."""
    from .module import _iou

    full = item["full_masks"]
    if not len(full):
        return []
    masks, _ = sam2_box_masks(model, features, item)
    return [_iou(m, g) for m, g in zip(masks, full, strict=True)]
