"""Mask R-CNN on DSB 2018 nuclei against the classical Otsu + watershed baseline, on one seeded train/val split.

Trains ``imseg.instance.train_instance`` within a time budget, then reports on the validation images:
the DSB 2018 score (mean over IoU 0.50:0.05:0.95 of TP/(TP+FP+FN)), F1 at IoU 0.5 and COCO mask AP, for the
trained model (``best.pt``) and for ``imseg.load("watershed", threshold="otsu")``.

Usage: .venv/bin/python benchmarks/train_instance.py --data ../shared/data/dsb2018-nuclei --out runs/bench/dsb
       [--minutes 60] [--epochs 100] [--imgsz 512] [--backbone resnet18] [--val-fraction 0.2] [--seed 0]
       [--limit N] (use only N images: a quick check that the script runs)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from imseg.instance.formats import read_dsb
from imseg.instance.infer import load_instance_run
from imseg.instance.metrics import instance_metrics
from imseg.instance.train import split_dataset, train_instance
from imseg.masks import Masks

KEYS = ("dsb_score", "f1_50", "mask_ap", "mask_ap50")


def watershed_scores(val, names: list[str]) -> dict:
    import imseg

    segmenter = imseg.load("watershed", threshold="otsu")
    predictions = []
    for sample in val.samples:
        found = segmenter.segment(sample.image_path)
        # class-agnostic baseline: every region is the one class, ranked by area for COCO AP
        predictions.append(Masks(found.masks, scores=found.areas / max(1, found.areas.max(initial=1)),
                                 labels=np.zeros(len(found), np.int64), class_names=names,
                                 image_size=(sample.height, sample.width)))
    return instance_metrics(predictions, val.samples, names, max_dets=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    ids = None
    if args.limit:
        root = args.data / "train" if (args.data / "train").is_dir() else args.data
        ids = sorted(p.name for p in root.iterdir() if p.is_dir())[: args.limit]
    data = read_dsb(args.data, ids=ids)
    train, val = split_dataset(data, args.val_fraction, args.seed)
    small = args.limit is not None
    run = train_instance({
        "data": train, "val": val, "backbone": args.backbone, "epochs": 1 if small else args.epochs,
        "imgsz": args.imgsz, "batch": args.batch, "seed": args.seed, "max_time": args.minutes * 60,
        "detections": 300, "proposals": 64 if small else 1000, "channels": 32 if small else 256,
        "project": args.out.parent, "name": args.out.name, "exist_ok": True, "accelerator": args.accelerator,
    })
    model = load_instance_run(run, device="cuda" if args.accelerator == "gpu" else "cpu")
    results = {
        "split": {"train": len(train), "val": len(val), "seed": args.seed, "val_fraction": args.val_fraction},
    }
    for name, metrics in (("maskrcnn", model.evaluate(val, max_dets=300)),
                          ("watershed_otsu", watershed_scores(val, list(data.categories)))):
        results[name] = {k: metrics[k] for k in KEYS}
    (run / "benchmark.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
