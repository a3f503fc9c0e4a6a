"""Training: ``train(...)`` fits a :mod:`~imseg.semantic.module` LightningModule and writes a run directory.

Run directory (``runs/train/exp[N]/``, see :mod:`~imseg.semantic.run`)::

    weights/best.pt, weights/last.pt   imseg checkpoints (see ``checkpoints.save_checkpoint``), written atomically
    weights/last.ckpt                  Lightning checkpoint (optimizer, scheduler, epoch, callbacks) for --resume,
                                       every ``save_period`` epochs and at the epoch training stops
    metrics.csv                        one row per epoch
    results.png, confusion_matrix.png, val_samples.png, config.yaml

Determinism: every sample of epoch ``e`` is loaded under RNG seeds derived from (seed, e, index) and the
shuffle order is a function of (seed, e), so a run is reproducible on CPU and ``--resume`` continues
exactly as an uninterrupted run would, whatever the number of loader workers.

With ``ema`` > 0 a moving average of the weights (and BatchNorm statistics) is kept beside the trained ones
(:class:`~imseg.semantic.module.WeightEMA`); validation, best.pt and last.pt use the average, as Ultralytics does.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DatasetError
from .checkpoints import (
    find_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    read_resume_checkpoint,
    save_checkpoint,
)
from .ddp import DEVICES_ACCEPTED, ddp_strategy, devices_ok, sync_batchnorm, uses_gpu
from .distill import TeacherTargets, check_distill_options, check_views
from .loggers import make_logger_callback, parse_logger_spec
from .models import OUTPUT_STRIDE, input_multiple, model_config
from .module import WeightEMA, _has_unused_parameters, _lightning, _make_module_class
from .plots import colorize, plot_confusion_matrix, plot_results, plot_val_samples
from .run import _make_run_callbacks, _plain, increment_run_dir
from .transforms import IMAGENET_MEAN, IMAGENET_STD

#: also imported from here by the CLI, benchmarks and tests
__all__ = ["EpochSampler", "SeededDataset", "TrainConfig", "TrainResult", "WeightEMA", "colorize", "load_checkpoint",
           "model_from_checkpoint", "plot_confusion_matrix", "save_checkpoint", "train"]


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
    teacher: str | None = None  # distil from this trained run (directory or best.pt), see semantic.distill
    distill: str = "kd"  # kd (pixel-wise) | cwd (channel-wise)
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    distill_cache: bool = False  # run the teacher before training on distill_views augmented views of each
    #                              training image and keep its logits in memory (see semantic.distill)
    distill_views: int = 8  # views per image with distill_cache (epochs before the views repeat)
    logger: str = "csv"  # csv | tensorboard | csv,tensorboard (see semantic.loggers)
    time: float | None = None  # wall-clock limit in minutes: training stops there, validates and saves that state

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
            (self.time is None or self.time > 0, f"time must be > 0 minutes (or None: no limit), got {self.time}"),
            (self.accelerator in ("auto", "cpu", "gpu", "cuda"),
             f"accelerator must be auto, cpu or gpu, got {self.accelerator!r}"),
            (devices_ok(self.devices), f"devices must be {DEVICES_ACCEPTED}; got {self.devices!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        check_distill_options(self.teacher, self.distill, self.distill_weight, self.distill_temperature)
        if self.distill_cache and not self.teacher:
            raise ConfigError("distill_cache caches a teacher's logits: give the teacher run too (--teacher RUN)")
        check_views(self.distill_views)
        parse_logger_spec(self.logger)


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
    """Shuffled indices as a function of (seed, epoch); yields ``(epoch, index)`` for :class:`SeededDataset`.

    The epoch is state, set before iteration (:meth:`set_epoch`: Lightning calls it before every epoch, and
    ``train`` sets a resumed run's next epoch from last.ckpt before fitting). It is never read from the trainer
    while iterating: with loader workers the iterator is built, and its first batches prefetched, while
    Lightning sizes the schedule, before the checkpoint's epoch counter is restored.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, epoch: int = 0) -> None:
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        epoch = self.epoch
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
# ----------------------------------------------------------------------------- train()
def _memory_budget() -> int | None:
    """Half the memory available now (bytes), or None where the system does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def _load_datasets(cfg: TrainConfig) -> tuple[dict, list[str], int | None, dict]:
    from .data import build_datasets, load_data_config

    config = load_data_config(cfg.data)
    datasets = build_datasets(config, imgsz=cfg.imgsz, augment=cfg.augment, seed=cfg.seed, cache=cfg.cache)
    info = {"data": _plain(config.to_dict()), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return datasets, list(config.names), config.ignore_index, info


#: options whose state is inside last.ckpt: a resumed run must keep them
_FIXED_ON_RESUME = ("model", "encoder", "weights", "model_kwargs", "optimizer", "ema")


def _init_state(init: str | os.PathLike, model_meta: Mapping[str, Any]) -> dict:
    """The weights of ``init`` (a run directory or its best.pt/last.pt) for a run that builds ``model_meta``;
    a different architecture or class count is a ConfigError that names the options to train with."""
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


def _saved_config(run_dir: Path) -> dict:
    """The run's config.yaml, checked to hold its training options."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot resume: {path} is unreadable ({exc}); start a new run.") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        raise CheckpointError(f"cannot resume: {path} has no 'train' settings; it was not written by `imseg train`.")
    return saved


def _resumed_config(resume: str | os.PathLike, overrides: Mapping[str, Any]) -> tuple[TrainConfig, Path, Path]:
    """(config, run directory, last.ckpt) of a run to continue: its config.yaml with ``overrides`` applied."""
    run_dir, ckpt_path = _resolve_resume(resume)
    saved = _saved_config(run_dir)
    known = {f.name for f in fields(TrainConfig)}
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
    return cfg, run_dir, ckpt_path


def _resumed_epoch(ckpt_path: Path, epochs_given: bool = False) -> tuple[int, list]:
    """The epoch a resumed run trains first (the one Lightning will pass to ``set_epoch`` after restoring), and
    the callbacks its state needs: a planned run's refits of its epochs and schedule (:mod:`.plan.replan`),
    which an explicit ``epochs`` (``epochs_given``) overrides."""
    state = read_resume_checkpoint(ckpt_path)
    try:
        epoch = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{ckpt_path}: holds no epoch progress, so it cannot be resumed exactly; start a new run, or fine-tune "
            f"from the run's weights with `imseg train --init {ckpt_path.parent.parent}`."
        ) from None
    from .plan.replan import STATE_KEY, make_replan_callback

    planned = isinstance(state.get("callbacks"), Mapping) and STATE_KEY in state["callbacks"]
    return epoch, [make_replan_callback(None, refit=not epochs_given)] if planned else []


def _training_data(cfg: TrainConfig, datasets: Mapping[str, Any] | None, class_names: list[str] | None,
                   ignore_index: int | None) -> tuple[Mapping[str, Any], list[str], int | None, dict]:
    """(datasets, class names, ignore index, recorded data info), checked; before any run directory exists."""
    if datasets is None:
        if cfg.data is None:
            raise ConfigError("no training data: pass data= (dataset YAML, directory or dict) or --data data.yaml")
        datasets, names, ignore, info = _load_datasets(cfg)
    else:
        if class_names is None:
            raise ConfigError("train(datasets=...) needs class_names=[...] (one name per class)")
        names, ignore = list(class_names), ignore_index
        info = {"data": cfg.data if isinstance(cfg.data, str | dict) else "<in-memory>", "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD)}
    for split in ("train", "val"):
        if split not in datasets or len(datasets[split]) == 0:
            raise DatasetError(f"the {split!r} split is missing or empty; training needs train and val images.")
    if len(names) < 2:
        raise ConfigError(
            f"{len(names)} class name(s) {names}: imseg trains class 0 as the background, so a binary task has two "
            f"classes, e.g. ['background', '{names[0] if names else 'foreground'}'] with masks of 0 and 1."
        )
    return datasets, names, ignore, info


def _loaders(cfg: TrainConfig, datasets: Mapping[str, Any], on_gpu: bool, first_epoch: int):
    """(train loader, val loader): the train order and augmentations a function of (seed, epoch, index)."""
    train_ds = SeededDataset(datasets["train"], cfg.seed)
    sampler = EpochSampler(len(train_ds), cfg.seed, epoch=first_epoch)
    loader_kw = {"num_workers": cfg.workers, "pin_memory": on_gpu, "persistent_workers": cfg.workers > 0}
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_size=cfg.batch, sampler=sampler, drop_last=len(train_ds) > cfg.batch, **loader_kw
    )
    val_loader = torch.utils.data.DataLoader(datasets["val"], batch_size=cfg.batch, shuffle=False, **loader_kw)
    return train_loader, val_loader


def _trainer(cfg: TrainConfig, module, callbacks: list, run_dir: Path, on_gpu: bool):
    L = _lightning()
    strategy = ddp_strategy(cfg.devices, cfg.nodes, lambda: _has_unused_parameters(module.model, cfg.imgsz),
                            cfg.accelerator)
    from datetime import timedelta

    return L.Trainer(
        max_epochs=cfg.epochs,
        max_time=timedelta(minutes=cfg.time) if cfg.time else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.nodes,
        strategy=strategy,
        sync_batchnorm=sync_batchnorm(cfg.devices, cfg.nodes, cfg.accelerator),
        precision=("16-mixed" if on_gpu else "bf16-mixed") if cfg.amp else "32-true",
        deterministic=True if not on_gpu else "warn",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=cfg.progress,
        enable_model_summary=cfg.progress,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        log_every_n_steps=1,
    )


def _callbacks(cfg: TrainConfig, run_dir: Path, meta: dict, config_yaml: dict, extra: list | None) -> list:
    L = _lightning()
    artifacts_cls, last_ckpt_cls = _make_run_callbacks()
    artifacts = artifacts_cls(run_dir, meta, config_yaml)
    callbacks = [artifacts, last_ckpt_cls(artifacts, cfg.save_period)]
    if cfg.patience > 0:
        callbacks.append(L.callbacks.EarlyStopping(monitor="val/miou", mode="max", patience=cfg.patience))
    if cfg.progress:
        callbacks.append(L.callbacks.RichProgressBar(leave=True))
    return callbacks + list(extra or [])


def _write_plots(artifacts, names: list[str], val_dataset, meta: dict, count: int) -> None:
    run_dir = artifacts.run_dir
    plot_results(run_dir / "metrics.csv", run_dir / "results.png")
    if artifacts.best_matrix is not None:
        plot_confusion_matrix(np.asarray(artifacts.best_matrix, dtype=np.int64), names, run_dir / "confusion_matrix.png",
                              title=f"validation, best epoch {artifacts.best_epoch + 1}")
    best = run_dir / "weights" / "best.pt"
    if best.is_file():
        best_model = model_from_checkpoint(load_checkpoint(best))
        plot_val_samples(best_model, val_dataset, meta, run_dir / "val_samples.png", count)


def train(
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    resume: str | os.PathLike | None = None,
    datasets: Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    ignore_index: int | None = 255,
    callbacks: list | None = None,
    record: Mapping[str, Any] | None = None,
    inference: Mapping[str, Any] | None = None,
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
        record: extra top-level entries for config.yaml (e.g. the ``plan`` that chose the options).
        inference: the checkpoints' inference defaults (default ``{"resize": True}``: letterbox to imgsz).
        **overrides: field values that replace those of ``config``.
    """
    L = _lightning()
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if isinstance(config, Mapping):
        unknown |= set(config) - known
    if unknown:
        raise ConfigError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")

    ckpt_path, first_epoch = None, 0
    if resume is not None:
        cfg, run_dir, ckpt_path = _resumed_config(resume, overrides)
        # also refuses a damaged last.ckpt before anything runs
        first_epoch, restored = _resumed_epoch(ckpt_path, "epochs" in overrides)
        callbacks = [*(callbacks or []), *restored]
    else:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig(**dict(config or {}))
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
        run_dir = None
    cfg.validate()
    if cfg.teacher:  # recorded absolute: a resumed run finds its teacher from any working directory
        cfg.teacher = str(Path(cfg.teacher).resolve())
    datasets, names, ignore, info = _training_data(cfg, datasets, class_names, ignore_index)

    model_meta = model_config(cfg.model, cfg.encoder, len(names), **cfg.model_kwargs)
    # a resumed run's weights come from last.ckpt; --init only seeds a new run (checked before its directory exists)
    init_state = _init_state(cfg.init, model_meta) if cfg.init and ckpt_path is None else None
    if run_dir is None:
        run_dir = increment_run_dir(cfg.project, cfg.name, cfg.exist_ok)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = _make_module_class()(asdict(cfg), len(names), ignore, names, init_state)
    meta = {
        "model": model_meta, "class_names": names, "num_classes": len(names), "ignore_index": ignore,
        "imgsz": cfg.imgsz, "mean": info["mean"], "std": info["std"],
        # predict as validation ran: letterbox to imgsz unless told otherwise (see semantic.infer)
        "inference": dict(inference) if inference else {"resize": True},
        "train": _plain(asdict(cfg)),
    }
    on_gpu = uses_gpu(cfg.accelerator)
    if module.distiller is not None and cfg.distill_cache:
        views = min(cfg.distill_views, cfg.epochs)  # views past the last epoch would never be trained on
        device = "cuda" if on_gpu else "cpu"
        # at the run's precision, as the teacher runs on each batch without the cache (Lightning's autocast)
        with torch.autocast(device, dtype=torch.float16 if on_gpu else torch.bfloat16, enabled=cfg.amp):
            targets = TeacherTargets(datasets["train"], module.distiller.teacher, views, device, cfg.batch,
                                     _memory_budget())
        datasets = {**datasets, "train": targets}
    train_loader, val_loader = _loaders(cfg, datasets, on_gpu, first_epoch)
    config_yaml = {"train": meta["train"], "data": info["data"], "class_names": names, "ignore_index": ignore,
                   "mean": meta["mean"], "std": meta["std"], **_plain(dict(record or {}))}
    callbacks = _callbacks(cfg, run_dir, meta, config_yaml, callbacks)
    artifacts = callbacks[0]
    callbacks.insert(1, make_logger_callback(cfg.logger, artifacts, datasets["val"], meta, cfg.val_samples))
    trainer = _trainer(cfg, module, callbacks, run_dir, on_gpu)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:  # weights_only: last.ckpt is data; read_resume_checkpoint has checked it loads that way
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path,
                    weights_only=True)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)

    if trainer.is_global_zero:
        _write_plots(artifacts, names, datasets["val"], meta, cfg.val_samples)
    weights_dir = artifacts.run_dir / "weights"
    matrix = np.asarray(artifacts.best_matrix, dtype=np.int64) if artifacts.best_matrix is not None else None
    return TrainResult(
        run_dir=artifacts.run_dir,
        best=weights_dir / "best.pt",
        last=weights_dir / "last.pt",
        metrics=dict(artifacts.best_metrics),
        confusion_matrix=matrix,
        epochs_run=int(trainer.current_epoch),
    )
