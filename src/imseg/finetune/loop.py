"""The pieces of the fine-tuning loop around the LightningModule: loaders (with the embedding cache), the
callbacks that write the run directory and keep the wall-clock budget, and the final validation and plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..semantic.loggers import parse_logger_spec
from .data import describe, load_finetune_data
from .dataset import collate
from .run import append_metrics, plot_metrics, save_official

__all__ = ["build_callbacks", "build_loaders", "finish"]


def build_loaders(cfg: Any, model: torch.nn.Module, frozen: bool, precision: str, data: Any = None):
    """{"train", "val"} DataLoaders, the data (read from ``cfg.data`` unless given), and the embedding cache
    (None unless the encoder is frozen)."""
    from .cache import EmbeddingCache, default_cache_root, model_key

    if data is None:
        data = load_finetune_data(cfg.data, objects=cfg.objects, min_area=cfg.min_area,
                                  val_fraction=cfg.val_fraction, seed=cfg.seed)
    cache = None
    if frozen and cfg.cache:
        root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_root()
        cache = EmbeddingCache(root, model_key(model, cfg.imgsz) + ("-bf16" if "bf16" in precision else ""))
    from .families import family_of

    dataset = family_of(model).dataset
    train = dataset(data.splits["train"], cfg.imgsz, cache, augment=True, seed=cfg.seed)
    val = dataset(data.splits["val"], cfg.imgsz, cache, full_masks=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader
    loaders = {
        "train": loader(train, batch_size=cfg.batch, shuffle=True, collate_fn=collate, num_workers=cfg.workers,
                        generator=gen),
        "val": loader(val, batch_size=cfg.batch, shuffle=False, collate_fn=collate, num_workers=cfg.workers),
    }
    return loaders, data, cache


class TimeBudget:
    """Stops training once ``minutes`` of wall-clock time have passed (checked after every step; under DDP rank 0's
    clock decides for every rank, so all stop after the same step)."""

    def __init__(self, minutes: float | None) -> None:
        self.limit = None if minutes is None else minutes * 60.0
        self.start = time.monotonic()
        self.hit = False

    def over(self) -> bool:
        return self.limit is not None and time.monotonic() - self.start >= self.limit

    def reached(self, trainer: Any) -> bool:
        """Rank 0's :meth:`over`, broadcast (a collective: every rank calls it after every step)."""
        return self.limit is not None and bool(trainer.strategy.broadcast(self.over(), src=0))


def build_callbacks(L: Any, cfg: Any, run_dir: Path, start: str, data: Any, precision: str, val_dataset: Any = None,
                    record: dict | None = None):
    """[callbacks], the RunArtifacts callback and the TimeBudget; ``record``: extra config.yaml entries (a plan)."""
    from dataclasses import asdict

    from ..semantic.run import _plain, write_yaml

    budget = TimeBudget(cfg.time)
    config_yaml = {"task": "finetune", "model": cfg.model, "variant": None, "imgsz": cfg.imgsz, "start": start,
                   "precision": precision, "data": data.spec, "notes": list(data.notes), "train": _plain(asdict(cfg)),
                   **(record or {})}

    class RunArtifacts(L.Callback):
        """metrics.csv, weights/best.pt + last.pt (official layout) and weights/last.ckpt after every epoch; under DDP
        rank 0 writes them, in the run directory rank 0 chose."""

        def __init__(self) -> None:
            self.run_dir, self.best, self.best_epoch = run_dir, -1.0, -1
            self.best_metrics: dict[str, float] = {}
            self.epoch_start = time.monotonic()
            self.counts = (0, 0, 0)
            self.final_recorded = False
            self.listeners: list[Any] = []  # log_epoch(trainer, module, row) after each row; close() at the end

        def state_dict(self) -> dict:
            return {"best": self.best, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics}

        def load_state_dict(self, state: dict) -> None:
            self.best, self.best_epoch, self.best_metrics = state["best"], state["best_epoch"], state["best_metrics"]

        def setup(self, trainer, module, stage: str) -> None:
            # every rank computed a candidate run directory before the others started; rank 0's is the run's
            self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))
            if trainer.is_global_zero:
                (self.run_dir / "weights").mkdir(parents=True, exist_ok=True)
                config_yaml["variant"] = module.model.variant
                write_yaml(self.run_dir / "config.yaml", config_yaml)
                print(f"fine-tuning {cfg.model} ({start}, train {cfg.train}, {precision}, {trainer.world_size} "
                      f"process{'es' if trainer.world_size > 1 else ''}) on {describe(data)}")
            trainer.strategy.barrier("imseg-finetune-run-dir")

        def _counts(self, module) -> tuple[int, int, int]:
            cache = module.cache
            return (module.encoder_calls, cache.hits if cache else 0, cache.misses if cache else 0)

        def _epoch_counts(self, trainer, module) -> list[int]:
            """This epoch's encoder calls, cache hits and misses, summed over the ranks (a collective)."""
            now = self._counts(module)
            counts = torch.tensor([a - b for a, b in zip(now, self.counts, strict=True)], dtype=torch.float64,
                                  device=trainer.strategy.root_device)
            return [int(v) for v in trainer.strategy.reduce(counts, reduce_op="sum").tolist()]

        def on_train_epoch_start(self, trainer, module) -> None:
            self.epoch_start = time.monotonic()
            self.counts = self._counts(module)
            trainer.train_dataloader.dataset.epoch = int(trainer.current_epoch)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if budget.reached(trainer):
                budget.hit = True
                trainer.should_stop = True

        def record(self, trainer, module, metrics: dict, loss: float, iou: float) -> None:
            """On every rank (it reduces the counts and saves last.ckpt, both collectives); rank 0 writes."""
            epoch = int(trainer.current_epoch)
            calls, hits, misses = self._epoch_counts(trainer, module)
            row = {"epoch": epoch, "train_loss": loss, "train_iou": iou, "val_box_miou": metrics.get("box_miou"),
                   "lr": max(float(g["lr"]) for g in trainer.optimizers[0].param_groups),
                   "epoch_s": round(time.monotonic() - self.epoch_start, 2),
                   "encoder_calls": calls, "cache_hits": hits, "cache_misses": misses}
            score = metrics.get("box_miou", float("nan"))
            improved = not np.isnan(score) and score > self.best
            if improved:  # on every rank: the callback state in last.ckpt is the same whichever rank resumes
                self.best, self.best_epoch, self.best_metrics = score, epoch, dict(metrics, epoch=epoch)
            if trainer.is_global_zero:
                append_metrics(self.run_dir / "metrics.csv", row)
                for listener in self.listeners:
                    listener.log_epoch(trainer, module, row)
                save_official(self.run_dir / "weights" / "last.pt", module.model)
                if improved:
                    save_official(self.run_dir / "weights" / "best.pt", module.model)
            trainer.save_checkpoint(self.run_dir / "weights" / "last.ckpt", weights_only=False)

        def on_train_epoch_end(self, trainer, module) -> None:
            if budget.hit and module.validated_at != trainer.global_step:
                return  # stopped inside the epoch without validating: finish() validates this state, then records it
            self.final_recorded = budget.hit
            logged = trainer.callback_metrics
            self.record(trainer, module, dict(module.val_metrics), float(logged.get("train/loss", float("nan"))),
                        float(logged.get("train/iou", float("nan"))))

    artifacts = RunArtifacts()
    callbacks: list[Any] = [artifacts]
    if "tensorboard" in parse_logger_spec(cfg.logger):
        from .loggers import make_finetune_logger_callback

        tensorboard = make_finetune_logger_callback(cfg.logger, artifacts, val_dataset, cfg.val_samples)
        artifacts.listeners.append(tensorboard)
        callbacks.append(tensorboard)
    return callbacks, artifacts, budget


def _validate(module: Any, loader: Any) -> dict[str, float]:
    module.eval()
    module.on_validation_epoch_start()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            module.validation_step(batch, i)
    ious = module.val_ious
    module.val_metrics = {"box_miou": float(np.mean(ious)) if ious else float("nan"), "objects": len(ious)}
    return module.val_metrics


def finish(trainer: Any, module: Any, artifacts: Any, budget: Any, val_loader: Any):
    """After fit: a run stopped by the time budget is validated and saved as at a normal end; plots.

    Under DDP every rank gets here after the same step: each validates the whole validation set (``val_loader`` is
    not sharded; the weights are the same on every rank, so are the metrics) and records (collectives); rank 0
    writes."""
    from .train import FinetuneResult

    run_dir = artifacts.run_dir
    if budget.hit and not artifacts.final_recorded:
        metrics = _validate(module, val_loader)
        logged = trainer.callback_metrics
        artifacts.record(trainer, module, metrics, float(logged.get("train/loss", float("nan"))),
                         float(logged.get("train/iou", float("nan"))))
    for listener in artifacts.listeners:
        listener.close()
    if trainer.is_global_zero and (run_dir / "metrics.csv").is_file():
        plot_metrics(run_dir / "metrics.csv", run_dir / "results.png")
    weights = run_dir / "weights"
    return FinetuneResult(run_dir=run_dir, best=weights / "best.pt", last=weights / "last.pt",
                          metrics=dict(artifacts.best_metrics), epochs_run=int(trainer.current_epoch),
                          steps=int(trainer.global_step), stopped_by_time=budget.hit)
