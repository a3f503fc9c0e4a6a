"""Click simulation against the official SAM 2 samplers (``sam2.modeling.sam2_utils``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
official = pytest.importorskip("sam2.modeling.sam2_utils", reason="official sam2 package")
official_misc = pytest.importorskip("sam2.utils.misc")

from imseg.errors import ConfigError, InputError  # noqa: E402
from imseg.sam import clicks  # noqa: E402


def _blob(h, w, y0, y1, x0, x1):
    mask = torch.zeros(1, 1, h, w, dtype=torch.bool)
    mask[..., y0:y1, x0:x1] = True
    return mask


def _random_masks(gen, b, h, w, threshold=0.5):
    coarse = torch.rand(b, 1, max(h // 5, 2), max(w // 5, 2), generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear") > threshold


def _scene():
    """A ground-truth L-shape and a prediction shifted off it: false negatives and false positives."""
    gt = _blob(12, 14, 2, 9, 3, 8) | _blob(12, 14, 6, 9, 3, 12)
    pred = _blob(12, 14, 4, 11, 5, 13)
    return gt, pred


def test_mask_to_box_matches_official_and_rejects_empty_masks():
    gen = torch.Generator().manual_seed(0)
    masks = _random_masks(gen, 16, 40, 30)
    masks[3] = False
    masks[3, 0, 0, 29] = True  # one pixel in a corner
    assert torch.equal(clicks.mask_to_box(masks), official_misc.mask_to_box(masks).to(torch.int32))
    masks[5] = False
    with pytest.raises(InputError, match=r"\[5\] are empty"):
        clicks.mask_to_box(masks)


@pytest.mark.parametrize("noise, bound", [(0.1, 20), (0.3, 2), (0.0, 20)])
def test_box_jitter_equals_official_for_the_same_random_numbers(noise, bound):
    gen = torch.Generator().manual_seed(1)
    masks = _random_masks(gen, 64, 48, 64, threshold=0.7)
    masks[0, 0, 0:10, 0:5] = True  # boxes touching the border get clamped
    masks = masks[masks.flatten(1).any(-1)]
    torch.manual_seed(123)
    theirs = official.sample_box_points(masks, noise=noise, noise_bound=bound)
    torch.manual_seed(123)
    ours = clicks.sample_box_points(masks, noise=noise, noise_bound=bound)
    assert torch.allclose(ours[0], theirs[0].float(), atol=1e-5) and torch.equal(ours[1], theirs[1])


def test_box_jitter_statistics_are_uniform_within_the_bound():
    gt = _blob(70, 70, 10, 61, 12, 63)  # box (12, 10, 62, 60), sides 50 -> max jitter 5 px
    masks = gt.expand(20000, -1, -1, -1)
    coords, labels = clicks.sample_box_points(masks, generator=torch.Generator().manual_seed(0))
    offsets = coords.reshape(-1, 4) - torch.tensor([12.0, 10.0, 62.0, 60.0])
    assert bool((offsets.abs() <= 5 + 1e-4).all())
    assert offsets.mean(0).abs().max() < 0.1  # uniform on [-5, 5]: mean 0, std 2.89
    assert torch.allclose(offsets.std(0), torch.full((4,), 10 / 12**0.5), atol=0.05)
    assert torch.equal(labels, torch.tensor([[2, 3]], dtype=torch.int32).expand(20000, 2))


def _draw_stats(points, labels, height, width):
    index = (points[..., 1] * width + points[..., 0]).long().flatten()
    frequency = torch.bincount(index, minlength=height * width).float() / index.numel()
    return frequency.reshape(height, width), labels.float().mean().item(), points.reshape(-1, 2).mean(0)


@pytest.mark.parametrize("case", ["errors", "no_prediction", "exact"])
def test_random_error_clicks_match_official_statistics(case):
    gt, pred = _scene()
    if case == "no_prediction":
        pred = None
    elif case == "exact":
        pred = gt.clone()
    draws, num_pt = 8000, 3
    gts = gt.expand(draws, -1, -1, -1).contiguous()
    preds = None if pred is None else pred.expand(draws, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    theirs = _draw_stats(*official.sample_random_points_from_errors(gts, preds, num_pt), 12, 14)
    ours_points, ours_labels = clicks.sample_random_points_from_errors(
        gts, preds, num_pt, generator=torch.Generator().manual_seed(1)
    )
    assert ours_points.shape == (draws, num_pt, 2) and ours_labels.shape == (draws, num_pt)
    ours = _draw_stats(ours_points, ours_labels, 12, 14)

    # Support and labels: a positive click on a false negative, a negative one elsewhere in the error.
    pred_or_empty = torch.zeros_like(gt) if pred is None else pred
    false_neg = (gt & ~pred_or_empty)[0, 0]
    false_pos = (pred_or_empty & ~gt)[0, 0]
    region = (false_neg | false_pos) if case != "exact" else ~gt[0, 0]
    assert bool((ours[0][~region] == 0).all())
    xs, ys = ours_points[..., 0].long(), ours_points[..., 1].long()
    assert torch.equal(ours_labels.bool(), false_neg[ys, xs])

    expected_positive = false_neg.sum().item() / max(region.sum().item(), 1)
    assert abs(ours[1] - expected_positive) < 0.015 and abs(theirs[1] - expected_positive) < 0.015
    total_variation = 0.5 * (ours[0] - theirs[0]).abs().sum().item()
    assert total_variation < 0.05, total_variation  # uniform over the same pixels
    assert (ours[2] - theirs[2]).abs().max() < 0.1  # mean click position, px


def test_random_clicks_on_an_exact_full_image_mask_fall_back_like_the_official():
    gt = torch.ones(2, 1, 5, 6, dtype=torch.bool)
    ours = clicks.sample_random_points_from_errors(gt, gt.clone(), 2)
    theirs = official.sample_random_points_from_errors(gt, gt.clone(), 2)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert clicks.sample_random_points_from_errors(gt, gt, 0)[0].shape == (2, 0, 2)


@pytest.mark.parametrize("padding", [True, False])
def test_center_clicks_equal_official(padding):
    gen = torch.Generator().manual_seed(2)
    gt = _random_masks(gen, 40, 33, 47)
    pred = _random_masks(gen, 40, 33, 47, threshold=0.45)
    pred[0] = gt[0]  # exact: no error at all
    pred[1] = False  # nothing predicted
    gt[2] = False  # object absent, prediction not
    pred[3] = gt[3] & ~_blob(33, 47, 10, 14, 10, 14)[0]  # one square missed: a tie-free centre at its middle
    for p in (pred, None):
        ours = clicks.sample_one_point_from_error_center(gt, p, padding=padding)
        theirs = official.sample_one_point_from_error_center(gt, p, padding=padding)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert ours[1].dtype == torch.int32


def test_center_click_lands_in_the_middle_of_the_larger_error():
    gt = _blob(30, 30, 5, 25, 5, 25)
    pred = _blob(30, 30, 5, 25, 5, 12)  # misses the columns 12..24 (rows 5..24): a positive click at x=18
    points, labels = clicks.get_next_point(gt, pred, "center")
    x, y = points[0, 0].tolist()
    assert labels.item() == 1 and x == 18 and 11 <= y <= 18  # 6 px from the region's side, ties go to the top
    pred = _blob(30, 30, 0, 30, 0, 30)  # everything predicted: the largest error is background
    assert clicks.get_next_point(gt, pred, "center")[1].item() == 0


def test_initial_prompt_is_a_box_or_an_interior_click():
    gt, _ = _scene()
    gts = gt.expand(4, -1, -1, -1)
    box = clicks.sample_initial_prompt(gts, prob_to_use_box=1.0, generator=torch.Generator().manual_seed(0))
    assert box["point_labels"].tolist() == [[2, 3]] * 4
    click = clicks.sample_initial_prompt(gts, prob_to_use_box=0.0, generator=torch.Generator().manual_seed(0))
    xs, ys = click["point_coords"][:, 0, 0].long(), click["point_coords"][:, 0, 1].long()
    assert click["point_labels"].tolist() == [[1]] * 4 and bool(gt[0, 0][ys, xs].all())
    kinds = [
        clicks.sample_initial_prompt(gts, 0.5, generator=torch.Generator().manual_seed(s))["point_labels"][0, 0].item()
        for s in range(200)
    ]
    assert 70 < kinds.count(2) < 130


def test_split_box_corners_for_sam_and_concat_points():
    gt, pred = _scene()
    prompt = clicks.sample_initial_prompt(gt, 1.0, generator=torch.Generator().manual_seed(0))
    points, labels, boxes = clicks.split_box_corners(prompt)
    assert points is None and labels is None and torch.equal(boxes, prompt["point_coords"].reshape(1, 4))
    prompt = clicks.concat_points(prompt, *clicks.get_next_point(gt, pred, "center"))
    points, labels, boxes = clicks.split_box_corners(prompt)
    assert points.shape == (1, 1, 2) and labels.shape == (1, 1) and boxes.shape == (1, 4)
    with pytest.raises(InputError, match="corner"):
        clicks.split_box_corners({"point_coords": torch.zeros(1, 2, 2), "point_labels": torch.tensor([[1, 3]])})


def test_bad_inputs_are_clear_errors():
    gt, pred = _scene()
    with pytest.raises(InputError, match="bool"):
        clicks.get_next_point(gt.float(), pred, "uniform")
    with pytest.raises(InputError, match="logits > 0"):
        clicks.get_next_point(gt, pred.float(), "center")
    with pytest.raises(ConfigError, match="'uniform' or 'center'"):
        clicks.get_next_point(gt, pred, "random")
    with pytest.raises(InputError, match="empty"):
        clicks.sample_initial_prompt(torch.zeros_like(gt), 0.0)
    with pytest.raises(ConfigError):
        clicks.sample_initial_prompt(gt, 1.5)
    assert np.isfinite(clicks.sample_box_points(gt)[0].numpy()).all()
