"""Training: a LightningModule around an smp/torchvision model, and ``train(...)`` which writes a run directory.

Run directory (``runs/train/exp[N]/``)::

    weights/best.pt, weights/last.pt   imseg checkpoints (see ``save_checkpoint``), written atomically
    weights/last.ckpt                  Lightning checkpoint (optimizer, scheduler, epoch, callbacks) for --resume,
                                       every ``save_period`` epochs and at the epoch training stops
    metrics.csv                        one row per epoch
    results.png, confusion_matrix.png, val_samples.png, config.yaml

Determinism: every sample of epoch ``e`` is loaded under RNG seeds derived from (seed, e, index) and the
shuffle order is a function of (seed, e), so a run is reproducible on CPU and ``--resume`` continues
exactly as an uninterrupted run would, whatever the number of loader workers.

With ``ema`` > 0 a moving average of the weights (and BatchNorm statistics) is kept beside the trained ones
(:class:`WeightEMA`); validation, best.pt and last.pt use the average, as Ultralytics does.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DatasetError, require
from .losses import build_loss
from .metrics import ConfusionMatrix, metrics_from_confusion
from .models import OUTPUT_STRIDE, build_from_config, create_model, input_multiple, model_config
from .transforms import denormalize

CHECKPOINT_FORMAT = "imseg.semantic"
CHECKPOINT_VERSION = 1
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
CSV_FIELDS = ("epoch", "train_loss", "val_loss", "val_miou", "val_mdice", "val_pixel_accuracy", "lr")


@dataclass
class TrainConfig:
    """Every option of ``imseg train`` (CLI flags have the same names)."""

    data: Any = None  # dataset YAML / dir / dict (see imseg.semantic.data.load_data_config)
    model: str = "unet"
    encoder: str = "resnet34"
    weights: str | None = None  # encoder weights: None or "imagenet"
    epochs: int = 50
    imgsz: int = 512
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | adam | sgd
    scheduler: str = "cosine"  # cosine | poly | plateau | none
    warmup: float = 1.0  # epochs of linear warm-up
    amp: bool = False
    patience: int = 10  # early stopping on val mIoU; 0 disables
    workers: int = 2
    seed: int = 0
    name: str = "exp"
    project: str = "runs/train"
    loss: str = "ce+dice"
    augment: Any = "default"
    cache: bool = False  # keep decoded images in memory (small datasets)
    class_weights: list[float] | None = None
    devices: Any = 1
    nodes: int = 1
    accelerator: str = "auto"  # auto | cpu | gpu
    exist_ok: bool = False
    progress: bool = True
    val_samples: int = 4
    model_kwargs: dict = field(default_factory=dict)
    ema: float = 0.0  # decay of the weights' moving average (e.g. 0.995); 0 = off
    save_period: int = 1  # write the resumable weights/last.ckpt every N epochs (and at the last one)
    init: str | None = None  # start from these weights (a run directory or its best.pt/last.pt): fine-tuning,
    #                          e.g. at a larger imgsz; the model options must be the checkpoint's

    def validate(self) -> None:
        multiple = input_multiple(self.model, self.model_kwargs)
        why = f" for encoder_depth {self.model_kwargs['encoder_depth']}" if multiple != OUTPUT_STRIDE else ""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.imgsz >= multiple and self.imgsz % multiple == 0,
             f"imgsz must be a multiple of {multiple} (>= {multiple}){why}, got {self.imgsz}"),
            (self.batch >= 1, f"batch must be >= 1, got {self.batch}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.optimizer in ("adamw", "adam", "sgd"), f"optimizer must be adamw, adam or sgd, got {self.optimizer!r}"),
            (
                self.scheduler in ("cosine", "poly", "plateau", "none"),
                f"scheduler must be cosine, poly, plateau or none, got {self.scheduler!r}",
            ),
            (self.warmup >= 0, f"warmup must be >= 0 epochs, got {self.warmup}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.nodes >= 1, f"nodes must be >= 1, got {self.nodes}"),
            (0.0 <= self.ema < 1.0, f"ema must be in [0, 1) (a decay such as 0.995; 0 = off), got {self.ema}"),
            (self.save_period >= 1, f"save_period must be >= 1 epoch, got {self.save_period}"),
            (self.accelerator in ("auto", "cpu", "gpu", "cuda"),
             f"accelerator must be auto, cpu or gpu, got {self.accelerator!r}"),
            (_devices_ok(self.devices),
             f"devices must be a count >= 1, -1 or 'auto' (all), or device ids such as '0,1'; got {self.devices!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _devices_ok(devices: Any) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        return text == "auto" or text == "-1" or all(part.strip().isdigit() for part in text.split(","))
    if isinstance(devices, list | tuple):
        return bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    return False


@dataclass
class TrainResult:
    """What ``train`` returns."""

    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]  # best epoch's validation metrics
    confusion_matrix: np.ndarray | None  # best epoch's (C, C), rows = truth
    epochs_run: int


# ----------------------------------------------------------------------------- determinism helpers
def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**31 - 1)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices as a function of (seed, epoch); yields ``(epoch, index)`` for :class:`SeededDataset`."""

    def __init__(self, length: int, seed: int, epoch_fn: Callable[[], int], shuffle: bool = True) -> None:
        self.length, self.seed, self.epoch_fn, self.shuffle = length, seed, epoch_fn, shuffle

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        epoch = int(self.epoch_fn())
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(self.length))
        return iter([(epoch, i) for i in order])


class SeededDataset(torch.utils.data.Dataset):
    """Loads item ``i`` of epoch ``e`` with python/numpy/torch RNGs seeded from (seed, e, i)."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):  # per-process: works inside loader workers too
            self.dataset.set_epoch(epoch)
        item_seed = _item_seed(self.seed, epoch, index)
        random.seed(item_seed)
        np.random.seed(item_seed)
        # The CPU generator is the one transforms draw from; torch.manual_seed would also queue seeds for
        # CUDA/XPU/MTIA, formatting a stack trace for each (~2 ms a call, ~8% of a small-image epoch).
        torch.default_generator.manual_seed(item_seed)
        return self.dataset[index]


def _fused_or_foreach(kind, params: list, **kwargs: Any) -> torch.optim.Optimizer:
    """Adam/AdamW with the fused kernel where this torch has it for the params' device (CPU since torch 2.4):
    one pass over each tensor instead of ~10 elementwise ops (a resnet18 U-Net step: 6 ms instead of 26-50 ms
    on 2 cores). Older torch falls back to the multi-tensor (foreach) implementation."""
    try:
        return kind(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, foreach=True, **kwargs)


class WeightEMA(torch.nn.Module):
    """Exponential moving average of a model's parameters and floating-point buffers (BatchNorm statistics).

    After optimizer step ``t`` (1-based) every average moves towards the current value by ``1 - d_t`` with
    ``d_t = min(decay, (1 + t) / (10 + t))``: the early, fast-changing weights are not averaged over a long
    horizon. Integer buffers (BatchNorm's step counter) are copied. A submodule of the LightningModule, so it
    moves with it between devices and its state (``updates`` included) is part of last.ckpt.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__()
        import copy

        self.decay = float(decay)
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        t = int(self.updates)
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:
                average.copy_(value)


# ----------------------------------------------------------------------------- the LightningModule
def _has_unused_parameters(model: torch.nn.Module, imgsz: int) -> bool:
    """True when some parameters get no gradient (e.g. smp encoders with encoder_depth < 5); DDP must know."""
    was_training = model.training
    model.eval()
    size = min(imgsz, 64)
    try:
        model(torch.zeros(2, 3, size, size)).float().sum().backward()
        unused = any(p.requires_grad and p.grad is None for p in model.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return unused


def _lightning():
    return require("lightning.pytorch", "semantic", "Training")


def _make_module_class():
    L = _lightning()

    class SegmentationModule(L.LightningModule):
        """Model + loss + optimizer/scheduler; validation accumulates a rank-reduced confusion matrix."""

        def __init__(self, cfg: dict, num_classes: int, ignore_index: int | None, class_names: list[str],
                     init_state: Mapping[str, torch.Tensor] | None = None) -> None:
            super().__init__()
            self.cfg = cfg
            self.num_classes = num_classes
            self.ignore_index = ignore_index
            self.class_names = class_names
            self.model = create_model(  # with init_state, no encoder weights to fetch: they are replaced
                cfg["model"], encoder=cfg["encoder"], num_classes=num_classes,
                encoder_weights=cfg["weights"] if init_state is None else None, **cfg.get("model_kwargs", {}),
            )
            if init_state is not None:  # before the moving average copies the model
                self.model.load_state_dict(init_state)
            self.ema = WeightEMA(self.model, cfg["ema"]) if cfg.get("ema") else None
            self.criterion = build_loss(cfg["loss"], num_classes, ignore_index, cfg.get("class_weights"))
            self.val_cm = ConfusionMatrix(num_classes, ignore_index)
            self.val_metrics: dict[str, Any] = {}
            self.val_matrix: torch.Tensor | None = None

        @property
        def eval_model(self) -> torch.nn.Module:
            """The weights that are validated and saved: the moving average when ``ema`` is on."""
            return self.ema.module if self.ema is not None else self.model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:
            images, masks = batch
            loss = self.criterion(self(images), masks)
            self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
            self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=images.shape[0])
            return loss

        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            if self.ema is not None:  # after the optimizer step (automatic optimization, no accumulation)
                self.ema.update(self.model)

        def on_validation_epoch_start(self) -> None:
            self.val_cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)

        def validation_step(self, batch, batch_idx: int) -> None:
            images, masks = batch
            logits = self.eval_model(images)
            loss = self.criterion(logits, masks)
            self.val_cm.update(logits.argmax(1), masks)
            self.log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=images.shape[0])

        def on_validation_epoch_end(self) -> None:
            matrix = self.val_cm.sync()  # summed over DDP ranks
            metrics = metrics_from_confusion(matrix)
            self.val_matrix = matrix.detach().cpu().clone()
            self.val_metrics = {k: v for k, v in metrics.items() if isinstance(v, float)}
            miou = metrics["miou"] if not math.isnan(metrics["miou"]) else 0.0
            self.log("val/miou", miou, prog_bar=True, sync_dist=False)
            self.log("val/mdice", metrics["mdice"], sync_dist=False)
            self.log("val/pixel_accuracy", metrics["pixel_accuracy"], sync_dist=False)

        def configure_optimizers(self):
            cfg = self.cfg
            params = [p for p in self.parameters() if p.requires_grad]
            if cfg["optimizer"] == "sgd":
                opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"])
            else:
                kind = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW
                opt = _fused_or_foreach(kind, params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            per_epoch = max(total // max(int(self.trainer.max_epochs or 1), 1), 1)
            warmup = int(round(cfg["warmup"] * per_epoch))
            kind = cfg["scheduler"]

            def factor(step: int) -> float:
                if warmup and step < warmup:
                    return (step + 1) / warmup
                if kind in ("plateau", "none"):
                    return 1.0
                progress = min((step - warmup) / max(total - warmup, 1), 1.0)
                if kind == "poly":
                    return (1.0 - progress) ** 0.9
                return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

            schedulers = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}]
            if kind == "plateau":
                plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    opt, mode="max", factor=0.5, patience=max(cfg["patience"] // 3, 1)
                )
                schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": "val/miou"})
            return [opt], schedulers

    return SegmentationModule


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write an imseg checkpoint atomically: plain types + tensors only (loads with ``weights_only=True``)."""
    from ..io import atomic_path

    payload = dict(meta)
    payload["format"] = CHECKPOINT_FORMAT
    payload["version"] = CHECKPOINT_VERSION
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read an imseg checkpoint (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. A run directory has weights/best.pt and weights/last.pt.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an imseg semantic checkpoint (no format={CHECKPOINT_FORMAT!r}); "
            "expected weights/best.pt or weights/last.pt written by `imseg train` (a SAM checkpoint loads with "
            "imseg.load('sam-vit-b', checkpoint=PATH), or vit_l/vit_h/mobile-sam)."
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this imseg; upgrade imseg.")
    return payload


def model_from_checkpoint(payload: Mapping[str, Any]) -> torch.nn.Module:
    """Rebuild the model of a checkpoint dict and load its weights (eval mode)."""
    model = build_from_config(payload["model"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match the model {payload['model']}: {exc}") from exc
    return model.eval()


# ----------------------------------------------------------------------------- run directory
def increment_run_dir(project: str | os.PathLike, name: str, exist_ok: bool = False) -> Path:
    """``project/name``, or ``name2``, ``name3``... if it exists (Ultralytics style)."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def _write_yaml(path: Path, data: dict) -> None:
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
                _write_yaml(self.run_dir / "config.yaml", self.config_yaml)
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


# ----------------------------------------------------------------------------- plots
def plot_results(csv_path: Path, out: Path) -> Path:
    """results.png: train/val loss and val mIoU / mDice / pixel accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        axes[0].plot(epochs, [float(r[key]) for r in rows], marker=".", label=key)
    axes[0].set(title="loss", xlabel="epoch")
    for key in ("val_miou", "val_mdice", "val_pixel_accuracy"):
        axes[1].plot(epochs, [float(r[key]) for r in rows], marker=".", label=key)
    axes[1].set(title="validation", xlabel="epoch", ylim=(0, 1))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], out: Path, title: str = "") -> Path:
    """confusion_matrix.png: row-normalised (recall per true class) with raw counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    norm = matrix / np.clip(matrix.sum(1, keepdims=True), 1, None)
    n = len(matrix)
    size = min(3 + 0.6 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (row-normalised)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}\n{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def colorize(labels: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours (a fixed palette; ignore pixels white)."""
    rng = np.random.default_rng(12345)
    palette = rng.integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)
    palette[0] = 0
    out = palette[np.clip(labels, 0, num_classes - 1)]
    if ignore_index is not None:
        out[labels == ignore_index] = 255
    return out


def plot_val_samples(model, dataset, meta: dict, out: Path, count: int = 4) -> Path:
    """val_samples.png: rows of image | truth | prediction for the first ``count`` validation items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, min(count, len(dataset)))
    fig, axes = plt.subplots(count, 3, figsize=(9, 3 * count), squeeze=False)
    model = model.eval()
    device = next(model.parameters()).device
    for row in range(count):
        image, mask = dataset[row]
        with torch.no_grad():
            pred = model(image.unsqueeze(0).to(device)).argmax(1)[0].cpu().numpy()
        panels = [
            denormalize(image, meta["mean"], meta["std"]),
            colorize(np.asarray(mask), meta["num_classes"], meta["ignore_index"]),
            colorize(pred, meta["num_classes"]),
        ]
        for col, (panel, title) in enumerate(zip(panels, ("image", "truth", "prediction"), strict=True)):
            axes[row, col].imshow(panel)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- train()
def _load_datasets(cfg: TrainConfig) -> tuple[dict, list[str], int | None, dict]:
    from . import data as data_mod

    config = data_mod.load_data_config(cfg.data)
    datasets = data_mod.build_datasets(config, imgsz=cfg.imgsz, augment=cfg.augment, seed=cfg.seed, cache=cfg.cache)
    mean = tuple(getattr(data_mod, "IMAGENET_MEAN", DEFAULT_MEAN))
    std = tuple(getattr(data_mod, "IMAGENET_STD", DEFAULT_STD))
    info = {"data": _plain(config.to_dict()), "mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    return datasets, list(config.names), config.ignore_index, info


#: options whose state is inside last.ckpt: a resumed run must keep them
_FIXED_ON_RESUME = ("model", "encoder", "weights", "model_kwargs", "optimizer", "ema")


def _init_state(init: str | os.PathLike, model_meta: Mapping[str, Any]) -> dict:
    """The weights of ``init`` (a run directory or its best.pt/last.pt) for a run that builds ``model_meta``;
    a different architecture or class count is a ConfigError that names the options to train with."""
    from .infer import find_checkpoint

    try:
        path = find_checkpoint(init)
    except CheckpointError as exc:
        raise CheckpointError(f"--init: {exc}") from None
    payload = load_checkpoint(path)
    theirs = payload.get("model") or {}
    if theirs != dict(model_meta):
        def options(m: Mapping[str, Any]) -> str:
            text = f"model={m.get('name')}, encoder={m.get('encoder')}, {m.get('num_classes')} classes"
            return text + (f", model_kwargs={dict(m['kwargs'])}" if m.get("kwargs") else "")

        raise ConfigError(
            f"--init {path}: that checkpoint holds {options(theirs)}, this run builds {options(model_meta)}. "
            "Fine-tuning keeps the architecture: train with the checkpoint's model options (model, encoder, "
            f"model_kwargs) on a dataset with its classes {payload.get('class_names')}, or drop --init."
        )
    return payload["state_dict"]


def _resolve_resume(resume: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(resume)
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent
        ckpt = path
    else:
        run_dir = path
        ckpt = path / "weights" / "last.ckpt"
    if not ckpt.is_file():
        raise CheckpointError(
            f"cannot resume from {resume}: {ckpt} not found. Pass a run directory made by `imseg train` "
            "(runs/train/exp) or its weights/last.ckpt."
        )
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"cannot resume: {run_dir / 'config.yaml'} is missing.")
    return run_dir, ckpt


def train(
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    resume: str | os.PathLike | None = None,
    datasets: Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    ignore_index: int | None = 255,
    callbacks: list | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model and write a run directory; returns paths and the best validation metrics.

    Args:
        config: a :class:`TrainConfig`, a dict of its fields, or None (defaults).
        resume: a run directory (or its ``weights/last.ckpt``) to continue exactly; its config.yaml is
            used, with ``overrides`` applied (e.g. a larger ``epochs``).
        datasets: in-memory ``{"train": ds, "val": ds}`` instead of ``config.data`` (items are
            ``(image (3, H, W) float32, mask (H, W) int64)``); then give ``class_names``/``ignore_index``.
        callbacks: extra Lightning callbacks.
        **overrides: field values that replace those of ``config``.
    """
    import yaml

    L = _lightning()
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if isinstance(config, Mapping):
        unknown |= set(config) - known
    if unknown:
        raise ConfigError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")

    ckpt_path = None
    if resume is not None:
        run_dir, ckpt_path = _resolve_resume(resume)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        cfg = TrainConfig(**{k: v for k, v in saved["train"].items() if k in known})
        changed = sorted(k for k in _FIXED_ON_RESUME if k in overrides and overrides[k] != getattr(cfg, k))
        if changed:
            raise ConfigError(
                f"cannot change {', '.join(changed)} when resuming {run_dir}: last.ckpt holds that model/optimizer "
                "state. Resume with the run's own settings (config.yaml), or start a new run."
            )
        for key, value in overrides.items():
            setattr(cfg, key, value)
        if "data" not in overrides and isinstance(saved.get("data"), dict):
            cfg.data = saved["data"]  # the dataset as resolved when the run started, not a path relative to its cwd
    else:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig(**dict(config or {}))
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
        run_dir = None
    cfg.validate()

    if datasets is None:
        if cfg.data is None:
            raise ConfigError("no training data: pass data= (dataset YAML, directory or dict) or --data data.yaml")
        datasets, names, ignore, info = _load_datasets(cfg)
    else:
        if class_names is None:
            raise ConfigError("train(datasets=...) needs class_names=[...] (one name per class)")
        names, ignore = list(class_names), ignore_index
        info = {"data": cfg.data if isinstance(cfg.data, str | dict) else "<in-memory>", "mean": list(DEFAULT_MEAN),
                "std": list(DEFAULT_STD)}
    for split in ("train", "val"):
        if split not in datasets or len(datasets[split]) == 0:
            raise DatasetError(f"the {split!r} split is missing or empty; training needs train and val images.")
    num_classes = len(names)
    if num_classes < 2:
        raise ConfigError(
            f"{num_classes} class name(s) {names}: imseg trains class 0 as the background, so a binary task has two "
            f"classes, e.g. ['background', '{names[0] if names else 'foreground'}'] with masks of 0 and 1."
        )

    model_meta = model_config(cfg.model, cfg.encoder, num_classes, **cfg.model_kwargs)
    # a resumed run's weights come from last.ckpt; --init only seeds a new run (checked before its directory exists)
    init_state = _init_state(cfg.init, model_meta) if cfg.init and ckpt_path is None else None

    if run_dir is None:
        run_dir = increment_run_dir(cfg.project, cfg.name, cfg.exist_ok)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = _make_module_class()(asdict(cfg), num_classes, ignore, names, init_state)
    meta = {
        "model": model_meta,
        "class_names": names,
        "num_classes": num_classes,
        "ignore_index": ignore,
        "imgsz": cfg.imgsz,
        "mean": info["mean"],
        "std": info["std"],
        "inference": {"resize": True},  # predict as validation ran: letterbox to imgsz (see semantic.infer)
        "train": _plain(asdict(cfg)),
    }

    distributed = (cfg.devices not in (1, "1", None) and str(cfg.devices) != "auto") or cfg.nodes > 1
    accelerator = cfg.accelerator
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = ("16-mixed" if on_gpu else "bf16-mixed") if cfg.amp else "32-true"

    train_ds = SeededDataset(datasets["train"], cfg.seed)
    sampler = EpochSampler(len(train_ds), cfg.seed, lambda: module.current_epoch)
    loader_kw = {"num_workers": cfg.workers, "pin_memory": on_gpu, "persistent_workers": cfg.workers > 0}
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch, sampler=sampler, drop_last=len(train_ds) > cfg.batch, **loader_kw
    )
    val_loader = torch.utils.data.DataLoader(datasets["val"], batch_size=cfg.batch, shuffle=False, **loader_kw)

    config_yaml = {"train": meta["train"], "data": info["data"], "class_names": names, "ignore_index": ignore,
                   "mean": meta["mean"], "std": meta["std"]}
    artifacts_cls, last_ckpt_cls = _make_run_callbacks()
    artifacts = artifacts_cls(run_dir, meta, config_yaml)
    extra_callbacks = callbacks
    callbacks = [artifacts, last_ckpt_cls(artifacts, cfg.save_period)]
    if cfg.patience > 0:
        callbacks.append(L.callbacks.EarlyStopping(monitor="val/miou", mode="max", patience=cfg.patience))
    if cfg.progress:
        callbacks.append(L.callbacks.RichProgressBar(leave=True))
    callbacks.extend(extra_callbacks or [])

    strategy = "auto"
    if distributed:
        unused = _has_unused_parameters(module.model, cfg.imgsz)
        strategy = "ddp_find_unused_parameters_true" if unused else "ddp"
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=accelerator,
        devices=cfg.devices,
        num_nodes=cfg.nodes,
        strategy=strategy,
        precision=precision,
        deterministic=True if not on_gpu else "warn",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=cfg.progress,
        enable_model_summary=cfg.progress,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        log_every_n_steps=1,
    )
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)

    run_dir = artifacts.run_dir
    weights_dir = run_dir / "weights"
    best = weights_dir / "best.pt"
    matrix = np.asarray(artifacts.best_matrix, dtype=np.int64) if artifacts.best_matrix is not None else None
    if trainer.is_global_zero:
        plot_results(run_dir / "metrics.csv", run_dir / "results.png")
        if matrix is not None:
            plot_confusion_matrix(matrix, names, run_dir / "confusion_matrix.png",
                                  title=f"validation, best epoch {artifacts.best_epoch + 1}")
        if best.is_file():
            best_model = model_from_checkpoint(load_checkpoint(best))
            plot_val_samples(best_model, datasets["val"], meta, run_dir / "val_samples.png", cfg.val_samples)
    return TrainResult(
        run_dir=run_dir,
        best=best,
        last=weights_dir / "last.pt",
        metrics=dict(artifacts.best_metrics),
        confusion_matrix=matrix,
        epochs_run=int(trainer.current_epoch),
    )
