"""``finetune(...)``: fit SAM to a data set with Lightning and write a run directory (see :mod:`.run`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..semantic.ddp import DEVICES_ACCEPTED, devices_ok
from ..semantic.loggers import parse_logger_spec
from .module import TRAIN_MODES
from .recipe import LOSS_PRESETS, PROMPT_KINDS

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "prepare_start", "start_defaults"]


@dataclass
class FinetuneConfig:
    """Every option of ``imseg finetune`` (CLI flags have the same names)."""

    data: Any = None
    model: str = "mobile-sam"
    checkpoint: str | None = None
    random_init: bool = False  # start from random weights when no checkpoint is given or cached
    epochs: int = 10
    imgsz: int = 1024
    train: str = "decoder+prompt"
    lora_rank: int = 8
    prompts: tuple[str, ...] = ("box", "point", "mask")
    clicks: int = 2  # correction-click rounds after the first prompt
    max_objects: int = 8
    objects: str = "ids"  # ids | components | whole (mask folders)
    min_area: int = 4
    batch: int = 4
    lr: float | None = None  # None: the start's default (see start_defaults)
    weight_decay: float = 0.01
    layer_decay: float | None = None  # None: the start's default (see start_defaults)
    warmup: float = 1.0  # epochs of linear warm-up
    grad_clip: float = 1.0
    loss: str = "bce+dice"
    precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | 32
    cache: bool = True  # cache frozen-encoder embeddings on disk
    cache_dir: str | None = None
    time: float | None = None  # wall-clock budget in minutes
    seed: int = 0
    workers: int = 0
    project: str = "runs/finetune"
    name: str = "exp"
    exist_ok: bool = False
    progress: bool = True
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = 1  # per node: a count, -1 / 'auto' (all), or ids such as '0,1'
    nodes: int = 1
    val_fraction: float = 0.2
    logger: str = "csv"  # csv | tensorboard | csv,tensorboard (metrics.csv is always written)
    val_samples: int = 4  # validation overlays logged to TensorBoard after each epoch

    def validate(self) -> None:
        prompts = tuple(p.strip() for p in (self.prompts.split(",") if isinstance(self.prompts, str) else self.prompts))
        self.prompts = prompts
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.train in TRAIN_MODES, f"train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}"),
            (bool(prompts) and set(prompts) <= set(PROMPT_KINDS) and set(prompts) != {"mask"},
             f"prompts must be a comma list of {', '.join(PROMPT_KINDS)} with box or point; got {','.join(prompts)!r}"),
            (self.clicks >= 0, f"clicks must be >= 0, got {self.clicks}"),
            (self.batch >= 1 and self.max_objects >= 1, "batch and max_objects must be >= 1"),
            ((self.lr is None or self.lr > 0) and self.weight_decay >= 0
             and (self.layer_decay is None or 0 < self.layer_decay <= 1),
             "lr must be > 0, weight_decay >= 0 and layer_decay in (0, 1]"),
            (self.loss in LOSS_PRESETS, f"loss must be one of {', '.join(LOSS_PRESETS)}, got {self.loss!r}"),
            (self.precision in ("auto", "bf16", "32"), f"precision must be auto, bf16 or 32, got {self.precision!r}"),
            (self.time is None or self.time > 0, f"time must be > 0 minutes, got {self.time}"),
            (self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}"),
            (self.val_samples >= 0, f"val_samples must be >= 0, got {self.val_samples}"),
            (self.accelerator in ("auto", "cpu", "gpu", "cuda"),
             f"accelerator must be auto, cpu or gpu, got {self.accelerator!r}"),
            (devices_ok(self.devices), f"devices must be {DEVICES_ACCEPTED}; got {self.devices!r}"),
            (isinstance(self.nodes, int) and not isinstance(self.nodes, bool) and self.nodes >= 1,
             f"nodes must be a whole number >= 1, got {self.nodes!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        parse_logger_spec(self.logger)


@dataclass
class FinetuneResult:
    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    steps: int = 0  # optimizer steps taken (over all runs of a resumed run)
    stopped_by_time: bool = False


#: (lr, layer_decay) of a run from a checkpoint: the recipe's fine-tuning values, lower for the encoder's
#: earlier layers so pretrained features are kept
PRETRAINED_DEFAULTS = (1e-4, 0.8)
#: (lr, layer_decay) of a whole model trained from random weights: there are no features to keep, so every layer
#: learns at a from-scratch rate (on horses the pretrained values left a random MobileSAM near the filled box)
RANDOM_WHOLE_DEFAULTS = (5e-4, 1.0)


def start_defaults(cfg: FinetuneConfig, start: str) -> FinetuneConfig:
    """``cfg`` with ``lr`` and ``layer_decay`` left at None set for the start ("random initialisation" or a
    checkpoint) and what trains (see :data:`PRETRAINED_DEFAULTS`, :data:`RANDOM_WHOLE_DEFAULTS`)."""
    from .module import trains_encoder_norms

    lr, decay = RANDOM_WHOLE_DEFAULTS if trains_encoder_norms(cfg.train, start) else PRETRAINED_DEFAULTS
    return FinetuneConfig(**{**asdict(cfg), "lr": lr if cfg.lr is None else cfg.lr,
                             "layer_decay": decay if cfg.layer_decay is None else cfg.layer_decay})


def prepare_start(cfg: FinetuneConfig) -> tuple[FinetuneConfig, torch.nn.Module, str, bool, bool]:
    """What a run and its timing probe both start from: ``cfg`` with the start's defaults, the model, its start
    ("checkpoint PATH" | "random initialisation"), whether the encoder is frozen, and whether its BatchNorm
    statistics train (:func:`.module.trains_encoder_norms`)."""
    from .module import set_trainable, trains_encoder_norms
    from .run import build_start_model

    model, start = build_start_model(cfg.model, cfg.checkpoint, cfg.imgsz, allow_random=cfg.random_init,
                                     seed=cfg.seed)
    cfg = start_defaults(cfg, start)
    frozen = set_trainable(model, cfg.train, cfg.lora_rank)
    return cfg, model, start, frozen, trains_encoder_norms(cfg.train, start)


def _bf16_available() -> bool:
    """bf16 is worth training in: a GPU that supports it, or a CPU that multiplies bf16 natively."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from ..precision import native_bf16

    return native_bf16()


def _precision(cfg: FinetuneConfig) -> str:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and _bf16_available()):
        return "bf16-mixed"
    return "32-true"


def _resumed(resume: Any, overrides: dict) -> tuple[FinetuneConfig, Path, Path]:
    from ..semantic.checkpoints import read_resume_checkpoint
    from .run import read_run_config

    run_dir = Path(resume)
    run_dir = run_dir.parent.parent if run_dir.is_file() else run_dir
    saved = read_run_config(run_dir)
    ckpt = run_dir / "weights" / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"{run_dir}: no weights/last.ckpt to resume from.")
    read_resume_checkpoint(ckpt)
    options = {k: v for k, v in saved["train"].items() if k in {f.name for f in fields(FinetuneConfig)}}
    options.update(overrides, exist_ok=True)
    return FinetuneConfig(**options), run_dir, ckpt


def _leaves_parameters_unused(model: torch.nn.Module) -> bool:
    """Whether a step may give some trained parameter no gradient: the prompt encoder's embedding of each prompt
    kind (points, box corners, the previous mask) is only used by the prompts a step draws, so anything trained
    besides the mask decoder (all of whose weights every step uses) makes DDP look for unused parameters."""
    from .families import family_of

    decoder = family_of(model).decoder + "."
    return any(p.requires_grad and not name.startswith(decoder) for name, p in model.named_parameters())


def _trainer(L: Any, cfg: FinetuneConfig, model: torch.nn.Module, callbacks: list, run_dir: Path, precision: str):
    """The Lightning Trainer: ``devices`` per node on ``nodes`` nodes (DDP once there are several processes)."""
    from ..semantic.ddp import ddp_strategy, sync_batchnorm

    strategy = ddp_strategy(cfg.devices, cfg.nodes, lambda: _leaves_parameters_unused(model), cfg.accelerator)
    try:
        return L.Trainer(
            max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.nodes,
            strategy=strategy, sync_batchnorm=sync_batchnorm(cfg.devices, cfg.nodes, cfg.accelerator),
            precision=precision, gradient_clip_val=cfg.grad_clip, logger=False,
            callbacks=callbacks, enable_progress_bar=cfg.progress, enable_model_summary=False,
            num_sanity_val_steps=0, default_root_dir=str(run_dir), enable_checkpointing=False,
        )
    except (L.utilities.exceptions.MisconfigurationException, TypeError, ValueError) as exc:
        # Lightning checks the devices against the machine here (e.g. -1 on a CPU, more GPUs than there are)
        raise ConfigError(f"devices={cfg.devices!r}, nodes={cfg.nodes}, accelerator={cfg.accelerator!r} cannot run "
                          f"on this machine: {exc}") from None


def finetune(config: FinetuneConfig | dict | None = None, *, resume: Any = None, **overrides: Any) -> FinetuneResult:
    """Fine-tune SAM (see :class:`FinetuneConfig`); ``resume``: a run directory to continue (``epochs`` may be
    raised, ``time`` given anew). Besides the options, ``callbacks`` (extra Lightning callbacks) and ``record``
    (extra config.yaml entries). Returns where the run went and its best validation metrics."""
    from ..semantic.module import _lightning
    from ..semantic.run import increment_run_dir
    from .loop import build_callbacks, build_loaders, finish

    known = {f.name for f in fields(FinetuneConfig)}
    unknown = set(overrides) - known - {"callbacks", "record"}
    if isinstance(config, dict):
        unknown |= set(config) - known
    if unknown:
        raise ConfigError(f"unknown finetune option(s) {sorted(unknown)}; known: {sorted(known)}")
    extra_callbacks = overrides.pop("callbacks", [])
    record = overrides.pop("record", None)  # extra config.yaml entries (a plan)
    ckpt_path = None
    if resume is not None:
        cfg, run_dir, ckpt_path = _resumed(resume, overrides)
    else:
        cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig(**dict(config or {}))
        cfg = FinetuneConfig(**{**asdict(cfg), **overrides})
    cfg.validate()
    L = _lightning()
    from .module import make_module

    cfg, model, start, frozen, encoder_norms = prepare_start(cfg)
    precision = _precision(cfg)
    loaders, data, cache = build_loaders(cfg, model, frozen, precision)
    if resume is None:
        run_dir = increment_run_dir(cfg.project, cfg.name, cfg.exist_ok)
    L.seed_everything(cfg.seed, verbose=False)
    module = make_module(L)(model, asdict(cfg), cache, frozen, encoder_norms)
    callbacks, artifacts, budget = build_callbacks(L, cfg, run_dir, start, data, precision, loaders["val"].dataset,
                                                   record)
    trainer = _trainer(L, cfg, model, callbacks + list(extra_callbacks), run_dir, precision)
    budget.start = time.monotonic()
    trainer.fit(module, train_dataloaders=loaders["train"], val_dataloaders=loaders["val"], ckpt_path=ckpt_path,
                weights_only=True)
    return finish(trainer, module, artifacts, budget, loaders["val"])
