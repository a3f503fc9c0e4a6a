"""``imseg val --run`` for instance runs: which images to evaluate, and the metric tables.

Without ``--data`` the run's own data set is read again and split as training split it (same ``val_fraction``
and ``seed``), so the figures are those of the validation images the run never trained on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .sample import InstanceDataset


def run_config(run: str | os.PathLike) -> dict:
    """The run's config.yaml as a dict (empty when the run has none, e.g. a bare checkpoint file)."""
    import yaml

    path = Path(run)
    run_dir = path.parent.parent if path.is_file() and path.parent.name == "weights" else path
    config = run_dir / "config.yaml"
    if not config.is_file():
        return {}
    data = yaml.safe_load(config.read_text())
    return data if isinstance(data, dict) else {}


def evaluation_set(run: str | os.PathLike, data: str | None = None, split: str = "val") -> InstanceDataset:
    """The images ``imseg val`` evaluates: all of ``data`` when given, else ``split`` (val or train) of the run's
    own data set."""
    from .formats import read_dataset
    from .train import split_dataset

    if data is not None:
        return read_dataset(data)[1]
    if split not in ("val", "train"):
        raise ConfigError(f"--split must be val or train for an instance run; got {split!r}. To evaluate other "
                          "images pass --data.")
    config = run_config(run)
    train = config.get("instance") if isinstance(config.get("instance"), dict) else config.get("train") or {}
    source, val = train.get("data"), train.get("val")
    recorded = lambda v: isinstance(v, str) and not v.startswith("<")  # noqa: E731 - "<in-memory ...>" is not a path
    if split == "val" and recorded(val):
        return read_dataset(val)[1]
    if not recorded(source):
        raise ConfigError(f"{run}: the run does not record a data set path (it was trained on data held in memory); "
                          "pass --data with the images and annotations to evaluate.")
    dataset = read_dataset(source)[1]
    if recorded(val):  # a separate val set: all of data was training
        return dataset
    train_part, val_part = split_dataset(dataset, float(train.get("val_fraction", 0.2)), int(train.get("seed", 0)))
    return val_part if split == "val" else train_part


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def print_tables(title: str, metrics: dict, class_names: list[str]) -> None:
    """COCO AP (box and mask), per-class AP, and the DSB score with F1/precision/recall at IoU 0.5."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(title, soft_wrap=True)  # a run path may be long: one unwrapped line above the tables
    coco = Table(title="COCO AP")
    for col in ("", "AP", "AP50", "AP75"):
        coco.add_column(col, justify="left" if not col else "right")
    for prefix, label in (("box", "box"), ("mask", "mask")):
        coco.add_row(label, *(_fmt(metrics[f"{prefix}_{k}"]) for k in ("ap", "ap50", "ap75")))
    console.print(coco)
    per_class = Table(title="per-class AP@[.50:.95]")
    for col in ("class", "box AP", "mask AP"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for name in class_names:
        per_class.add_row(name, _fmt(metrics["per_class_box_ap"].get(name)),
                          _fmt(metrics["per_class_mask_ap"].get(name)))
    console.print(per_class)
    dsb = Table(title="DSB 2018 score (mean TP/(TP+FP+FN) over IoU 0.50:0.05:0.95, per image)")
    for col in ("DSB score", "F1@0.5", "precision@0.5", "recall@0.5"):
        dsb.add_column(col, justify="right")
    dsb.add_row(*(_fmt(metrics[k]) for k in ("dsb_score", "f1_50", "precision_50", "recall_50")))
    console.print(dsb)
