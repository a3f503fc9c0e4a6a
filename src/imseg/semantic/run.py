"""The run directory: its name, config.yaml, metrics.csv and the callbacks that write weights/*.pt and last.ckpt."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import save_checkpoint
from .module import _lightning

CSV_FIELDS = ("epoch", "train_loss", "val_loss", "val_miou", "val_mdice", "val_pixel_accuracy", "lr")


def increment_run_dir(project: str | os.PathLike, name: str, exist_ok: bool = False) -> Path:
    """``project/name``, or ``name2``, ``name3``... if it exists (Ultralytics style)."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def write_yaml(path: Path, data: dict) -> None:
    """``data`` as YAML at ``path``, written atomically (a run's config.yaml)."""
    import yaml

    from ..io import write_bytes

    write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _make_run_callbacks():
    L = _lightning()

    class RunArtifacts(L.Callback):
        """Rank 0: metrics.csv row, weights/last.pt and best.pt (by val mIoU) after every validation epoch."""

        def __init__(self, run_dir: Path, meta: dict, config_yaml: dict) -> None:
            self.run_dir, self.meta, self.config_yaml = run_dir, meta, config_yaml
            self.best_miou = -1.0
            self.best_epoch = -1
            self.best_metrics: dict[str, float] = {}
            self.best_matrix: list | None = None

        def state_dict(self) -> dict:
            return {
                "best_miou": self.best_miou, "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "best_matrix": self.best_matrix,
            }

        def load_state_dict(self, state: dict) -> None:
            self.best_miou = state["best_miou"]
            self.best_epoch = state["best_epoch"]
            self.best_metrics = state["best_metrics"]
            self.best_matrix = state["best_matrix"]

        def setup(self, trainer, module, stage: str) -> None:
            # every rank computed a candidate run dir; rank 0's wins (no exp/exp2 race under DDP)
            self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))
            if trainer.is_global_zero:
                (self.run_dir / "weights").mkdir(parents=True, exist_ok=True)
                write_yaml(self.run_dir / "config.yaml", self.config_yaml)
            trainer.strategy.barrier("imseg-run-dir")

        def on_train_epoch_end(self, trainer, module) -> None:
            if trainer.sanity_checking:
                return
            epoch = int(trainer.current_epoch)
            metrics = dict(module.val_metrics)
            miou = metrics.get("miou", float("nan"))
            score = -math.inf if math.isnan(miou) else miou
            improved = score > self.best_miou
            if improved:
                self.best_miou, self.best_epoch, self.best_metrics = score, epoch, metrics
                self.best_matrix = module.val_matrix.tolist() if module.val_matrix is not None else None
            logged = trainer.callback_metrics  # on every rank: reading it reduces the sync_dist metrics (a collective)
            if trainer.is_global_zero:
                row = {
                    "epoch": epoch,
                    "train_loss": float(logged.get("train/loss", float("nan"))),
                    "val_loss": float(logged.get("val/loss", float("nan"))),
                    "val_miou": miou,
                    "val_mdice": metrics.get("mdice", float("nan")),
                    "val_pixel_accuracy": metrics.get("pixel_accuracy", float("nan")),
                    "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
                }
                _append_csv(self.run_dir / "metrics.csv", row)
                meta = dict(self.meta, epoch=epoch, metrics=metrics)
                save_checkpoint(self.run_dir / "weights" / "last.pt", module.eval_model, meta)
                if improved:
                    save_checkpoint(self.run_dir / "weights" / "best.pt", module.eval_model, meta)

    class LastCheckpoint(L.callbacks.Checkpoint):
        """weights/last.ckpt (resumable: optimizer, scheduler, epoch, RNG, callback states) every ``period``
        epochs and at the epoch training stops. A ``Checkpoint`` subclass, so Lightning runs it after every other
        callback: RunArtifacts' state is current, and a stop requested at epoch end (early stopping, a Timer)
        is already known. A 14M-parameter model with AdamW state is ~170 MB, ~0.8 s a write on 2 cores (7% of
        a small-image epoch), hence ``--save-period``."""

        def __init__(self, artifacts: RunArtifacts, period: int = 1) -> None:
            self.artifacts, self.period = artifacts, period

        def on_train_epoch_end(self, trainer, module) -> None:
            if trainer.sanity_checking:
                return
            epoch = int(trainer.current_epoch)
            if trainer.should_stop or epoch + 1 >= int(trainer.max_epochs or 0) or (epoch + 1) % self.period == 0:
                # on all ranks (rank 0 writes); weights_only=False: the full resumable state
                trainer.save_checkpoint(self.artifacts.run_dir / "weights" / "last.ckpt", weights_only=False)

    return RunArtifacts, LastCheckpoint


def _append_csv(path: Path, row: dict) -> None:
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]  # a resume rewrites later rows
    rows.append(row)
    from ..io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in CSV_FIELDS})
