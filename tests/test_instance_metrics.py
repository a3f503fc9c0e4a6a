"""Instance metrics: COCO AP against faster-coco-eval, the DSB 2018 score against hand-built cases and a plain implementation."""

import copy

import numpy as np
import pytest

from imseg.errors import InputError
from imseg.instance import InstanceMask, InstanceObject, InstanceSample
from imseg.instance.metrics import coco_metrics, dsb_metrics, instance_metrics
from imseg.masks import Masks

NAMES = ["cell", "blob"]


def _square(size, y, x, h, w):
    m = np.zeros(size, bool)
    m[y:y + h, x:x + w] = True
    return m


def _scene(rng, size=(64, 80), n=5):
    """Non-overlapping rectangles on a grid, random classes."""
    masks, labels = [], []
    cells = rng.permutation(12)[:n]
    for c in cells:
        y, x = 4 + 20 * (c // 4), 4 + 19 * (c % 4)
        masks.append(_square(size, y, x, int(rng.integers(6, 15)), int(rng.integers(6, 15))))
        labels.append(int(rng.integers(0, 2)))
    return Masks(np.array(masks), labels=labels, class_names=NAMES)


def _predict(rng, gt):
    """Shift, drop and add masks; random scores; sometimes a wrong class."""
    out, labels = [], []
    for m, lab in zip(gt.masks, gt.labels, strict=True):
        if rng.random() < 0.2:
            continue
        out.append(np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1)))
        labels.append(int(lab) if rng.random() < 0.85 else 1 - int(lab))
    for _ in range(int(rng.integers(0, 3))):
        out.append(_square(gt.image_size, int(rng.integers(0, 50)), int(rng.integers(0, 60)), 8, 8))
        labels.append(int(rng.integers(0, 2)))
    if not out:
        return Masks(np.zeros((0, *gt.image_size), bool), labels=[], class_names=NAMES)
    return Masks(np.array(out), scores=rng.random(len(out)), labels=labels, class_names=NAMES)


def _reference_coco(truth, predictions, iou_type):
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, dets = [], [], []
    for i, (gt, pred) in enumerate(zip(truth, predictions, strict=True), start=1):
        images.append({"id": i, "height": gt.height, "width": gt.width})
        for a in gt.to_coco(image_id=i, start_id=len(anns) + 1):
            a["category_id"] += 1
            anns.append(a)
        for d in pred.to_coco(image_id=i):
            d["category_id"] += 1
            dets.append(d)
    for a in anns:
        a["iscrowd"] = 0
    gt_api = COCO(copy.deepcopy({"images": images, "annotations": anns,
                                 "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "blob"}]}))
    ev = COCOeval_faster(gt_api, gt_api.loadRes(copy.deepcopy(dets)), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[:3]


def test_coco_ap_matches_faster_coco_eval():
    pytest.importorskip("faster_coco_eval")
    rng = np.random.default_rng(0)
    truth = [_scene(rng) for _ in range(6)]
    preds = [_predict(rng, gt) for gt in truth]
    got = coco_metrics(preds, truth, NAMES)
    assert 0.05 < got["mask_ap"] < 0.95  # a real mix of hits and misses, not a degenerate case
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        ref = _reference_coco(truth, preds, iou_type)
        np.testing.assert_allclose([got[f"{prefix}_ap"], got[f"{prefix}_ap50"], got[f"{prefix}_ap75"]], ref, atol=1e-6)
    assert set(got["per_class_mask_ap"]) == set(NAMES)
    # fewer than 100 detections per image: a larger cap changes nothing (COCO's summary only reads maxDets=100)
    more = coco_metrics(preds, truth, NAMES, max_dets=300)
    assert all(more[k] == pytest.approx(got[k]) for k in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap"))
    assert np.nanmean(list(got["per_class_mask_ap"].values())) == pytest.approx(got["mask_ap"], abs=1e-9)


def test_coco_ap_perfect_empty_and_crowd():
    rng = np.random.default_rng(1)
    truth = [_scene(rng) for _ in range(3)]
    perfect = coco_metrics(truth, truth, NAMES)
    assert perfect["mask_ap"] == pytest.approx(1.0) and perfect["box_ap75"] == pytest.approx(1.0)
    empty = [Masks(np.zeros((0, 64, 80), bool), labels=[], class_names=NAMES) for _ in truth]
    assert coco_metrics(empty, truth, NAMES)["mask_ap"] == 0.0
    # a prediction on a crowd region is neither a hit nor a false positive
    gt = InstanceSample("a.png", 64, 80, [
        InstanceObject("cell", InstanceMask.from_array(_square((64, 80), 5, 5, 10, 10))),
        InstanceObject("cell", InstanceMask.from_array(_square((64, 80), 30, 30, 20, 20)), iscrowd=True)])
    pred = Masks(np.array([_square((64, 80), 5, 5, 10, 10), _square((64, 80), 32, 32, 10, 10)]),
                 scores=[0.5, 0.9], labels=[0, 0])
    assert coco_metrics([pred], [gt], NAMES)["mask_ap"] == pytest.approx(1.0)
    assert dsb_metrics([pred[[0]]], [gt], NAMES)["dsb_score"] == 1.0


def test_metrics_refuse_mismatched_inputs():
    gt = Masks(_square((32, 32), 2, 2, 5, 5)[None], labels=[0])
    with pytest.raises(InputError, match="differs from ground truth"):
        coco_metrics([Masks(_square((16, 16), 2, 2, 5, 5)[None], labels=[0])], [gt], NAMES)
    with pytest.raises(InputError, match="2 predictions for 1"):
        dsb_metrics([gt, gt], [gt])
    sample = InstanceSample("x.png", 32, 32, [InstanceObject("dog", InstanceMask.from_array(gt.masks[0]))])
    with pytest.raises(InputError, match="dog"):
        coco_metrics([gt], [sample], NAMES)


def _dsb(pred_masks, gt_masks, size=(40, 40)):
    wrap = lambda ms: Masks(np.array(ms, bool).reshape(-1, *size), labels=[0] * len(ms))  # noqa: E731
    return dsb_metrics([wrap(pred_masks)], [wrap(gt_masks)])


def test_dsb_hand_built_cases():
    a, b = _square((40, 40), 2, 2, 10, 10), _square((40, 40), 20, 20, 10, 10)
    assert _dsb([a, b], [a, b])["dsb_score"] == 1.0
    missed = _dsb([a], [a, b])
    assert missed["dsb_score"] == pytest.approx(0.5) and missed["recall_50"] == 0.5 and missed["precision_50"] == 1.0
    extra = _dsb([a, b, _square((40, 40), 30, 2, 5, 5)], [a, b])
    assert extra["dsb_score"] == pytest.approx(2 / 3) and extra["f1_50"] == pytest.approx(0.8)
    # shifted by one column: IoU = 90/110 = 0.818, a hit at t = 0.50..0.80 (7 of 10 thresholds)
    shifted = _dsb([_square((40, 40), 2, 3, 10, 10)], [a])
    assert shifted["dsb_score"] == pytest.approx(0.7)
    assert _dsb([], [])["dsb_score"] == 1.0
    assert _dsb([], [a])["dsb_score"] == 0.0 and _dsb([a], [])["dsb_score"] == 0.0


def _plain_dsb(preds, truth):
    """Dense IoU with numpy, greedy matching (exact for non-overlapping ground truth at IoU > 0.5)."""
    scores = []
    for p, g in zip(preds, truth, strict=True):
        pm, gm = p.masks.reshape(len(p), -1), g.masks.reshape(len(g), -1)
        inter = pm.astype(int) @ gm.T.astype(int)
        union = pm.sum(1)[:, None] + gm.sum(1)[None, :] - inter
        iou = inter / np.maximum(union, 1)
        per_t = []
        for t in np.arange(0.5, 1.0, 0.05):
            used, tp = set(), 0
            for i in range(len(p)):
                for j in range(len(g)):
                    if j not in used and iou[i, j] > t:
                        used.add(j)
                        tp += 1
                        break
            fp, fn = len(p) - tp, len(g) - tp
            per_t.append(1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn))
        scores.append(np.mean(per_t))
    return float(np.mean(scores))


def test_dsb_matches_plain_implementation():
    rng = np.random.default_rng(3)
    truth = [_scene(rng, n=int(rng.integers(1, 8))) for _ in range(8)]
    preds = [_predict(rng, gt) for gt in truth]
    got = dsb_metrics(preds, truth)
    assert got["dsb_score"] == pytest.approx(_plain_dsb(preds, truth), abs=1e-12)
    assert 0.0 < got["dsb_score"] < 1.0
    both = instance_metrics(preds, truth, NAMES, score_threshold=0.5)
    kept = [p[np.flatnonzero(p.scores >= 0.5)] for p in preds]
    assert both["dsb_score"] == pytest.approx(_plain_dsb(kept, truth), abs=1e-12)
    assert np.isfinite(both["mask_ap"])
