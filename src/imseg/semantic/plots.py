"""Plots of a run directory: results.png, confusion_matrix.png, val_samples.png (matplotlib, Agg)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from .transforms import denormalize


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
