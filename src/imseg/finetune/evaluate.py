"""``imseg val --run`` for fine-tuning runs: box-prompt mIoU, mIoU after 1/3/5 clicks and NoC@85/90 of the
fine-tuned weights and of the checkpoint the run started from, on the same split with the same click simulator
(:mod:`imseg.sam.interactive_eval`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["evaluate_model", "evaluate_run"]


def evaluate_model(model: torch.nn.Module, samples: list, *, max_clicks: int = 20) -> dict[str, float]:
    """Interactive scores of ``model`` on :class:`~imseg.finetune.data.FtSample` s (each image encoded once)."""
    from .sam2_recipe import is_sam2

    if is_sam2(model):
        from .sam2_run import evaluate_sam2_model

        return evaluate_sam2_model(model, samples, max_clicks=max_clicks)
    from ..io import read_image
    from ..sam.interactive_eval import evaluate_interactive, sam_embedding, sam_predict_fn
    from ..sam.predictor import SamPredictor

    predictor = SamPredictor(model.eval())

    def pairs():
        for sample in samples:
            gt = torch.from_numpy(sample.masks())
            if len(gt):
                yield sam_embedding(predictor, read_image(sample.image)), gt

    report = evaluate_interactive(sam_predict_fn(predictor), pairs(), max_clicks=max_clicks)
    return dict(report.as_row(), objects=report.num_objects)


def evaluate_run(run: str | os.PathLike, *, split: str = "val", data: Any = None, weights: str = "best",
                 compare: bool = True, device: str = "auto", max_clicks: int = 20) -> dict[str, dict[str, float]]:
    """{"start": scores, "fine-tuned": scores} on ``split`` of the run's data set (or ``data``)."""
    from ..device import resolve_device
    from .data import load_finetune_data
    from .run import build_start_model, load_finetune_run, read_run_config

    cfg = read_run_config(run)
    options = cfg.get("train") if isinstance(cfg, dict) else None
    needed = ("data", "objects", "min_area", "val_fraction", "seed", "model", "checkpoint", "imgsz", "random_init")
    missing = [key for key in needed if not isinstance(options, dict) or key not in options]
    if missing:
        raise ConfigError(f"{Path(run) / 'config.yaml'}: the fine-tuning options are incomplete (no train: "
                          f"{', '.join(missing)}); this file is written by imseg finetune: re-run it, or restore the "
                          "run's config.yaml.")
    found = load_finetune_data(data if data is not None else options["data"], objects=options["objects"],
                               min_area=options["min_area"], val_fraction=options["val_fraction"], seed=options["seed"])
    if split not in found.splits:
        raise ConfigError(f"the data set has no {split!r} split; it has {', '.join(found.splits)}.")
    samples = found.splits[split]
    dev = resolve_device(device)
    results = {}
    if compare:
        start, _ = build_start_model(options["model"], options["checkpoint"], int(options["imgsz"]),
                                     allow_random=options["random_init"], seed=options["seed"])
        results["start"] = evaluate_model(start.to(dev), samples, max_clicks=max_clicks)
    tuned = load_finetune_run(run, weights=weights, device=device).model
    results["fine-tuned"] = evaluate_model(tuned, samples, max_clicks=max_clicks)
    return results


def print_table(run: str | os.PathLike, split: str, results: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = [k for k in next(iter(results.values())) if k != "objects"]
    n = next(iter(results.values()))["objects"]
    table = Table(title=f"{Path(run)} on {split} ({n} objects)")
    table.add_column("weights")
    for col in columns:
        table.add_column(col, justify="right")
    for label, row in results.items():
        table.add_row(label, *(f"{row[c]:.4f}" if c.startswith(("box", "mIoU")) else f"{row[c]:.2f}" for c in columns))
    Console().print(table)
