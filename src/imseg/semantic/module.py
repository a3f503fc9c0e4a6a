"""The LightningModule of semantic training, its optimizer setup and the weights' moving average."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import require
from .distill import build_distiller
from .losses import build_loss
from .metrics import ConfusionMatrix, metrics_from_confusion
from .models import create_model
from .transforms import IMAGENET_MEAN, IMAGENET_STD


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
            # a frozen teacher outside the module's parameters and state (see semantic.distill); None without one
            self.distiller = build_distiller(cfg, class_names, IMAGENET_MEAN, IMAGENET_STD)
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
            images, masks, *cached = batch  # cached: the teacher's logits on these images (distill_cache)
            logits = self(images)
            loss = self._loss(logits, masks)
            if self.distiller is not None:  # the teacher sees this same augmented batch, or its answer is cached
                distill = self.distiller(images, logits, cached[0] if cached else None)
                self.log("train/distill", distill, on_step=False, on_epoch=True, sync_dist=True,
                         batch_size=images.shape[0])
                loss = loss + distill
            self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
            self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=images.shape[0])
            return loss

        def _loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            """The criterion in fp32 with autocast off: under mixed precision (``amp``) only the model runs in
            half precision, and the losses' sorts, sums and dot products keep their fp32 accuracy."""
            with torch.autocast(logits.device.type, enabled=False):
                return self.criterion(logits.float(), masks)

        def on_train_epoch_start(self) -> None:
            # Dropout draws from this process's generators, which a resumed run starts afresh: seeding them
            # from (seed, epoch) gives every epoch the same draws whether or not the run was interrupted.
            seed = np.random.SeedSequence([int(self.cfg.get("seed", 0)), int(self.current_epoch), 1])
            torch.manual_seed(int(seed.generate_state(1)[0]))  # once an epoch: CPU and accelerator generators

        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            if self.ema is not None:  # after the optimizer step (automatic optimization, no accumulation)
                self.ema.update(self.model)

        def on_validation_epoch_start(self) -> None:
            self.val_cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)

        def validation_step(self, batch, batch_idx: int) -> None:
            images, masks = batch
            logits = self.eval_model(images)
            loss = self._loss(logits, masks)
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
