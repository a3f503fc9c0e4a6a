"""Test-time augmentation chosen on the validation split after training, and stored in the run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: scale sets tried for letterboxed runs (factors of imgsz), cheapest first: a tie keeps the cheaper one
SCALE_SETS = ((1.0,), (1.2,), (1.0, 1.2), (0.875, 1.0, 1.125), (1.0, 1.2, 1.4))


def candidates(resize: bool) -> list[tuple[bool, tuple[float, ...]]]:
    """(flip TTA, scales) pairs to try: scales only for letterboxed runs (native tiles keep their pixel size)."""
    scale_sets = SCALE_SETS if resize else ((1.0,),)
    return [(flip, scales) for flip in (False, True) for scales in scale_sets]


def cost(resize: bool, flips: str = "hv") -> float:
    """Forward passes per validation image (in units of one at the training size) that scoring every candidate
    costs: each (view, scale) is predicted once and the candidates average those predictions."""
    scales = {s for _, group in candidates(resize) for s in group}
    return (1 + len(flips)) * sum(s * s for s in scales)


def _view_probs(segmenter, rgb: np.ndarray, scales: set[float]) -> dict[tuple[str, float], np.ndarray]:
    """Probabilities of the image ("") and of each flip the run trained with ("h", "v"), at each scale."""
    out = {}
    for flip in ("", *segmenter.tta_flips):
        axis = {"": None, "h": 1, "v": 0}[flip]
        view = rgb if axis is None else np.ascontiguousarray(np.flip(rgb, axis))
        for scale in scales:
            probs = segmenter.predict_probs(view, tta=False, scales=(scale,))
            out[(flip, scale)] = probs if axis is None else np.flip(probs, axis + 1)
    return out


def choose_tta(run_dir: str | Path, val_dataset, resize: bool, images: int | None = None) -> dict[str, Any]:
    """Score every candidate on ``val_dataset`` (full resolution; ``images`` evenly spaced ones, default all) with
    the run's best.pt; the best mean IoU wins.

    Returns ``{"tta": bool, "scales": [...], "val_miou": {candidate: score}, "reason": ...}``. A candidate's
    prediction is the mean of its views' probabilities, as :class:`~imseg.semantic.infer.SemanticSegmenter` averages.
    """
    import torch

    from ..infer import load_run
    from ..metrics import ConfusionMatrix

    segmenter = load_run(run_dir, device="cpu", resize=resize, tta=False, scales=(1.0,))
    options = candidates(resize)
    matrices = {c: ConfusionMatrix(segmenter.num_classes, segmenter.ignore_index) for c in options}
    scales = {s for _, group in options for s in group}
    indices = sorted({int(i) for i in np.linspace(0, len(val_dataset) - 1, min(images or len(val_dataset),
                                                                                 len(val_dataset)))})
    for i in indices:
        rgb, mask = val_dataset.read_raw(i)
        views = _view_probs(segmenter, rgb, scales)
        truth = torch.from_numpy(np.asarray(mask, dtype=np.int64))
        for flip, group in options:
            flips = ("", *segmenter.tta_flips) if flip else ("",)
            probs = np.mean([views[(f, s)] for s in group for f in flips], axis=0)
            matrices[(flip, group)].update(torch.from_numpy(probs.argmax(0)), truth)
    scores = {c: float(m.compute()["miou"]) for c, m in matrices.items()}
    best = max(scores, key=scores.get)  # first of equals: no flips, fewer sizes
    plain = scores[(False, (1.0,))]
    return {
        "tta": best[0], "scales": list(best[1]),
        "val_miou": {f"flip {'on' if k[0] else 'off'}, scales {','.join(map(str, k[1]))}": round(v, 4)
                     for k, v in scores.items()},
        "reason": f"highest validation mIoU {scores[best]:.4f} of {len(scores)} candidates (without test-time "
                  f"augmentation {plain:.4f}), on {len(indices)} of {len(val_dataset)} validation images at full resolution",
    }


def store_inference(run_dir: str | Path, inference: dict[str, Any]) -> None:
    """Write ``inference`` defaults (resize, tta, scales) into the run's best.pt and last.pt."""
    import torch

    from ...io import atomic_path
    from ..checkpoints import load_checkpoint

    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / "weights" / name
        if path.is_file():
            payload = load_checkpoint(path)
            payload["inference"] = {**(payload.get("inference") or {}), **inference}
            with atomic_path(path) as tmp:
                torch.save(payload, tmp)
