"""Confusion-matrix segmentation metrics (torch; any device; mergeable across batches and DDP ranks).

The confusion matrix ``cm`` is (C, C) int64 with rows = truth and columns = prediction (the
scikit-learn convention). Pixels whose truth is ``ignore_index`` are not counted. Per-class scores
are NaN for classes with no truth and no prediction pixels; means skip NaN.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(C, C) int64 counts of (truth, prediction) pairs.

    Args:
        pred: predicted class ids, any shape (e.g. (B, H, W)), integer.
        target: truth class ids, same shape; ``ignore_index`` pixels are skipped.
        num_classes: C.
        ignore_index: truth value to skip, or None.
    """
    if pred.shape != target.shape:
        raise InputError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel():
        lo = min(int(target.min()), int(pred.min()))
        hi = max(int(target.max()), int(pred.max()))
        if lo < 0 or hi >= num_classes:
            raise InputError(
                f"class ids must lie in [0, {num_classes - 1}] (ignore_index={ignore_index}); found values in [{lo}, {hi}]"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor | float]:
    """Scores of a (C, C) confusion matrix.

    Returns per-class tensors (C,) ``iou``, ``dice`` (= F1), ``precision``, ``recall`` and the
    floats ``pixel_accuracy``, ``miou``, ``mdice``, ``mprecision``, ``mrecall`` (NaN-skipping means).
    """
    cm = cm.double()
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    nan = torch.tensor(float("nan"), dtype=cm.dtype, device=cm.device)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), nan)

    out: dict[str, torch.Tensor | float] = {
        "iou": ratio(tp, tp + fp + fn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }
    total = cm.sum()
    out["pixel_accuracy"] = float(tp.sum() / total) if total > 0 else float("nan")
    for key in ("iou", "dice", "precision", "recall"):
        value = out[key]
        out["m" + key] = float(value.nanmean()) if bool((~value.isnan()).any()) else float("nan")
    return out


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches; ``sync()`` sums it over DDP ranks.

    >>> cm = ConfusionMatrix(3, ignore_index=255)
    >>> cm.update(logits.argmax(1), masks)      # (B, H, W) each
    >>> cm.compute()["miou"]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, device: torch.device | str | None = None):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` integer class ids of equal shape."""
        if self.matrix.device != pred.device:
            self.matrix = self.matrix.to(pred.device)
        self.matrix += confusion_matrix(pred, target.to(pred.device), self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (e.g. from another process) in place; returns self."""
        if other.num_classes != self.num_classes:
            raise InputError(f"cannot merge confusion matrices of {other.num_classes} and {self.num_classes} classes")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def sync(self) -> torch.Tensor:
        """Sum the matrix over all ranks of the default process group (no-op without one); returns it."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self.matrix

    def compute(self) -> dict[str, torch.Tensor | float]:
        """Metrics of the accumulated matrix, see :func:`metrics_from_confusion`."""
        return metrics_from_confusion(self.matrix)
