"""Training loggers: ``make_loggers(spec, run_dir)`` for any training loop, and the Lightning callback that
feeds them during semantic training.

``spec`` is a comma-separated list (``--logger csv,tensorboard``):

- ``csv``: the run's ``metrics.csv``, one row per epoch, which every trainer writes itself (its plots and
  ``--resume`` read it), so it needs no writer here and is always on;
- ``tensorboard``: TensorBoard event files in ``RUN/tensorboard/`` (open with
  ``tensorboard --logdir runs/train``): scalars against the optimizer step, images at each validation.

The returned :class:`RunLoggers` takes plain values (``log_scalars({"train/loss": 0.3}, step)``,
``log_image("val/overlay_0", hwc_uint8, step)``), so a loop without Lightning uses it as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, require

LOGGERS = ("csv", "tensorboard")


def parse_logger_spec(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"csv,tensorboard"`` -> ("csv", "tensorboard"); ConfigError for an unknown name."""
    if spec is None:
        return ("csv",)
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown or not names:
        raise ConfigError(f"logger must be a comma-separated list of {', '.join(LOGGERS)} (e.g. csv,tensorboard), "
                          f"got {spec!r}")
    return tuple(dict.fromkeys(names))


class RunLoggers:
    """The writers a logger spec asks for (TensorBoard, or none: metrics.csv is the trainer's own)."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, purge_step: int | None = None) -> None:
        self.names, self.run_dir = names, Path(run_dir)
        self.writer = None
        if "tensorboard" in names:
            require("tensorboard", "tensorboard", "--logger tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run hides the events it is about to write again
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step or None)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            value = float(value)
            if np.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=int(step))

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image``: (H, W, 3) uint8 RGB."""
        if self.writer is not None:
            self.writer.add_image(tag, np.asarray(image, dtype=np.uint8), global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def make_loggers(spec: str | Sequence[str] | None, run_dir: str | os.PathLike,
                 purge_step: int | None = None) -> RunLoggers:
    """The loggers of ``spec`` (e.g. ``"csv,tensorboard"``) writing under ``run_dir``."""
    return RunLoggers(parse_logger_spec(spec), Path(run_dir), purge_step)


def overlay_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, num_classes: int,
                  ignore_index: int | None = None, alpha: float = 0.5) -> np.ndarray:
    """image | truth blended | prediction blended, side by side: (H, 3W, 3) uint8."""
    from .plots import colorize

    def blend(labels: np.ndarray) -> np.ndarray:
        colours = colorize(labels, num_classes, ignore_index).astype(np.float32)
        mixed = (1 - alpha) * image.astype(np.float32) + alpha * colours
        mixed[labels == 0] = image[labels == 0]  # background stays the photo
        return mixed.clip(0, 255).astype(np.uint8)

    return np.concatenate([image, blend(np.asarray(truth)), blend(np.asarray(pred))], axis=1)


def _validation_overlays(model, dataset, meta: Mapping[str, Any], count: int) -> list[np.ndarray]:
    """Overlay panels of the first ``count`` items of ``dataset`` predicted by ``model`` (kept in its mode)."""
    import torch

    from .transforms import denormalize

    panels = []
    was_training = model.training
    model.eval()  # BatchNorm must not learn from these
    try:
        device = next(model.parameters()).device
        for index in range(min(count, len(dataset))):
            image, mask = dataset[index]
            with torch.no_grad():
                pred = model(image.unsqueeze(0).to(device)).argmax(1)[0].cpu().numpy()
            rgb = denormalize(image, meta["mean"], meta["std"])
            panels.append(overlay_panel(rgb, np.asarray(mask), pred, meta["num_classes"], meta.get("ignore_index")))
    finally:
        model.train(was_training)
    return panels


def step_loggers_base(spec: str | Sequence[str] | None, artifacts):
    """The base of the training loops' logger callbacks: on rank 0, opens ``make_loggers(spec, run dir)`` when
    training starts (a resumed run hides the events of the steps it trains again) and logs ``train/loss_step``
    and ``lr`` (the largest group's) after every optimizer step; ``close()`` closes the writers. ``artifacts``
    is the run's RunArtifacts (it knows the final run dir)."""
    from .module import _lightning

    L = _lightning()
    names = parse_logger_spec(spec)

    class StepLoggers(L.Callback):
        def __init__(self) -> None:
            self.loggers: RunLoggers | None = None

        @property
        def active(self) -> bool:
            return self.loggers is not None and self.loggers.active

        def on_train_start(self, trainer, module) -> None:
            if trainer.is_global_zero:  # the other ranks' loggers stay None: inactive
                # after a resume's restore, steps up to global_step were finished and saved; later ones (an
                # interrupted run's last steps) are trained again, so hidden
                step = int(trainer.global_step)
                self.loggers = make_loggers(names, artifacts.run_dir, purge_step=step + 1 if step else None)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
            if not self.active:
                return
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
            lr = max(float(g["lr"]) for g in trainer.optimizers[0].param_groups)
            self.loggers.log_scalars({"train/loss_step": float(loss.detach()), "lr": lr}, trainer.global_step)

        def close(self) -> None:
            if self.loggers is not None:
                self.loggers.close()
                self.loggers = None

    return StepLoggers


def make_logger_callback(spec: str | Sequence[str] | None, artifacts, val_dataset, meta: Mapping[str, Any],
                         count: int = 4):
    """A Lightning callback logging a semantic run to ``make_loggers(spec, run dir)``: the step loss and
    learning rate every optimizer step; the epoch's losses, validation metrics and ``count`` validation
    overlays after each validation. ``artifacts`` is the run's RunArtifacts (it knows the final run dir)."""

    class TrainingLoggers(step_loggers_base(spec, artifacts)):
        def on_train_epoch_end(self, trainer, module) -> None:
            logged = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}  # on every rank
            if not self.active:
                return
            step = trainer.global_step
            self.loggers.log_scalars({**logged, "epoch": trainer.current_epoch}, step)
            if count > 0:
                for i, panel in enumerate(_validation_overlays(module.eval_model, val_dataset, meta, count)):
                    self.loggers.log_image(f"val/overlay_{i}", panel, step)
            self.loggers.flush()

        def teardown(self, trainer, module, stage: str) -> None:
            self.close()

    return TrainingLoggers()
