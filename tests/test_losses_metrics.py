"""Losses (parsing, ignore_index, binary/multiclass) and metrics checked against torchmetrics and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imseg.errors import ConfigError, DatasetError
from imseg.semantic.losses import build_loss, parse_loss
from imseg.semantic.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion

IGNORE = 255


def _random_batch(num_classes: int, seed: int = 0, ignore_frac: float = 0.2):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, max(num_classes, 1), 16, 20, generator=gen)
    target = torch.randint(0, max(num_classes, 2), (2, 16, 20), generator=gen)
    ignore = torch.rand(2, 16, 20, generator=gen) < ignore_frac
    return logits, target.masked_fill(ignore, IGNORE), ignore


def test_parse_loss_weights_and_errors():
    assert parse_loss("ce+dice") == [(1.0, "ce"), (1.0, "dice")]
    assert parse_loss("0.5*ce + 1.0*dice") == [(0.5, "ce"), (1.0, "dice")]
    assert parse_loss({"focal": 2, "lovasz": 1}) == [(2.0, "focal"), (1.0, "lovasz")]
    with pytest.raises(ConfigError, match="unknown loss 'dicee'"):
        parse_loss("ce+dicee")
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_loss("ce+*dice")
    with pytest.raises(ConfigError, match="binary"):
        build_loss("bce", num_classes=3)


def test_ce_matches_torch_and_ignores_pixels():
    logits, target, ignore = _random_batch(4)
    weights = [1.0, 2.0, 0.5, 1.5]
    ours = build_loss("ce", num_classes=4, ignore_index=IGNORE, class_weights=weights)(logits, target)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(ours, ref)
    # changing logits at ignored pixels changes nothing, for every loss term
    for spec in ("ce", "dice", "focal", "lovasz", "tversky", "jaccard", "0.3*ce+0.7*dice"):
        loss = build_loss(spec, num_classes=4, ignore_index=IGNORE)
        other = logits.clone()
        other[ignore.unsqueeze(1).expand_as(other)] = 50.0
        torch.testing.assert_close(loss(logits, target), loss(other, target), msg=spec)


def test_combo_is_weighted_sum_and_binary_mode():
    logits, target, _ = _random_batch(3, seed=1)
    combo = build_loss("0.5*ce+2*dice", num_classes=3, ignore_index=IGNORE)
    ce = build_loss("ce", num_classes=3, ignore_index=IGNORE)(logits, target)
    dice = build_loss("dice", num_classes=3, ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(combo(logits, target), 0.5 * ce + 2 * dice)
    assert set(combo.last_terms) == {"ce", "dice"}
    # binary: one logit channel, BCE equals torch's on valid pixels
    blogits, btarget, ignore = _random_batch(1, seed=2)
    ours = build_loss("ce", num_classes=1, ignore_index=IGNORE)(blogits, btarget)
    valid = ~ignore
    ref = torch.nn.functional.binary_cross_entropy_with_logits(blogits[:, 0][valid], btarget[valid].float())
    torch.testing.assert_close(ours, ref)
    for spec in ("bce+dice", "focal", "lovasz", "tversky", "jaccard"):
        assert torch.isfinite(build_loss(spec, num_classes=1, ignore_index=IGNORE)(blogits, btarget))


def test_loss_decreases_when_fitting_and_rejects_bad_labels():
    logits, target, _ = _random_batch(3, seed=3)
    param = torch.nn.Parameter(torch.zeros_like(logits))
    loss_fn = build_loss("ce+dice", num_classes=3, ignore_index=IGNORE)
    opt = torch.optim.Adam([param], lr=0.1)
    first = float(loss_fn(param, target).detach())
    for _ in range(30):
        opt.zero_grad()
        loss_fn(param, target).backward()
        opt.step()
    assert float(loss_fn(param, target).detach()) < 0.5 * first
    with pytest.raises(DatasetError, match="class value 7"):
        loss_fn(logits, torch.full((2, 16, 20), 7))
    assert float(loss_fn(logits, torch.full((2, 16, 20), IGNORE))) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_sklearn_and_torchmetrics(seed):
    from sklearn.metrics import confusion_matrix as sk_cm
    from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    num_classes = 5
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (3, 40, 30), generator=gen)
    pred = torch.where(torch.rand(target.shape, generator=gen) < 0.6, target,
                       torch.randint(0, num_classes, target.shape, generator=gen))
    target = target.masked_fill(torch.rand(target.shape, generator=gen) < 0.15, IGNORE)

    acc = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    for i in range(3):  # batch by batch == all at once
        acc.update(pred[i], target[i])
    cm = acc.matrix
    assert torch.equal(cm, confusion_matrix(pred, target, num_classes, IGNORE))

    valid = target != IGNORE
    t, p = target[valid].numpy(), pred[valid].numpy()
    labels = list(range(num_classes))
    np.testing.assert_array_equal(cm.numpy(), sk_cm(t, p, labels=labels))
    tm_cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE)(pred, target)
    np.testing.assert_array_equal(cm.numpy(), tm_cm.numpy())

    m = acc.compute()
    np.testing.assert_allclose(m["iou"].numpy(), jaccard_score(t, p, labels=labels, average=None))
    np.testing.assert_allclose(m["dice"].numpy(), f1_score(t, p, labels=labels, average=None))
    np.testing.assert_allclose(m["precision"].numpy(), precision_score(t, p, labels=labels, average=None))
    np.testing.assert_allclose(m["recall"].numpy(), recall_score(t, p, labels=labels, average=None))
    assert m["pixel_accuracy"] == pytest.approx(float((t == p).mean()))
    tm_miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE)(pred, target)
    assert m["miou"] == pytest.approx(float(tm_miou), abs=1e-6)


def test_merge_and_absent_classes():
    a = ConfusionMatrix(3)
    b = ConfusionMatrix(3)
    a.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    b.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    both = ConfusionMatrix(3)
    both.update(torch.tensor([0, 1, 1, 1, 1]), torch.tensor([0, 1, 0, 1, 1]))
    assert torch.equal(a.merge(b).matrix, both.matrix)
    m = metrics_from_confusion(both.matrix)
    assert np.isnan(float(m["iou"][2]))  # class 2 never appears: skipped in the mean
    assert m["miou"] == pytest.approx((0.5 + 0.75) / 2)
    with pytest.raises(Exception, match=r"class ids must lie in \[0, 2\]"):
        a.update(torch.tensor([3]), torch.tensor([0]))
