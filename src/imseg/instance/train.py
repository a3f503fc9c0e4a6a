"""Mask R-CNN training: a torch Dataset over an InstanceDataset, a LightningModule, and ``train_instance(config)``.

Run directory (``runs/train/NAME[N]/``)::

    weights/best.pt, weights/last.pt   imseg instance checkpoints (format "imseg.instance", weights_only loadable)
    weights/last.ckpt                  Lightning checkpoint for ``resume``
    metrics.csv                        one row per epoch
    config.yaml                        task: instance, class names, every training option

best.pt is the epoch with the highest validation mask AP (the DSB score breaks ties, so early epochs
without any AP still keep the better model).
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError, DatasetError
from ..semantic.ddp import sync_batchnorm
from ..semantic.run import increment_run_dir, write_yaml
from .metrics import instance_metrics
from .model import BACKBONES, DEFAULT_ANCHORS, build_maskrcnn, model_config
from .sample import InstanceDataset

CHECKPOINT_FORMAT = "imseg.instance"
CHECKPOINT_VERSION = 1
CSV_FIELDS = ("epoch", "train_loss", "val_mask_ap", "val_mask_ap50", "val_box_ap", "val_dsb_score", "val_f1_50", "lr")

DEFAULTS: dict[str, Any] = {
    "data": None,  # a dataset path (any format read_dataset knows) or an InstanceDataset
    "val": None,  # a separate validation set; without it ``val_fraction`` of ``data`` is held out
    "val_fraction": 0.2,
    "model": "maskrcnn",
    "backbone": "resnet18",
    "backbone_weights": None,  # a backbone state_dict file; None trains from scratch
    "epochs": 50,
    "imgsz": 512,
    "batch": 2,
    "lr": 3e-4,
    "weight_decay": 1e-4,
    "workers": 0,
    "seed": 0,
    "proposals": 1000,
    "detections": 100,
    "anchors": list(DEFAULT_ANCHORS),
    "channels": 256,  # FPN / mask-head width (ResNet backbones)
    "scales": [0.75, 0.875, 1.0],
    "flips": True,
    "score_threshold": 0.5,  # for the DSB score / F1 on validation (COCO AP uses every detection)
    "max_time": None,  # seconds; no new epoch starts after this (the one in progress is finished and validated)
    "name": "exp",
    "project": "runs/train",
    "exist_ok": False,
    "resume": None,  # a run directory or its weights/last.ckpt
    "accelerator": "auto",
    "devices": 1,
    "progress": True,
}


class InstanceTorchDataset(torch.utils.data.Dataset):
    """Items ``(image (3, H, W) float in [0, 1], target)`` in torchvision's detection format: ``boxes`` (N, 4)
    XYXY, ``labels`` (N,) 1-based, ``masks`` (N, H, W) uint8. Crowd objects and empty masks are left out."""

    def __init__(self, dataset: InstanceDataset, class_names: list[str], *, flips: bool = False, seed: int = 0):
        self.samples, self.flips, self.seed = dataset.samples, flips, seed
        self.index = {name: i + 1 for i, name in enumerate(class_names)}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from ..io import read_image

        sample = self.samples[i]
        rgb = read_image(sample.image_path)
        if rgb.shape[:2] != (sample.height, sample.width):
            raise DatasetError(f"{sample.image_path}: image is {rgb.shape[1]}x{rgb.shape[0]} but its annotation says "
                               f"{sample.width}x{sample.height}; re-export the annotations for this image.")
        objects = [o for o in sample.objects if not o.iscrowd]
        masks = np.stack([o.mask.decode() for o in objects]) if objects else np.zeros((0, *rgb.shape[:2]), bool)
        labels = np.array([self.index[o.category] for o in objects], np.int64)
        if self.flips:
            rng = random.Random(hash((self.seed, self.epoch, i)))
            for axis in (1, 0):
                if rng.random() < 0.5:
                    rgb, masks = np.flip(rgb, axis), np.flip(masks, axis + 1)
        keep = masks.any(axis=(1, 2))
        masks, labels = masks[keep], labels[keep]
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255)
        return image, {"boxes": torch.from_numpy(_xyxy(masks)), "labels": torch.from_numpy(labels),
                       "masks": torch.from_numpy(np.ascontiguousarray(masks, np.uint8))}


def _xyxy(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 pixel-edge boxes of (N, H, W) non-empty masks."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def collate(batch):
    return tuple(zip(*batch, strict=True))


def detections_to_masks(output: Mapping[str, torch.Tensor], image_size: tuple[int, int], class_names: list[str],
                        mask_threshold: float = 0.5):
    """A torchvision detection dict (one image) as :class:`imseg.Masks` (labels 0-based, XYWH boxes)."""
    from .detections import arrays_to_masks

    return arrays_to_masks(*(output[k].detach().cpu().numpy() for k in ("boxes", "labels", "scores", "masks")),
                           image_size, class_names, mask_threshold)


def _make_module_class():
    import lightning as L

    class MaskRCNNModule(L.LightningModule):
        def __init__(self, cfg: dict, class_names: list[str], arch: dict) -> None:
            super().__init__()
            self.cfg, self.class_names, self.arch = cfg, class_names, arch
            self.model = build_maskrcnn(arch, cfg.get("backbone_weights"))
            self.val_metrics: dict = {}
            self._preds: list = []
            self._truth: list = []

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:
            images, targets = batch
            losses = self.model(list(images), list(targets))
            loss = sum(losses.values())
            self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(images), prog_bar=True)
            return loss

        def on_validation_epoch_start(self) -> None:
            self._preds, self._truth = [], []

        def validation_step(self, batch, batch_idx: int) -> None:
            from ..masks import Masks

            images, targets = batch
            for image, output, target in zip(images, self.model(list(images)), targets, strict=True):
                size = tuple(image.shape[-2:])
                self._preds.append(detections_to_masks(output, size, self.class_names))
                masks = target["masks"].bool().cpu().numpy().reshape(-1, *size)
                self._truth.append(Masks(masks, labels=target["labels"].cpu().numpy() - 1,
                                         class_names=self.class_names, image_size=size))

        def on_validation_epoch_end(self) -> None:
            metrics = instance_metrics(self._preds, self._truth, self.class_names,
                                       score_threshold=self.cfg["score_threshold"], max_dets=self.arch["detections"])
            metrics.pop("per_image")
            self.val_metrics = metrics
            self._preds, self._truth = [], []

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"])
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warm = min(100, max(1, total // 10))

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return [opt], [{"scheduler": sched, "interval": "step"}]

        def on_train_epoch_start(self) -> None:
            loader = self.trainer.train_dataloader
            if loader is not None and hasattr(loader.dataset, "epoch"):
                loader.dataset.epoch = int(self.current_epoch)

    return MaskRCNNModule


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write an imseg instance checkpoint atomically: plain types + tensors only (loads with ``weights_only=True``)."""
    from ..io import atomic_path

    payload = dict(meta, format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION)
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read an imseg instance checkpoint (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. An instance run directory has weights/best.pt and last.pt.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an imseg instance checkpoint (no format={CHECKPOINT_FORMAT!r}); expected "
                              "weights/best.pt or last.pt of a run trained with `imseg train --task instance`.")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this imseg; upgrade imseg.")
    return payload


# ----------------------------------------------------------------------------- run directory
def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, InstanceDataset):
        return f"<in-memory dataset: {len(value)} images>"
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fitness(metrics: Mapping[str, Any]) -> tuple[float, float]:
    clean = lambda v: -math.inf if v is None or not math.isfinite(v) else float(v)  # noqa: E731
    return clean(metrics.get("mask_ap")), clean(metrics.get("dsb_score"))


def _make_artifacts_callback():
    import lightning as L

    class RunArtifacts(L.Callback):
        """metrics.csv row, weights/last.pt and best.pt after every validated epoch."""

        def __init__(self, run_dir: Path, meta: dict, max_time: float | None = None) -> None:
            self.run_dir, self.meta, self.max_time = run_dir, meta, max_time
            self.best: tuple[float, float] = (-math.inf, -math.inf)
            self.started = time.monotonic()

        def state_dict(self) -> dict:
            return {"best": list(self.best)}

        def load_state_dict(self, state: dict) -> None:
            self.best = tuple(state.get("best", self.best))

        def on_train_epoch_end(self, trainer, module) -> None:
            if trainer.sanity_checking or not module.val_metrics:
                return
            epoch, metrics = int(trainer.current_epoch), dict(module.val_metrics)
            logged = trainer.callback_metrics
            row = {"epoch": epoch, "train_loss": float(logged.get("train/loss", float("nan"))),
                   **{f"val_{k}": metrics[k] for k in ("mask_ap", "mask_ap50", "box_ap", "dsb_score", "f1_50")},
                   "lr": float(trainer.optimizers[0].param_groups[0]["lr"])}
            path = self.run_dir / "metrics.csv"
            new = not path.exists()
            with path.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            meta = dict(self.meta, epoch=epoch, metrics=_plain(metrics))
            save_checkpoint(self.run_dir / "weights" / "last.pt", module.model, meta)
            if _fitness(metrics) > self.best:
                self.best = _fitness(metrics)
                save_checkpoint(self.run_dir / "weights" / "best.pt", module.model, meta)
            if self.max_time is not None and time.monotonic() - self.started > self.max_time:
                trainer.should_stop = True  # whole epochs only, so every run ends with a validated last.pt

    return RunArtifacts


# ----------------------------------------------------------------------------- entry point
def _read(data: Any, what: str) -> InstanceDataset:
    from .formats import read_dataset

    if isinstance(data, InstanceDataset):
        return data
    if data is None:
        raise ConfigError(f"{what} is missing: pass a dataset path (COCO, YOLO-seg, VOC, labelme, DSB, ...).")
    return read_dataset(data)[1]


def split_dataset(dataset: InstanceDataset, val_fraction: float, seed: int) -> tuple[InstanceDataset, InstanceDataset]:
    """A seeded random split (same ``seed`` and data -> same split), at least one image on each side."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1; got {val_fraction}.")
    if len(dataset) < 2:
        raise DatasetError(f"{len(dataset)} image(s): a train/val split needs at least 2; pass a separate val= set.")
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_val = min(len(dataset) - 1, max(1, round(val_fraction * len(dataset))))
    pick = lambda idx: InstanceDataset(dataset.categories, [dataset.samples[i] for i in sorted(idx)])  # noqa: E731
    return pick(order[n_val:]), pick(order[:n_val])


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; known: {', '.join(DEFAULTS)}.")
    cfg = {**DEFAULTS, **config}
    if cfg["model"] != "maskrcnn":
        raise ConfigError(f"instance model {cfg['model']!r} is not supported; use maskrcnn or unet-watershed.")
    if cfg["backbone"] not in BACKBONES:
        raise ConfigError(f"backbone {cfg['backbone']!r} is not supported; choose one of {', '.join(BACKBONES)}.")
    for key in ("epochs", "batch", "imgsz"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key} must be >= 1; got {cfg[key]}.")
    return cfg


def _resume_path(resume: Any) -> Path:
    path = Path(resume)
    path = path / "weights" / "last.ckpt" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{path}: nothing to resume; pass a run directory with weights/last.ckpt or that file.")
    return path


def train_instance(config: Mapping[str, Any], callbacks: list | None = None) -> Path:
    """Train Mask R-CNN as ``config`` says (keys of :data:`DEFAULTS`) and return the run directory;
    ``callbacks``: more Lightning callbacks."""
    import lightning as L

    cfg = _config(config)
    train_set = _read(cfg["data"], "data")
    val_set = _read(cfg["val"], "val") if cfg["val"] is not None else None
    if val_set is None:
        train_set, val_set = split_dataset(train_set, cfg["val_fraction"], cfg["seed"])
    names = list(train_set.categories)
    extra = sorted(set(val_set.categories) - set(names))
    if extra:
        raise DatasetError(f"validation classes {extra} are not among the training classes {names}.")
    if not names:
        raise DatasetError("the training set has no categories; it needs at least one object class.")
    if not len(train_set) or not len(val_set):
        raise DatasetError(f"{len(train_set)} training and {len(val_set)} validation images; both need at least one.")
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    arch = model_config(cfg["backbone"], len(names), cfg["imgsz"], anchors=tuple(cfg["anchors"]),
                        proposals=cfg["proposals"], detections=cfg["detections"], scales=tuple(cfg["scales"]),
                        channels=int(cfg["channels"]))
    resume = _resume_path(cfg["resume"]) if cfg["resume"] else None
    run_dir = resume.parent.parent if resume else increment_run_dir(cfg["project"], cfg["name"], cfg["exist_ok"])
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    train_cfg = _plain(cfg)
    meta = {"task": "instance", "model": arch, "class_names": names, "train": train_cfg,
            "score_threshold": float(cfg["score_threshold"])}
    write_yaml(run_dir / "config.yaml", {"task": "instance", "model": "maskrcnn", "class_names": names,
                                          "nc": len(names), "train": train_cfg})
    loader = lambda ds, shuffle, flips: torch.utils.data.DataLoader(  # noqa: E731
        InstanceTorchDataset(ds, names, flips=flips, seed=cfg["seed"]), batch_size=int(cfg["batch"]),
        shuffle=shuffle, num_workers=int(cfg["workers"]), collate_fn=collate)
    module = _make_module_class()(train_cfg, names, arch)
    last = L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "weights", save_last=True, save_top_k=0)
    trainer = L.Trainer(
        max_epochs=int(cfg["epochs"]), accelerator=cfg["accelerator"], devices=cfg["devices"],
        sync_batchnorm=sync_batchnorm(cfg["devices"], 1, cfg["accelerator"]),
        callbacks=[_make_artifacts_callback()(run_dir, meta, cfg["max_time"]), last, *(callbacks or [])],
        logger=False, num_sanity_val_steps=0, gradient_clip_val=10.0, deterministic=False,
        enable_progress_bar=bool(cfg["progress"]), enable_model_summary=False, default_root_dir=run_dir,
    )
    trainer.fit(module, loader(train_set, True, bool(cfg["flips"])), loader(val_set, False, False),
                ckpt_path=str(resume) if resume else None)
    return run_dir


def train_command(data: str, *, model: str = "maskrcnn", backbone: str = "resnet18", weights: str | None = None,
                  val: str | None = None, val_fraction: float = 0.2, epochs: int = 50, imgsz: int = 512,
                  batch: int = 2, lr: float = 3e-4, workers: int = 0, seed: int = 0, proposals: int = 1000,
                  detections: int = 100, max_time: float | None = None, name: str = "exp",
                  project: str = "runs/train", exist_ok: bool = False, resume: str | None = None,
                  accelerator: str = "auto") -> Path:
    """Flat, typed options for ``imseg train --task instance`` (``weights``: a backbone state_dict file);
    ``model="unet-watershed"`` trains the contour-aware U-Net (:mod:`imseg.instance.unet`) instead."""
    if model == "unet-watershed":
        from .unet import train_unet_instance

        if resume is not None or weights is not None:
            raise ConfigError("--resume and backbone --weights apply to Mask R-CNN; the unet-watershed model trains "
                              "from scratch in one go (pass --epochs).")
        return train_unet_instance({
            "data": data, "val": val, "val_fraction": val_fraction, "epochs": epochs, "imgsz": imgsz, "batch": batch,
            "lr": lr, "workers": workers, "seed": seed, "max_time": max_time, "name": name, "project": project,
            "exist_ok": exist_ok, "accelerator": accelerator})
    return train_instance({
        "data": data, "model": model, "backbone": backbone, "backbone_weights": weights, "val": val,
        "val_fraction": val_fraction, "epochs": epochs, "imgsz": imgsz, "batch": batch, "lr": lr, "workers": workers,
        "seed": seed, "proposals": proposals, "detections": detections, "max_time": max_time, "name": name,
        "project": project, "exist_ok": exist_ok, "resume": resume, "accelerator": accelerator,
    })
