"""Interactive metrics (box mIoU, mIoU@k clicks, NoC) with oracles whose scores are known, and SAM plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imseg.errors import ConfigError, InputError  # noqa: E402
from imseg.sam import clicks  # noqa: E402
from imseg.sam.interactive_eval import InteractivePrompt, evaluate_interactive, sam_embedding, sam_predict_fn  # noqa: E402


def _objects():
    """Three disjoint objects of one 40 x 50 image: two rectangles of 10 rows and an L-shape."""
    gt = torch.zeros(3, 40, 50, dtype=torch.bool)
    gt[0, 2:12, 3:20] = True
    gt[1, 20:30, 5:45] = True
    gt[2, 14:18, 25:48] = True
    gt[2, 14:38, 44:48] = True
    return gt


def _which_object(gt, prompt, row):
    """The object a prompt row is about: the one whose box it is, or which holds its first click."""
    if prompt.boxes is not None:
        boxes = clicks.mask_to_box(gt[:, None])[:, 0].float()
        return int((boxes == prompt.boxes[row]).all(-1).nonzero()[0, 0])
    x, y = prompt.point_coords[row, 0].long().tolist()
    return int(gt[:, y, x].nonzero()[0, 0])


def _oracle(gt, reveal=None, calls=None):
    """Logits of the exact object, or (``reveal(object, clicks)`` rows of it) after that many clicks."""

    def predict(embedding, prompt):
        if calls is not None:
            calls.append(prompt)
        out = torch.full((len(_rows(prompt)), *gt.shape[1:]), -10.0)
        for row in _rows(prompt):
            obj = _which_object(gt, prompt, row)
            mask = gt[obj].clone()
            if reveal is not None and prompt.boxes is None:
                n_clicks = int((prompt.point_labels[row] >= 0).sum())
                top = int(mask.any(1).nonzero()[0, 0])
                mask[top + reveal(obj, n_clicks) :] = False
            out[row][mask] = 10.0
        return out, out[:, None, ::4, ::4].clone()

    return predict


def _rows(prompt):
    return range((prompt.boxes if prompt.boxes is not None else prompt.point_coords).shape[0])


def test_exact_oracle_scores_perfectly_with_one_click():
    gt = _objects()
    report = evaluate_interactive(_oracle(gt), [(None, gt), ("empty image", torch.zeros(0, 40, 50))])
    assert report.box_miou == 1.0 and report.miou_at == {1: 1.0, 3: 1.0, 5: 1.0}
    assert report.noc == {0.85: 1.0, 0.9: 1.0} and report.num_objects == 3
    assert [len(curve) for curve in report.click_ious] == [5, 5, 5]  # stops after max(click_counts)
    assert report.as_row() == {"box_mIoU": 1.0, "mIoU@1": 1.0, "mIoU@3": 1.0, "mIoU@5": 1.0, "NoC@85": 1.0, "NoC@90": 1.0}


def test_empty_oracle_scores_zero_and_needs_the_cap():
    gt = _objects()
    empty = lambda embedding, prompt: (torch.full((len(_rows(prompt)), 40, 50), -1.0), None)  # noqa: E731
    report = evaluate_interactive(empty, [(None, gt)], max_clicks=20)
    assert report.box_miou == 0.0 and report.miou_at == {1: 0.0, 3: 0.0, 5: 0.0}
    assert report.noc == {0.85: 20.0, 0.9: 20.0}
    assert [len(curve) for curve in report.click_ious] == [20, 20, 20]


def test_scripted_oracle_gives_the_expected_curve_and_noc():
    gt = _objects()[:2]  # rectangles of 10 rows: revealing k rows gives IoU k / 10
    calls = []
    reveal = lambda obj, k: k if obj == 0 else min(k, 8)  # noqa: E731 object 1 never passes IoU 0.8
    report = evaluate_interactive(_oracle(gt, reveal, calls), [(None, gt)], max_clicks=20)
    assert report.box_miou == 1.0
    for k, value in report.miou_at.items():
        assert math.isclose(value, k / 10, abs_tol=1e-6)
    assert report.noc == {0.85: (9 + 20) / 2, 0.9: (9 + 20) / 2}
    assert [len(curve) for curve in report.click_ious] == [9, 20]
    # Every correction is a positive click below the revealed rows, and the last logits come back as mask prompt.
    click_calls = [c for c in calls if c.boxes is None]
    assert click_calls[0].mask_input is None and click_calls[1].mask_input is not None
    last = click_calls[-1]
    assert last.point_labels.shape == (1, 20) and bool((last.point_labels == 1).all())
    ys = last.point_coords[0, :, 1]
    assert bool((ys[1:] >= ys[:-1]).all()) and bool((ys[8:] >= 28).all())  # the error shrinks to rows 28, 29


def test_bad_samples_and_settings_are_clear_errors():
    gt = _objects()
    with pytest.raises(InputError, match=r"objects \[1\] have empty masks"):
        gt_bad = gt.clone()
        gt_bad[1] = False
        evaluate_interactive(_oracle(gt), [(None, gt_bad)])
    with pytest.raises(InputError, match="no objects"):
        evaluate_interactive(_oracle(gt), [(None, np.zeros((0, 4, 4), bool))])
    with pytest.raises(InputError, match="ground-truth size"):
        evaluate_interactive(lambda e, p: (torch.zeros(3, 8, 8), None), [(None, gt)])
    with pytest.raises(ConfigError):
        evaluate_interactive(_oracle(gt), [(None, gt)], max_clicks=4)
    with pytest.raises(InputError, match=r"\[N, H, W\]"):
        evaluate_interactive(_oracle(gt), [(None, gt[0])])


@pytest.mark.slow  # encodes a 1024 px image with TinyViT
def test_random_mobile_sam_runs_through_the_protocol(mobile_sam_checkpoint, sample_image):
    from imseg.sam import SamPredictor, sam_model_registry

    predictor = SamPredictor(sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint))
    gt = torch.zeros(2, 256, 256, dtype=torch.bool)
    gt[0, 40:120, 60:150] = True
    gt[1, 150:230, 30:90] = True
    embedding = sam_embedding(predictor, sample_image)
    predict = sam_predict_fn(predictor)
    report = evaluate_interactive(predict, [(embedding, gt)], max_clicks=6)
    assert report.num_objects == 2 and 0 <= report.box_miou <= 1
    assert all(0 <= v <= 1 for v in report.miou_at.values()) and all(1 <= v <= 6 for v in report.noc.values())
    # The adapter's box masks are the predictor's own answer for that box in image pixels.
    logits, low_res = predict(embedding, InteractivePrompt(boxes=torch.tensor([[60.0, 40.0, 149.0, 119.0]])))
    direct, _, _ = predictor.predict(box=np.array([60, 40, 149, 119]), multimask_output=False, return_logits=True)
    assert torch.allclose(logits[0], torch.as_tensor(direct[0]), atol=1e-4) and low_res.shape == (1, 1, 256, 256)


@pytest.mark.slow  # encodes a 1024 px image with SAM 2.1 tiny
def test_random_sam2_runs_through_the_protocol(tmp_path, sample_image):
    from conftest import build_official_sam2
    from imseg.sam.interactive_eval import predictor_samples, sam2_predict_fn
    from imseg.sam2 import SAM2ImagePredictor, build_sam2

    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_official_sam2().state_dict()}, path)
    predictor = SAM2ImagePredictor(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", path, device="cpu"))
    gt = torch.zeros(2, 256, 256, dtype=torch.bool)
    gt[0, 40:120, 60:150] = True
    gt[1, 150:230, 30:90] = True
    predict = sam2_predict_fn(predictor)
    report = evaluate_interactive(predict, predictor_samples(predictor, [(sample_image, gt)]), max_clicks=6)
    assert report.num_objects == 2 and 0 <= report.box_miou <= 1
    assert all(1 <= v <= 6 for v in report.noc.values())
    logits, _ = predict(None, InteractivePrompt(boxes=torch.tensor([[60.0, 40.0, 149.0, 119.0]])))
    direct, _, _ = predictor.predict(box=np.array([60, 40, 149, 119]), multimask_output=False, return_logits=True)
    assert torch.allclose(logits[0], torch.as_tensor(direct[0]), atol=1e-4)
