"""Instance-segmentation metrics: COCO box/mask AP (pycocotools ``COCOeval``) and the 2018 Data Science Bowl score.

Predictions are one :class:`imseg.Masks` per image (``labels`` index the class names, ``scores`` rank them);
ground truth is one :class:`~imseg.instance.InstanceSample` or :class:`imseg.Masks` per image (an
``iscrowd`` field marks crowd regions, which COCO evaluation ignores and the DSB score leaves out).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..masks import Masks
from .sample import InstanceSample

DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


def _as_truth(items: Sequence[InstanceSample | Masks], class_names: Sequence[str]) -> list[Masks]:
    out = []
    for item in items:
        if isinstance(item, InstanceSample):
            unknown = sorted({o.category for o in item.objects} - set(class_names))
            if unknown:
                raise InputError(f"{item.image_path}: categories {unknown} are not among the class names "
                                 f"{list(class_names)}; evaluate with the model's classes or drop those objects.")
            item = item.to_masks(list(class_names))
        elif not isinstance(item, Masks):
            raise InputError(f"ground truth must be InstanceSample or imseg.Masks; got {type(item).__name__}")
        out.append(item)
    return out


def _check_pairs(predictions: Sequence[Masks], truth: Sequence[Masks]) -> None:
    if len(predictions) != len(truth):
        raise InputError(f"{len(predictions)} predictions for {len(truth)} ground-truth images; give one Masks per image.")
    for i, (pred, gt) in enumerate(zip(predictions, truth, strict=True)):
        if tuple(pred.image_size) != tuple(gt.image_size):
            raise InputError(f"image {i}: prediction size {pred.image_size} differs from ground truth {gt.image_size}; "
                             "predict at the image's own resolution.")
        if len(pred) and pred.labels is None:
            raise InputError(f"image {i}: predictions have no labels; COCO evaluation needs a class per mask.")


def _crowd(masks: Masks) -> np.ndarray:
    flags = masks.fields.get("iscrowd")
    return np.zeros(len(masks), bool) if flags is None else np.asarray(flags, bool)


def _coco_objects(truth: Sequence[Masks], predictions: Sequence[Masks], class_names: Sequence[str]):
    """COCO ground-truth dataset dict and result list (category ids are label + 1)."""
    images, annotations, results = [], [], []
    for image_id, (gt, pred) in enumerate(zip(truth, predictions, strict=True), start=1):
        images.append({"id": image_id, "height": gt.height, "width": gt.width})
        labels = gt.labels if gt.labels is not None else np.zeros(len(gt), np.int64)
        for rle, box, area, label, crowd in zip(gt.to_rle(), gt.boxes, gt.areas, labels, _crowd(gt), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "segmentation": rle, "bbox": [float(v) for v in box], "area": float(area),
                                "iscrowd": int(crowd)})
        for rle, box, score, label in zip(pred.to_rle(), pred.boxes, pred.scores,
                                          pred.labels if len(pred) else [], strict=True):
            results.append({"image_id": image_id, "category_id": int(label) + 1, "segmentation": rle,
                            "bbox": [float(v) for v in box], "score": float(score)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _run_cocoeval(gt_api, results: list[dict], iou_type: str, max_dets: int):
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes([dict(r) for r in results])
        evaluator = COCOeval(gt_api, dt_api, iou_type)
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries COCOeval filled (-1 marks none); NaN if there are none."""
    values = values[values > -1]
    return float(values.mean()) if values.size else float("nan")


def _per_class_ap(evaluator, class_names: Sequence[str]) -> dict[str, float]:
    """AP@[.50:.95] per class (area "all", the largest maxDets); NaN for a class without ground truth."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    return {name: _mean_valid(precision[:, :, k]) for k, name in enumerate(class_names)}


def coco_metrics(predictions: Sequence[Masks], truth: Sequence[InstanceSample | Masks], class_names: Sequence[str],
                 *, max_dets: int = 100) -> dict:
    """COCO AP for boxes and masks.

    Returns ``{"box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75", "per_class_mask_ap",
    "per_class_box_ap"}``. AP values are in [0, 1]; NaN where no ground truth exists (COCO's -1); with ground
    truth but no predictions they are 0. ``max_dets``: detections kept per image (COCO uses 100; dense
    nuclei images need more).
    """
    from pycocotools.coco import COCO

    truth = _as_truth(truth, class_names)
    _check_pairs(predictions, truth)
    dataset, results = _coco_objects(truth, predictions, class_names)
    out: dict = {}
    has_truth = any(not a["iscrowd"] for a in dataset["annotations"])
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        if not results or not has_truth:
            value = 0.0 if has_truth else float("nan")
            out.update({f"{prefix}_ap": value, f"{prefix}_ap50": value, f"{prefix}_ap75": value,
                        f"per_class_{prefix}_ap": {name: value for name in class_names}})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            gt_api = COCO()
            gt_api.dataset = dataset
            gt_api.createIndex()
        evaluator = _run_cocoeval(gt_api, results, iou_type, max_dets)
        # read from the precision array: COCOeval.summarize looks AP@[.5:.95] up at maxDets=100 only
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K), area "all", the largest maxDets
        thresholds = np.round(evaluator.params.iouThrs, 2)
        stats = [_mean_valid(precision), _mean_valid(precision[thresholds == 0.5]),
                 _mean_valid(precision[thresholds == 0.75])]
        out.update({f"{prefix}_ap": stats[0], f"{prefix}_ap50": stats[1], f"{prefix}_ap75": stats[2],
                    f"per_class_{prefix}_ap": _per_class_ap(evaluator, class_names)})
    return out


# ----------------------------------------------------------------------------- DSB 2018
def mask_iou(predictions: Masks, truth: Masks) -> np.ndarray:
    """(P, G) mask IoU matrix."""
    from pycocotools import mask as mask_utils

    if not len(predictions) or not len(truth):
        return np.zeros((len(predictions), len(truth)))
    encode = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in predictions.to_rle()]
    target = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in truth.to_rle()]
    return np.asarray(mask_utils.iou(encode, target, [0] * len(target)), np.float64).reshape(len(encode), len(target))


def match_counts(iou: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of a one-to-one matching with the most pairs of IoU > ``threshold``."""
    from scipy.optimize import linear_sum_assignment

    n_pred, n_true = iou.shape
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    hit = iou > threshold
    rows, cols = linear_sum_assignment(hit, maximize=True)
    tp = int(hit[rows, cols].sum())
    return tp, n_pred - tp, n_true - tp


def dsb_metrics(predictions: Sequence[Masks], truth: Sequence[InstanceSample | Masks],
                class_names: Sequence[str] | None = None, thresholds: Sequence[float] = DSB_THRESHOLDS) -> dict:
    """The 2018 Data Science Bowl score and F1 at IoU 0.5, class-agnostic.

    Per image and threshold t: TP / (TP + FP + FN), one-to-one matching at IoU > t; averaged over the
    thresholds, then over images. An image with neither objects nor predictions scores 1. Crowd ground truth
    is left out. ``f1_50``, ``precision_50``, ``recall_50`` pool the counts at IoU 0.5 over all images.

    Returns ``{"dsb_score", "f1_50", "precision_50", "recall_50", "per_image": [scores]}``.
    """
    names = class_names if class_names is not None else _names_of(truth)
    truth = _as_truth(truth, names)
    if len(predictions) != len(truth):
        raise InputError(f"{len(predictions)} predictions for {len(truth)} ground-truth images; give one Masks per image.")
    per_image, pooled = [], np.zeros(3, np.int64)
    for i, (pred, gt) in enumerate(zip(predictions, truth, strict=True)):
        if tuple(pred.image_size) != tuple(gt.image_size):
            raise InputError(f"image {i}: prediction size {pred.image_size} differs from ground truth {gt.image_size}.")
        gt = gt[np.flatnonzero(~_crowd(gt))] if _crowd(gt).any() else gt
        iou = mask_iou(pred, gt)
        scores = []
        for t in thresholds:
            tp, fp, fn = match_counts(iou, t)
            scores.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
        per_image.append(float(np.mean(scores)))
        pooled += match_counts(iou, 0.5)
    tp, fp, fn = (int(v) for v in pooled)
    return {
        "dsb_score": float(np.mean(per_image)) if per_image else float("nan"),
        "f1_50": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
        "precision_50": 1.0 if tp + fp == 0 else tp / (tp + fp),
        "recall_50": 1.0 if tp + fn == 0 else tp / (tp + fn),
        "per_image": per_image,
    }


def _names_of(truth: Sequence[InstanceSample | Masks]) -> list[str]:
    names: list[str] = []
    for item in truth:
        for category in ([o.category for o in item.objects] if isinstance(item, InstanceSample) else []):
            if category not in names:
                names.append(category)
    return names


def instance_metrics(predictions: Sequence[Masks], truth: Sequence[InstanceSample | Masks],
                     class_names: Sequence[str], *, score_threshold: float = 0.0, max_dets: int = 100) -> dict:
    """COCO AP from all predictions, and the DSB score / F1 from those scoring at least ``score_threshold``."""
    truth = _as_truth(truth, class_names)
    out = coco_metrics(predictions, truth, class_names, max_dets=max_dets)
    kept = [p[np.flatnonzero(p.scores >= score_threshold)] if len(p) else p for p in predictions]
    out.update(dsb_metrics(kept, truth, class_names))
    return out
