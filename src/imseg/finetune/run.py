"""The fine-tuning run directory and the model it starts from.

``runs/finetune/NAME/``: ``config.yaml`` (``task: finetune``, model, imgsz, every option), ``metrics.csv``
(one row per epoch), ``results.png``, ``weights/best.pt`` and ``weights/last.pt`` in the official checkpoint
layout (a plain state_dict: ``sam_model_registry[variant](checkpoint=...)`` of segment_anything / mobile_sam
loads it; SAM 2.1: ``{"model": state_dict}``, which ``sam2.build_sam.build_sam2`` loads; LoRA adapters are
merged first), ``weights/last.ckpt`` (Lightning, for resume).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, ModelNotFoundError

CSV_FIELDS = ("epoch", "train_loss", "train_iou", "val_box_miou", "lr", "epoch_s", "encoder_calls", "cache_hits",
              "cache_misses")

__all__ = ["CSV_FIELDS", "build_start_model", "export_finetune_run", "is_finetune_run", "load_finetune_run",
           "official_state_dict", "read_run_config", "save_official"]


def build_start_model(model: str, checkpoint: str | os.PathLike | None, imgsz: int, *, allow_random: bool = False,
                      seed: int = 0) -> tuple[torch.nn.Module, str]:
    """The model to fine-tune and a description of its start ("checkpoint PATH" | "random initialisation").

    A checkpoint that is not the architecture of ``model`` is refused (it names the model it belongs to)."""
    from ..registry import find_weights, get_spec
    from ..sam.checkpoint import build_model, get_config, load_into, read_state_dict

    spec = get_spec(model)
    if spec.family == "sam2":
        from .sam2_run import build_sam2_start

        return build_sam2_start(spec, checkpoint, imgsz, allow_random=allow_random, seed=seed)
    if spec.family != "sam":
        raise ConfigError(f"{spec.name}: fine-tuning supports SAM (sam-vit-b/l/h, mobile-sam) and SAM 2.1 "
                          f"(sam2.1-t/s/b+/l); {spec.family} models are not supported by imseg finetune.")
    variant = spec.options["variant"]
    base = get_config(variant)
    if imgsz % base.patch_size or imgsz < 4 * base.patch_size:
        raise ConfigError(f"--imgsz must be a multiple of {base.patch_size} (>= {4 * base.patch_size}); got {imgsz}.")
    if base.encoder == "vit" and imgsz != base.img_size:
        raise ConfigError(f"{spec.name}: its ViT encoder has absolute position embeddings for {base.img_size} px; "
                          f"use --imgsz {base.img_size} (mobile-sam trains at any multiple of 16).")
    torch.manual_seed(seed)  # a random start is reproducible (and so is its embedding-cache key)
    net = build_model(get_config(variant, img_size=imgsz))
    if checkpoint is None:
        checkpoint = find_weights(spec.name)
    if checkpoint is not None:
        from .sam2_run import refuse_sam2_checkpoint

        state = read_state_dict(checkpoint)
        refuse_sam2_checkpoint(state, spec.name, checkpoint)
        load_into(net, state, variant, where=str(checkpoint))
        return net, f"checkpoint {checkpoint}"
    if not allow_random:
        raise CheckpointError(f"no checkpoint for {spec.name}: pass --checkpoint PATH (or `imseg weights download "
                              f"{spec.name}`), or --random-init to start from random weights.")
    return net, "random initialisation"


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as the official code names them; LoRA adapters merged into plain weights."""
    from ..sam.lora import has_lora, merge_lora

    state = merge_lora(model) if has_lora(model) else model.state_dict()
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def save_official(path: Path, model: torch.nn.Module) -> Path:
    from ..io import atomic_path
    from .sam2_recipe import is_sam2
    from .sam2_run import sam2_checkpoint

    state = official_state_dict(model)
    with atomic_path(path) as tmp:
        torch.save(sam2_checkpoint(state) if is_sam2(model) else state, tmp)
    return path


def append_metrics(path: Path, row: dict) -> None:
    """Add an epoch row to metrics.csv (rows of later epochs, left by an interrupted run, are replaced)."""
    from ..io import atomic_path

    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < int(row["epoch"])]
    rows.append(row)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def plot_metrics(csv_path: Path, out: Path) -> Path:
    """results.png: train loss and val box-prompt mIoU per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "train_loss", "train loss"), (axes[1], "val_box_miou", "val box-prompt mIoU")):
        ax.plot(epochs, [float(r[key] or "nan") for r in rows], marker="o")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_run_config(run: str | os.PathLike) -> dict[str, Any]:
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise ModelNotFoundError(f"{run}: no config.yaml; not a run directory of imseg finetune.")
    return yaml.safe_load(path.read_text()) or {}


def is_finetune_run(path: str | os.PathLike) -> bool:
    """A fine-tuning run directory, or one of its weights files."""
    path = Path(path)
    run = path.parent.parent if path.is_file() else path
    try:
        return read_run_config(run).get("task") == "finetune"
    except Exception:  # noqa: BLE001 - anything unreadable is simply not a fine-tuning run
        return False


def _is_sam2_run(cfg: dict) -> bool:
    from ..registry import get_spec

    return get_spec(cfg["model"]).family == "sam2"


def load_finetune_run(path: str | os.PathLike, *, weights: str = "best", device: str = "auto", **kwargs: Any):
    """A :class:`~imseg.sam.segmenter.SamSegmenter` of a fine-tuning run (``weights``: best, last or a path);
    a :class:`~imseg.sam2.segmenter.Sam2Segmenter` for a SAM 2.1 run."""
    from ..device import resolve_device
    from ..sam.checkpoint import build_model, get_config, load_into, read_state_dict
    from ..sam.predictor import SamPredictor
    from ..sam.segmenter import SamSegmenter

    path = Path(path)
    run, file = (path.parent.parent, path) if path.is_file() else (path, None)
    cfg = read_run_config(run)
    file = file or (Path(weights) if weights not in ("best", "last") else run / "weights" / f"{weights}.pt")
    if not file.is_file():
        raise ModelNotFoundError(f"{file}: no such weights file in the run (best.pt / last.pt are written after "
                                 f"the first epoch).")
    if _is_sam2_run(cfg):
        from .sam2_run import load_sam2_run

        return load_sam2_run(cfg, run, file, device=device, **kwargs)
    model = build_model(get_config(cfg["variant"], img_size=int(cfg["imgsz"])))
    load_into(model, read_state_dict(file), cfg["variant"], where=str(file))
    predictor = SamPredictor(model.to(resolve_device(device)), dtype=kwargs.pop("dtype", None))
    if kwargs:
        raise ConfigError(f"unknown options for a fine-tuning run: {sorted(kwargs)}; known: weights, device, dtype.")
    return SamSegmenter(predictor, name=f"{cfg['model']} fine-tuned ({run.name})", checkpoint=str(file))


def export_finetune_run(run: str | os.PathLike, out: str | os.PathLike, *, weights: str = "best", int8: bool = False,
                        calibration: Any = None, **options: Any) -> Path:
    """``imseg export --run RUN`` for a fine-tuning run: SAM's encoder.onnx + decoder.onnx of its weights at
    the run's input size; returns the manifest path."""
    from ..export.onnx import export_sam

    cfg = read_run_config(run)
    model = load_finetune_run(run, weights=weights, device="cpu").model
    if _is_sam2_run(cfg):
        from .sam2_run import export_sam2_run

        return export_sam2_run(cfg, model, out, int8=int8, calibration=calibration, **options)
    manifest = export_sam(model, out, model_name=f"{cfg['model']} fine-tuned", variant=cfg["variant"], **options)
    if int8 or calibration is not None:
        from ..export.quantize import quantize_sam_export

        quantize_sam_export(manifest.parent, calibration=calibration)
    return manifest
