"""TensorBoard for fine-tuning (``--logger csv,tensorboard``), written with :func:`imseg.semantic.loggers.make_loggers`.

Against the optimizer step: ``train/loss_step`` and ``lr`` every step; after each epoch's validation, the
epoch's ``metrics.csv`` row (``train/loss``, ``train/iou``, ``val/box_miou``, ``epoch``, ``epoch_s``) and
``val/overlay_i`` panels of the first validation images (photo | ground-truth objects | the objects predicted
from their tight boxes, boxes drawn). A resumed run hides the events of steps it trains again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..semantic.loggers import overlay_panel, step_loggers_base

__all__ = ["box_overlay", "make_finetune_logger_callback"]

#: longer side of an overlay panel in the event file (larger photos are subsampled)
PANEL_SIDE = 320
#: CSV columns that go to TensorBoard, and their tags
EPOCH_TAGS = {"train_loss": "train/loss", "train_iou": "train/iou", "val_box_miou": "val/box_miou",
              "epoch": "epoch", "epoch_s": "epoch_s"}


def _draw_box(panel: np.ndarray, box: Sequence[float], colour=(255, 255, 0)) -> None:
    h, w = panel.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = max(0, min(x0, w - 1)), max(0, min(x1, w - 1))
    y0, y1 = max(0, min(y0, h - 1)), max(0, min(y1, h - 1))
    panel[y0, x0:x1 + 1] = panel[y1, x0:x1 + 1] = colour
    panel[y0:y1 + 1, x0] = panel[y0:y1 + 1, x1] = colour


def box_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """photo | truth | prediction (boxes drawn on it): (h, 3w, 3) uint8, subsampled to at most PANEL_SIDE a side.

    ``truth``, ``pred``: (K, H, W) bool object masks; ``boxes``: (K, 4) x0, y0, x1, y1 in image pixels."""
    step = max(1, int(np.ceil(max(image.shape[:2]) / PANEL_SIDE)))
    labels = [np.any(m, axis=0)[::step, ::step].astype(np.int64) if len(m) else
              np.zeros(image.shape[:2], np.int64)[::step, ::step] for m in (truth, pred)]
    small = np.ascontiguousarray(image[::step, ::step])
    panel = overlay_panel(small, labels[0], labels[1], num_classes=2)
    width = small.shape[1]
    prediction = panel[:, 2 * width:]
    for box in np.asarray(boxes, dtype=np.float64) / step:
        _draw_box(prediction, box)
    return panel


def _overlays(module: Any, dataset: Any, count: int) -> list[np.ndarray]:
    """Box-prompt overlays of the first ``count`` validation images with objects."""
    from ..io import read_image

    panels = []
    was_training = module.training
    module.eval()
    try:
        for index in range(len(dataset)):
            if len(panels) >= count:
                break
            item = dataset[index]
            if not len(item["full_masks"]):
                continue
            with torch.no_grad(), torch.autocast(module.device.type, enabled=False):
                masks, boxes = module.family.box_masks(module.model, module.embed(item), item)
            panels.append(box_overlay(read_image(dataset.samples[index].image), item["full_masks"], masks, boxes))
    finally:
        module.train(was_training)
    return panels


def make_finetune_logger_callback(spec: str | Sequence[str] | None, artifacts: Any, val_dataset: Any,
                                  count: int = 4):
    """A Lightning callback logging a fine-tuning run to ``make_loggers(spec, run dir)``. Epoch values come from
    ``artifacts.record`` (it calls :meth:`log_epoch`), so an epoch cut short by the time budget and validated
    after fit is logged too; :meth:`close` is called when the run is finished."""

    class FinetuneLoggers(step_loggers_base(spec, artifacts)):
        def log_epoch(self, trainer, module, row: Mapping[str, Any]) -> None:
            if not self.active:
                return
            step = int(trainer.global_step)
            values = {tag: row[key] for key, tag in EPOCH_TAGS.items() if row.get(key) is not None}
            self.loggers.log_scalars(values, step)
            for i, panel in enumerate(_overlays(module, val_dataset, count)):
                self.loggers.log_image(f"val/overlay_{i}", panel, step)
            self.loggers.flush()

        def on_exception(self, trainer, module, exception: BaseException) -> None:
            self.close()

    return FinetuneLoggers()
