"""Splitting a wall-clock budget: planning time, training stages, and the test-time choice at the end.

Epochs come from the probe's measured seconds per epoch, so the cosine schedule reaches its end inside the budget.
A stage's Lightning ``max_time`` is only a safety net for a machine that slows down while it trains.
"""

from __future__ import annotations

import math
from typing import Any

#: fixed seconds a training stage spends outside its epochs (model and loaders built, plots and checkpoints written)
STAGE_OVERHEAD_S = 8.0
#: share of the budget kept free for what no measurement foresees (another process taking the CPU)
SAFETY = 0.04
#: test-time candidates are scored at full resolution: resizing back and tiling cost more than the forward pass
TTA_MARGIN = 1.6
#: the test-time choice may take this share of the budget; beyond it, it is made on fewer validation images
TTA_SHARE = 0.08
#: ... but on no fewer than these
TTA_MIN_IMAGES = 16


def tta_images(budget_s: float, val_image_s: float, val_images: int, candidate_cost: float, size_ratio: float,
               native: bool) -> int:
    """Validation images the test-time choice is made on: all, unless they would take over ``TTA_SHARE`` of the budget."""
    per_image = tta_seconds(val_image_s, 1, candidate_cost, size_ratio, native) - 3.0
    return min(val_images, max(TTA_MIN_IMAGES, int(TTA_SHARE * budget_s / max(per_image, 1e-9))))


def tta_seconds(val_image_s: float, val_images: int, candidate_cost: float, size_ratio: float, native: bool) -> float:
    """Seconds the test-time choice will take: every candidate on ``val_images`` validation images."""
    tiles = 2.25 if native else 1.0  # overlapping tiles cover a native image ~2.25 times
    return val_images * val_image_s * candidate_cost * size_ratio ** 2 * tiles * TTA_MARGIN + 3.0


def schedule(budget_s: float, elapsed_s: float, epoch_s: float, tta_s: float,
             second_stage: dict[str, Any] | None, size_ratio: float) -> dict[str, Any]:
    """Planned seconds and epochs of each part of the run (``size_ratio``: stage two's size / stage one's)."""
    stages = 2 if second_stage else 1
    train_s = budget_s * (1 - SAFETY) - elapsed_s - tta_s - STAGE_OVERHEAD_S * stages
    share = second_stage["share"] if second_stage else 0.0
    stage1_s = max(train_s * (1 - share), 0.0)
    epochs1 = max(1, math.floor(stage1_s / epoch_s))
    out = {"budget_s": round(budget_s, 1), "planning_s": round(elapsed_s, 1), "tta_s": round(tta_s, 1),
           "epoch_s": round(epoch_s, 2), "stage1": {"epochs": epochs1, "seconds": round(epochs1 * epoch_s, 1)}}
    if second_stage:
        epoch2_s = epoch_s * size_ratio ** 2
        epochs2 = max(1, math.floor(train_s * share / epoch2_s))
        out["stage2"] = {"epochs": epochs2, "seconds": round(epochs2 * epoch2_s, 1), "epoch_s": round(epoch2_s, 2)}
    planned = elapsed_s + tta_s + sum(out[k]["seconds"] + STAGE_OVERHEAD_S for k in ("stage1", "stage2") if k in out)
    out["planned_s"] = round(planned, 1)
    return out


def warmup_epochs(epochs: int) -> float:
    """One epoch of warm-up, less for very short runs (a tenth of them)."""
    return 1.0 if epochs >= 10 else round(epochs / 10, 2)
