"""SAM / SAM 2 training losses against the official SAM 2 training code (``training/loss_fns.py``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
official = pytest.importorskip("training.loss_fns", reason="official SAM 2 training losses (sam2 + tensordict)")

from imseg.errors import ConfigError, InputError  # noqa: E402
from imseg.sam import losses  # noqa: E402

ATOL = 1e-6


def _targets(gen, n, h, w, absent=()):
    """Random blobs (coarse noise upsampled) with the objects in ``absent`` empty."""
    coarse = torch.rand(n, 1, max(h // 4, 1), max(w // 4, 1), generator=gen)
    masks = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[:, 0] > 0.5
    for i in absent:
        masks[i] = False
    return masks.float()


def _outputs(gen, n, m, h, w, steps):
    return {
        "multistep_pred_multimasks_high_res": [torch.randn(n, m, h, w, generator=gen) * 3 for _ in range(steps)],
        "multistep_pred_ious": [torch.rand(n, m, generator=gen) for _ in range(steps)],
        "multistep_object_score_logits": [torch.randn(n, 1, generator=gen) * 2 for _ in range(steps)],
    }


def _close(ours, theirs):
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=ATOL, rtol=0), (ours, theirs)


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (4, 3, 16, 24), (2, 3, 64, 64), (5, 1, 32, 17)])
@pytest.mark.parametrize("multimask", [True, False])
def test_elementwise_losses_match_official(shape, multimask):
    gen = torch.Generator().manual_seed(sum(shape))
    n, m, h, w = shape
    inputs = torch.randn(shape, generator=gen) * 4
    inputs[0, 0] = -inputs[0, 0].abs() - 0.1  # an empty prediction of an absent object: IoU union 0
    targets = _targets(gen, n * m, h, w, absent=(0,)).reshape(shape)
    pred_ious = torch.rand(n, m, generator=gen)
    num_objects = float(n)
    flat = (inputs, targets) if multimask else (inputs.flatten(1), targets.flatten(1))
    for alpha, gamma in [(0.25, 2), (-1, 0), (0.6, 1.5)]:
        _close(
            losses.sigmoid_focal_loss(*flat, num_objects, alpha, gamma, loss_on_multimask=multimask),
            official.sigmoid_focal_loss(*flat, num_objects, alpha, gamma, loss_on_multimask=multimask),
        )
    _close(
        losses.dice_loss(*flat, num_objects, loss_on_multimask=multimask),
        official.dice_loss(*flat, num_objects, loss_on_multimask=multimask),
    )
    for use_l1 in (True, False):
        _close(
            losses.iou_loss(inputs, targets, pred_ious, num_objects, loss_on_multimask=multimask, use_l1_loss=use_l1),
            official.iou_loss(inputs, targets, pred_ious, num_objects, loss_on_multimask=multimask, use_l1_loss=use_l1),
        )


def test_bce_term_is_focal_without_balance_or_focusing():
    gen = torch.Generator().manual_seed(3)
    inputs = torch.randn(3, 3, 16, 16, generator=gen) * 3
    targets = _targets(gen, 9, 16, 16).reshape(3, 3, 16, 16)
    ours = losses.sigmoid_bce_loss(inputs, targets, 3.0, loss_on_multimask=True)
    _close(ours, official.sigmoid_focal_loss(inputs, targets, 3.0, alpha=-1, gamma=0, loss_on_multimask=True))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    _close(ours, expected.mean((2, 3)) / 3.0)


CASES = [
    # (n, m, h, w, steps, frames, absent, options)
    (3, 3, 32, 32, 1, 1, (), {}),
    (4, 1, 24, 40, 2, 1, (1,), {}),
    (2, 3, 16, 16, 3, 2, (0,), {"iou_use_l1_loss": True}),
    (5, 3, 32, 24, 2, 1, (0, 3), {"supervise_all_iou": True, "iou_use_l1_loss": True}),
    (4, 3, 32, 32, 2, 2, (2,), {"pred_obj_scores": True, "focal_gamma_obj_score": 0.0, "focal_alpha_obj_score": -1}),
    (3, 1, 16, 32, 1, 1, (0, 1, 2), {"pred_obj_scores": True, "focal_gamma_obj_score": 2.0, "focal_alpha_obj_score": 0.25}),
    (3, 3, 16, 16, 2, 1, (1,), {"pred_obj_scores": True, "supervise_all_iou": True, "focal_alpha": 0.5, "focal_gamma": 1}),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("weights", [losses.OFFICIAL_WEIGHTS, {"loss_mask": 1.0, "loss_dice": 1.0, "loss_iou": 0.5}])
def test_multistep_loss_matches_official_values_and_gradients(case, weights):
    n, m, h, w, steps, frames, absent, options = case
    gen = torch.Generator().manual_seed(n * 100 + m * 10 + steps)
    targets = torch.stack([_targets(gen, n, h, w, absent) for _ in range(frames)])
    outs = [_outputs(gen, n, m, h, w, steps) for _ in range(frames)]
    ours_outs = [{k: [t.clone().requires_grad_() for t in v] for k, v in o.items()} for o in outs]
    theirs_outs = [{k: [t.clone().requires_grad_() for t in v] for k, v in o.items()} for o in outs]

    ours = losses.MultiStepMultiMasksAndIous(dict(weights), **options)(ours_outs, targets)
    theirs = official.MultiStepMultiMasksAndIous(dict(weights), **options)(theirs_outs, targets)
    assert set(ours) == set(theirs) == {"loss_mask", "loss_dice", "loss_iou", "loss_class", "core_loss"}
    for key in theirs:
        _close(ours[key].detach(), torch.as_tensor(theirs[key]).detach())
    ours["core_loss"].backward()
    theirs["core_loss"].backward()
    for ours_frame, theirs_frame in zip(ours_outs, theirs_outs, strict=True):
        for key in ("multistep_pred_multimasks_high_res", "multistep_pred_ious"):
            for a, b in zip(ours_frame[key], theirs_frame[key], strict=True):
                _close(a.grad, b.grad)


def test_absent_objects_get_no_mask_loss_with_object_scores():
    gen = torch.Generator().manual_seed(0)
    targets = torch.zeros(1, 2, 16, 16)
    outs = [_outputs(gen, 2, 3, 16, 16, 1)]
    result = losses.MultiStepMultiMasksAndIous(dict(losses.OFFICIAL_WEIGHTS), pred_obj_scores=True)(outs, targets)
    assert result["loss_mask"] == 0 and result["loss_dice"] == 0 and result["loss_iou"] == 0
    assert result["loss_class"] > 0


def test_bce_variant_selects_and_reports_like_the_official_loss():
    gen = torch.Generator().manual_seed(1)
    targets = torch.stack([_targets(gen, 3, 32, 32, absent=(2,))])
    outs = [_outputs(gen, 3, 3, 32, 32, 2)]
    ours = losses.MultiStepMultiMasksAndIousBCE(pred_obj_scores=True)(outs, targets)
    # The official loss with alpha < 0 and gamma 0 is BCE: the same numbers must come out.
    theirs = official.MultiStepMultiMasksAndIous(
        dict(losses.BCE_DICE_WEIGHTS), focal_alpha=-1, focal_gamma=0, pred_obj_scores=True
    )(outs, targets)
    for key in theirs:
        _close(ours[key], theirs[key])


def test_bad_weights_and_shapes_are_clear_errors():
    with pytest.raises(ConfigError, match="loss_dice"):
        losses.MultiStepMultiMasksAndIous({"loss_mask": 20.0, "loss_iou": 1.0})
    with pytest.raises(ConfigError, match="unknown"):
        losses.MultiStepMultiMasksAndIous({"loss_mask": 1, "loss_dice": 1, "loss_iou": 1, "loss_focal": 1})
    loss = losses.MultiStepMultiMasksAndIous(dict(losses.OFFICIAL_WEIGHTS))
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(InputError, match="target size"):
        loss([_outputs(gen, 2, 3, 8, 8, 1)], torch.zeros(1, 2, 16, 16))
    with pytest.raises(InputError, match="frame"):
        loss([_outputs(gen, 2, 3, 8, 8, 1)], torch.zeros(2, 2, 8, 8))
    with pytest.raises(InputError, match=r"\[N, M, H, W\]"):
        losses.iou_loss(torch.zeros(2, 64), torch.zeros(2, 64), torch.zeros(2, 1), 2.0)
