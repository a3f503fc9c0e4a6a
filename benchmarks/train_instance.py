"""Instance segmentation on DSB 2018 nuclei against the classical Otsu + watershed baseline, one seeded train/val split.

Trains from scratch within a time budget, then reports on the validation images the DSB 2018 score (mean over
IoU 0.50:0.05:0.95 of TP/(TP+FP+FN) per image, averaged), F1 at IoU 0.5 and COCO mask AP, for the trained model
(``best.pt``) and for ``imseg.load("watershed", threshold="otsu")``. ``--arch unet`` (the default) is the
contour-aware U-Net (:mod:`imseg.instance.unet`), ``--arch maskrcnn`` torchvision's Mask R-CNN; ``--planned`` is
``imseg train --task instance --data DATA --time MINUTES`` (every option planned from the data and a timing probe,
:mod:`imseg.instance.plan`) on the same split. The run directory
is what ``imseg.load`` / ``imseg val --run`` read; ``benchmark.json`` in it holds the figures, the time and the load.

Usage: .venv/bin/python benchmarks/train_instance.py --data ../shared/data/dsb2018-nuclei --out runs/bench/dsb
       [--arch unet|maskrcnn] [--minutes 20] [--epochs 100] [--imgsz N] [--batch N] [--val-fraction 0.2] [--seed 0]
       [--planned] [--normalize none|stretch|stretch-dark] [--limit N] (use only N images: a quick check that the script runs)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from imseg.instance.formats import read_dsb
from imseg.instance.infer import load_instance_run
from imseg.instance.metrics import instance_metrics
from imseg.instance.train import split_dataset, train_instance
from imseg.instance.unet import NORMALIZE, train_unet_instance
from imseg.masks import Masks
from imseg.precision import cpu_model

KEYS = ("dsb_score", "f1_50", "precision_50", "recall_50", "mask_ap", "mask_ap50")
MAX_DETS = 1000  # dense images hold several hundred nuclei


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
    return instance_metrics(predictions, val.samples, names, max_dets=MAX_DETS)


def train(args, data, limited: bool) -> Path:
    normalize = {} if args.normalize is None else {"normalize": args.normalize}
    if args.planned:
        from imseg.instance.planner import plan_and_train_instance

        return plan_and_train_instance(data, args.minutes, {}, {
            "val_fraction": args.val_fraction, "seed": args.seed, "project": str(args.out.parent),
            "name": args.out.name, "exist_ok": True, "accelerator": args.accelerator, **normalize})
    common = {"val_fraction": args.val_fraction, "seed": args.seed, "epochs": 1 if limited else args.epochs,
              "max_time": args.minutes * 60, "project": args.out.parent, "name": args.out.name, "exist_ok": True,
              "accelerator": args.accelerator}
    if args.arch == "unet":
        return train_unet_instance({**common, **normalize, "data": data, "imgsz": args.imgsz or 256,
                                    "batch": args.batch or 4})
    return train_instance({
        **common, "data": data, "backbone": "resnet18", "imgsz": args.imgsz or 512, "batch": args.batch or 2,
        "detections": 300, "proposals": 64 if limited else 1000, "channels": 32 if limited else 256,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    parser.add_argument("--arch", choices=("unet", "maskrcnn"), default="unet")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=None, help="default 256 (unet) / 512 (maskrcnn)")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (unet) / 2 (maskrcnn)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--normalize", choices=NORMALIZE, default=None,
                        help="the U-Net's per-image normalisation (default: the plan's with --planned, else the model's)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--planned", action="store_true", help="plan every option from the data (--time)")
    args = parser.parse_args()

    ids = None
    if args.limit:
        root = args.data / "train" if (args.data / "train").is_dir() else args.data
        ids = sorted(p.name for p in root.iterdir() if p.is_dir())[: args.limit]
    dataset = read_dsb(args.data, ids=ids)
    _, val = split_dataset(dataset, args.val_fraction, args.seed)  # the split training makes from the same seed
    load_before = os.getloadavg()
    start = time.monotonic()
    # the whole set by path, so the run records it and `imseg val --run` re-makes this split
    run = train(args, dataset if ids else str(args.data), ids is not None)
    seconds = time.monotonic() - start
    model = load_instance_run(run, device="cuda" if args.accelerator == "gpu" else "cpu")
    label = "planned" if args.planned else args.arch
    results = {
        "arch": label, "split": {"train": len(dataset) - len(val), "val": len(val), "seed": args.seed,
                                     "val_fraction": args.val_fraction},
        "train_seconds": round(seconds, 1), "budget_minutes": args.minutes,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_before": [round(v, 2) for v in load_before],
                    "load_after": [round(v, 2) for v in os.getloadavg()]},
    }
    for name, metrics in ((label, model.evaluate(val, max_dets=MAX_DETS)),
                          ("watershed_otsu", watershed_scores(val, list(dataset.categories)))):
        results[name] = {k: round(float(metrics[k]), 4) for k in KEYS}
    (run / "benchmark.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
