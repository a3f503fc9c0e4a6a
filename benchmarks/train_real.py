"""From-scratch training on real data (2-core CPU budget <= 15 min each), then held-out evaluation.

    .venv/bin/python benchmarks/train_real.py horses   # Weizmann horses: split.json, test foreground IoU (goal >= 0.85)
    .venv/bin/python benchmarks/train_real.py isbi     # ISBI 2012: train 25 / eval 5, pixel error (goal <= 0.08), adapted Rand

Evaluation runs the trained best.pt through imseg.load(run_dir) at full image resolution.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CONFIGS = {
    "horses": dict(
        data={"path": str(DATA / "weizmann-horse"), "names": ["background", "horse"], "split": "split.json"},
        model="unet", encoder="resnet18", imgsz=192, epochs=40, batch=8, lr=2e-3, loss="ce+dice", workers=2,
        patience=0, cache=True, name="bench_horses", eval_split="test",
    ),
    "isbi": dict(
        data={"path": str(DATA / "isbi2012-membrane" / "train"), "names": ["membrane", "cell"],
              "train": [str(i) for i in range(25)], "val": [str(i) for i in range(25, 30)]},
        model="unet", encoder="resnet18", imgsz=256, epochs=40, batch=4, lr=2e-3, loss="ce+dice", workers=2,
        patience=0, cache=True, name="bench_isbi", eval_split="val",
        augment={"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5, "scale": [0.5, 1.0]},
    ),
}


def main(which: str) -> None:
    import torch

    from imseg import load
    from imseg.semantic.data import build_datasets
    from imseg.semantic.train import train

    cfg = dict(CONFIGS[which])
    split = cfg.pop("eval_split")
    start = time.perf_counter()
    result = train(dict(cfg, project="runs/bench", progress=False, exist_ok=True))
    minutes = (time.perf_counter() - start) / 60
    seg = load(result.run_dir, device="cpu", resize=which == "horses")
    dataset = build_datasets(cfg["data"], imgsz=None, augment="none")[split]
    cm = seg.evaluate(dataset)
    m = cm.compute()
    out = {"config": which, "train_minutes": round(minutes, 2), "threads": torch.get_num_threads(),
           "eval_split": split, "images": len(dataset), "miou": m["miou"], "iou": m["iou"].tolist(),
           "pixel_error": 1 - m["pixel_accuracy"]}
    if which == "isbi":
        from skimage.measure import label
        from skimage.metrics import adapted_rand_error

        errors = []
        for i in range(len(dataset)):
            rgb, truth = dataset.read_raw(i)
            pred = seg.predict(rgb)
            errors.append(adapted_rand_error(label(truth == 1, connectivity=1), label(pred == 1, connectivity=1))[0])
        out["adapted_rand_error"] = float(np.mean(errors))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "horses")
