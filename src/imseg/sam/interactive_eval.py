"""Interactive segmentation metrics: box-prompt mIoU, mIoU after k clicks, NoC@85 / NoC@90.

The protocol (SAM / RITM): every object is prompted alone. The box score uses the exact ground-truth
box. The click score starts from one click at the object's centre and adds one correction click per
round at the centre of the largest error (:func:`imseg.sam.clicks.sample_one_point_from_error_center`,
deterministic), feeding the previous low-res logits back as the mask prompt. NoC@t is the number of
clicks an object needs to reach IoU >= t, ``max_clicks`` (20) when it never does.

Any model plugs in as a ``predict(embedding, prompt) -> (logits [N, H, W], low_res [N, 1, h, w] | None)``
callable, the logits at the ground-truth size; :func:`sam_predict_fn` adapts :class:`SamPredictor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from imseg.errors import ConfigError, InputError

from . import clicks


@dataclass(frozen=True)
class InteractivePrompt:
    """Prompts for N objects of one image, in ground-truth pixel coordinates (x, y)."""

    point_coords: torch.Tensor | None = None  # [N, K, 2]
    point_labels: torch.Tensor | None = None  # [N, K], 1 positive, 0 negative
    boxes: torch.Tensor | None = None  # [N, 4] XYXY
    mask_input: torch.Tensor | None = None  # [N, 1, h, w], the low-res logits the predictor returned last

    def select(self, keep: torch.Tensor) -> InteractivePrompt:
        """The prompts of the objects ``keep`` (indices)."""
        return InteractivePrompt(*(None if t is None else t[keep] for t in self._fields()))

    def _fields(self) -> tuple:
        return self.point_coords, self.point_labels, self.boxes, self.mask_input


PredictFn = Callable[[Any, InteractivePrompt], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class InteractiveReport:
    """Scores over all objects (each object weighs the same)."""

    box_miou: float
    miou_at: dict[int, float]  # clicks -> mIoU
    noc: dict[float, float]  # IoU threshold -> mean number of clicks
    num_objects: int
    max_clicks: int
    click_ious: list[list[float]] = field(default_factory=list, repr=False)  # per object, IoU after 1, 2, ... clicks

    def as_row(self) -> dict[str, float]:
        """Flat ``{"box_mIoU", "mIoU@1", ..., "NoC@85", "NoC@90"}`` for tables and CSV."""
        row = {"box_mIoU": self.box_miou}
        row.update({f"mIoU@{k}": v for k, v in self.miou_at.items()})
        row.update({f"NoC@{round(t * 100)}": v for t, v in self.noc.items()})
        return row


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU per object of [N, H, W] bool masks -> [N]; an empty union counts as a perfect match."""
    # float64: an IoU of exactly 9/10 must compare >= 0.9
    inter = (pred & gt).flatten(1).sum(-1).double()
    union = (pred | gt).flatten(1).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def evaluate_interactive(
    predict: PredictFn,
    samples: Iterable[tuple[Any, Any]],
    max_clicks: int = 20,
    click_counts: Sequence[int] = (1, 3, 5),
    thresholds: Sequence[float] = (0.85, 0.90),
    use_previous_mask: bool = True,
) -> InteractiveReport:
    """Score ``predict`` on ``samples``: pairs of (image embedding, ground-truth masks [N, H, W]).

    Each object gets up to ``max_clicks`` clicks; it stops early once it has had ``max(click_counts)``
    clicks and reached ``max(thresholds)``. Images without objects (N = 0) are skipped.
    """
    if max_clicks < 1 or not click_counts or min(click_counts) < 1 or max(click_counts) > max_clicks:
        raise ConfigError(f"click_counts {list(click_counts)} must lie in 1..max_clicks ({max_clicks})")
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise ConfigError(f"IoU thresholds must lie in (0, 1], got {list(thresholds)}")
    box_ious, click_ious = [], []
    with torch.inference_mode():
        for index, (embedding, gt) in enumerate(samples):
            gt = _object_masks(gt, index)
            if gt.shape[0] == 0:
                continue
            box_ious.append(_box_ious(predict, embedding, gt))
            click_ious.extend(
                _click_ious(predict, embedding, gt, max_clicks, max(click_counts), max(thresholds), use_previous_mask)
            )
    if not click_ious:
        raise InputError("no objects to evaluate: every sample has an empty list of ground-truth masks")
    return InteractiveReport(
        box_miou=torch.cat(box_ious).mean().item(),
        miou_at={k: sum(curve[k - 1] for curve in click_ious) / len(click_ious) for k in click_counts},
        noc={t: sum(_clicks_to_reach(curve, t, max_clicks) for curve in click_ious) / len(click_ious) for t in thresholds},
        num_objects=len(click_ious),
        max_clicks=max_clicks,
        click_ious=click_ious,
    )


def _clicks_to_reach(curve: Sequence[float], threshold: float, max_clicks: int) -> int:
    return next((k for k, iou in enumerate(curve, start=1) if iou >= threshold), max_clicks)


def _object_masks(gt: Any, index: int) -> torch.Tensor:
    """Ground truth as [N, H, W] bool; empty objects are an error (no prompt can be drawn from them)."""
    gt = torch.as_tensor(gt)
    if gt.dim() != 3:
        raise InputError(f"sample {index}: ground-truth masks must be [N, H, W], got shape {tuple(gt.shape)}")
    if gt.dtype != torch.bool:
        if bool(((gt != 0) & (gt != 1)).any()):
            raise InputError(f"sample {index}: ground-truth masks must be boolean or 0/1, got other values")
        gt = gt.bool()
    empty = (~gt.flatten(1).any(-1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"sample {index}: objects {empty} have empty masks; drop them before evaluating")
    return gt


def _predict_masks(predict: PredictFn, embedding: Any, prompt: InteractivePrompt, gt: torch.Tensor):
    logits, low_res = predict(embedding, prompt)
    if tuple(logits.shape) != tuple(gt.shape):
        raise InputError(
            f"predict returned masks of shape {tuple(logits.shape)} for {gt.shape[0]} objects; expected "
            f"{tuple(gt.shape)}: logits (or bool masks) at the ground-truth size, one per object"
        )
    masks = logits if logits.dtype == torch.bool else logits > 0
    return masks.to(gt.device), low_res


def _box_ious(predict: PredictFn, embedding: Any, gt: torch.Tensor) -> torch.Tensor:
    boxes = clicks.mask_to_box(gt[:, None])[:, 0].float()
    masks, _ = _predict_masks(predict, embedding, InteractivePrompt(boxes=boxes), gt)
    return mask_iou(masks, gt)


def _click_ious(
    predict: PredictFn,
    embedding: Any,
    gt: torch.Tensor,
    max_clicks: int,
    min_rounds: int,
    stop_iou: float,
    use_previous_mask: bool,
) -> list[list[float]]:
    """IoU after 1, 2, ... clicks for every object of one image (each list ends when its object stops)."""
    gt4 = gt[:, None]
    curves: list[list[float]] = [[] for _ in range(gt.shape[0])]
    points, labels = clicks.sample_one_point_from_error_center(gt4, None)  # the object's centre
    prompt = InteractivePrompt(points.to(gt.device), labels.to(gt.device))
    active = torch.arange(gt.shape[0], device=gt.device)
    for round_index in range(1, max_clicks + 1):
        masks, low_res = _predict_masks(predict, embedding, prompt.select(active), gt[active])
        ious = mask_iou(masks, gt[active]).tolist()
        for obj, iou in zip(active.tolist(), ious, strict=True):
            curves[obj].append(iou)
        if round_index == max_clicks:
            break
        reached = torch.tensor([max(curves[obj]) >= stop_iou for obj in active.tolist()], device=gt.device)
        going = ~reached if round_index >= min_rounds else torch.ones_like(reached)
        if not bool(going.any()):
            break
        prompt = _next_prompt(prompt, active, going, masks, gt4, low_res if use_previous_mask else None)
        active = active[going]
    return curves


def _next_prompt(
    prompt: InteractivePrompt,
    active: torch.Tensor,
    going: torch.Tensor,
    masks: torch.Tensor,
    gt4: torch.Tensor,
    low_res: torch.Tensor | None,
) -> InteractivePrompt:
    """Add a centre-of-error click for the objects that go on (the others get an unused padding click)."""
    keep = active[going]
    new_points, new_labels = clicks.sample_one_point_from_error_center(gt4[keep], masks[going][:, None])
    count = gt4.shape[0]
    points = torch.zeros(count, 1, 2, device=gt4.device)
    labels = torch.full((count, 1), -1, dtype=torch.int32, device=gt4.device)
    points[keep], labels[keep] = new_points.to(gt4.device), new_labels.to(gt4.device)
    mask_input = prompt.mask_input
    if low_res is not None:
        if mask_input is None:
            mask_input = low_res.new_zeros((count, *low_res.shape[1:]))
        mask_input = mask_input.clone()
        mask_input[active] = low_res
    return replace(
        prompt,
        point_coords=torch.cat([prompt.point_coords, points], dim=1),
        point_labels=torch.cat([prompt.point_labels, labels], dim=1),
        mask_input=mask_input,
    )


def sam_embedding(predictor: Any, image: Any) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Encode ``image`` with a :class:`SamPredictor`: the embedding :func:`sam_predict_fn` reads."""
    predictor.set_image(image)
    return predictor.get_image_embedding(), predictor.original_size, predictor.input_size


def sam_predict_fn(predictor: Any) -> PredictFn:
    """Adapt a :class:`SamPredictor` to ``predict(embedding, prompt)``; embeddings from :func:`sam_embedding`.

    A single click (no box, no mask prompt) is ambiguous: three candidates are decoded and the one with
    the highest predicted IoU is kept, as SAM's interactive protocol does; otherwise one mask.
    """

    def predict(embedding, prompt: InteractivePrompt):
        features, original_size, input_size = embedding
        predictor.use_embedding(features, original_size, input_size)
        device = predictor.device
        coords = labels = boxes = None
        if prompt.point_coords is not None:
            coords = predictor.transform.apply_coords_torch(prompt.point_coords.float().to(device), original_size)
            labels = prompt.point_labels.to(device)
        if prompt.boxes is not None:
            boxes = predictor.transform.apply_boxes_torch(prompt.boxes.float().to(device), original_size)
        mask_input = None if prompt.mask_input is None else prompt.mask_input.to(device)
        multimask = boxes is None and mask_input is None and coords is not None and coords.shape[1] == 1
        masks, iou, low_res = predictor.predict_torch(coords, labels, boxes, mask_input, multimask, return_logits=True)
        best = iou.argmax(1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, best], low_res[rows, best][:, None]

    return predict


def sam2_predict_fn(predictor: Any) -> PredictFn:
    """Adapt a :class:`~imseg.sam2.SAM2ImagePredictor` to ``predict(embedding, prompt)``.

    The predictor keeps its own image state: yield samples from :func:`predictor_samples`, which sets
    each image before its objects are scored (the ``embedding`` is then ``None``). Same multimask rule
    as :func:`sam_predict_fn`.
    """

    def predict(embedding, prompt: InteractivePrompt):
        numpy = {
            name: None if value is None else value.detach().cpu().numpy()
            for name, value in zip(("point_coords", "point_labels", "box", "mask_input"), prompt._fields(), strict=True)
        }
        multimask = numpy["box"] is None and numpy["mask_input"] is None and numpy["point_coords"].shape[1] == 1
        masks, iou, low_res = predictor.predict(**numpy, multimask_output=multimask, return_logits=True)
        masks, iou, low_res = (torch.as_tensor(a) for a in (masks, iou, low_res))
        if masks.dim() == 3:  # one object: the predictor drops the batch axis
            masks, iou, low_res = masks[None], iou[None], low_res[None]
        best = iou.argmax(1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best], low_res[rows, best][:, None]

    return predict


def predictor_samples(predictor: Any, pairs: Iterable[tuple[Any, Any]]) -> Iterable[tuple[None, Any]]:
    """(image, ground truth) pairs -> (None, ground truth), setting each image on ``predictor`` first."""
    for image, gt in pairs:
        predictor.set_image(image)
        yield None, gt
