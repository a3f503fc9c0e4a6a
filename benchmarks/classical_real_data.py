"""Classical baselines on the real data (``IMSEG_DATA``, default ../shared/data), plus imseg's overhead over the libraries.

Tables (for benchmarks/RESULTS.md, section "Classical baselines"):
  * nuclei (stardist, 125 instances): thresholded distance watershed (defaults, and the global-Otsu
    variant) -> instance F1 at IoU 0.5, mean matched IoU;
  * Weizmann horses (test split): GrabCut from the ground-truth box, Otsu, k-means (k=2) -> mean IoU;
  * ISBI 2012 membranes (train labels): Otsu / adaptive threshold -> pixel error;
  * dense CRF on noise-degraded horse masks -> mean IoU before / after;
  * timing: imseg.load(method).segment vs calling scikit-image / OpenCV directly, same process.

Usage: .venv/bin/python benchmarks/classical_real_data.py [--horses N] [--isbi N] [--threads 1]
       [--only nuclei horses isbi timing]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _data import data_dir

DATA = data_dir()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def instance_match(pred: np.ndarray, truth: np.ndarray, thresh: float = 0.5) -> tuple[float, float, int, int]:
    """Instance F1 at IoU > thresh and mean IoU of matched pairs (IoU > 0.5 makes matches unique)."""
    from skimage.metrics import contingency_table

    p_ids = np.unique(pred)[1:] if pred.min() == 0 else np.unique(pred)
    t_ids = np.unique(truth)[1:] if truth.min() == 0 else np.unique(truth)
    table = contingency_table(truth, pred).toarray().astype(np.float64)
    inter = table[np.ix_(t_ids, p_ids)]
    union = table.sum(1)[t_ids][:, None] + table.sum(0)[p_ids][None] - inter
    ious = inter / union
    matched = ious > thresh
    tp = int(matched.sum())
    f1 = 2 * tp / (len(t_ids) + len(p_ids)) if len(t_ids) + len(p_ids) else 1.0
    return f1, float(ious[matched].mean()) if tp else 0.0, len(p_ids), len(t_ids)


def nuclei() -> None:
    import tifffile

    import imseg
    from imseg.classical import read_gray

    root = DATA / "stardist-nuclei"
    truth = tifffile.imread(root / "mask2d.tif").astype(np.int64)
    image = read_gray(root / "img2d.tif")
    variants = {
        "defaults (Li floor + local block 41 + watershed)": {},
        "global Otsu only (threshold=otsu, block_size=None, min_distance=5)": {
            "threshold": "otsu", "block_size": None, "min_distance": 5},
        "Otsu floor + local block 41": {"threshold": "otsu"},
    }
    for label, params in variants.items():
        t0 = time.perf_counter()
        masks = imseg.load("watershed", **params).segment(image)
        seconds = time.perf_counter() - t0
        pred = np.zeros(truth.shape, np.int64)
        for i, m in enumerate(masks.masks):
            pred[m] = i + 1
        f1, miou, n_pred, n_true = instance_match(pred, truth)
        print(f"nuclei  {label}: F1@0.5={f1:.3f} mean matched IoU={miou:.3f} "
              f"pred={n_pred} true={n_true} time={seconds:.2f}s")


def horses(n: int) -> None:
    import imseg
    from imseg import classical
    from imseg.io import read_image

    root = DATA / "weizmann-horse"
    names = json.loads((root / "split.json").read_text())["test"][:n]
    scores: dict[str, list[float]] = {"grabcut_box": [], "otsu": [], "otsu_best_polarity": [], "kmeans2_best_cluster": []}
    grabcut = imseg.load("grabcut")
    t_grab = 0.0
    for name in names:
        image = read_image(root / "images" / f"{name}.jpg")
        truth = read_image(root / "masks" / f"{name}.png")[:, :, 0] > 0
        ys, xs = np.nonzero(truth)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        t0 = time.perf_counter()
        masks = grabcut.segment(image, box=box)
        t_grab += time.perf_counter() - t0
        scores["grabcut_box"].append(iou(masks.masks.any(0), truth))
        fg = classical.otsu(image)
        scores["otsu"].append(iou(fg, truth))
        scores["otsu_best_polarity"].append(max(iou(fg, truth), iou(~fg, truth)))
        labels = classical.kmeans(image, n_segments=2)
        scores["kmeans2_best_cluster"].append(max(iou(labels == k, truth) for k in (1, 2)))
    for key, values in scores.items():
        print(f"horses  {key:22s} mean IoU={np.mean(values):.3f} (n={len(values)})")
    print(f"horses  grabcut time/image={t_grab / len(names):.3f}s")
    crf(names, root)


def crf(names: list[str], root: Path) -> None:
    from imseg.io import read_image
    from imseg.postprocess import dense_crf, threshold

    rng = np.random.default_rng(0)
    before, after = [], []
    for name in names:
        image = read_image(root / "images" / f"{name}.jpg")
        truth = read_image(root / "masks" / f"{name}.png")[:, :, 0] > 0
        prob = np.clip(np.where(truth, 0.65, 0.35) + rng.normal(0, 0.25, truth.shape), 0, 1).astype(np.float32)
        before.append(iou(threshold(prob), truth))
        after.append(iou(threshold(dense_crf(image, prob)), truth))
    print(f"horses  dense CRF on noisy masks: mean IoU {np.mean(before):.3f} -> {np.mean(after):.3f} (n={len(names)})")


def isbi(n: int) -> None:
    from imseg import classical
    from imseg.io import read_image

    root = DATA / "isbi2012-membrane" / "train"
    errors: dict[str, list[float]] = {"all interior (trivial)": [], "otsu": [], "adaptive(51, offset 0)": [],
                                      "adaptive(51, offset 20)": []}
    for i in range(n):
        gray = read_image(root / "image" / f"{i}.png")[:, :, 0]
        interior = read_image(root / "label" / f"{i}.png")[:, :, 0] > 127
        errors["all interior (trivial)"].append(float((~interior).mean()))
        errors["otsu"].append(float((classical.otsu(gray) != interior).mean()))
        for offset in (0, 20):
            fg = classical.adaptive(gray, block_size=51, offset=offset)
            errors[f"adaptive(51, offset {offset})"].append(float((fg != interior).mean()))
    for key, values in errors.items():
        print(f"isbi    {key:22s} pixel error={np.mean(values):.4f} (n={len(values)})")


def overhead(repeats: int = 5) -> None:
    """imseg wrapper vs the library call it wraps, same image, same process."""
    import cv2
    from skimage import filters, segmentation

    import imseg
    from imseg.io import read_image

    root = DATA / "weizmann-horse"
    image = read_image(root / "images" / "horse007.jpg")
    gray = image.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    truth = read_image(root / "masks" / "horse007.png")[:, :, 0] > 0
    ys, xs = np.nonzero(truth)
    rect = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))

    def ref_grabcut() -> None:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.grabCut(image[:, :, ::-1].copy(), mask, rect, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_RECT)

    cases = {
        "otsu": (lambda: gray > filters.threshold_otsu(gray), lambda: imseg.load("otsu").segment(image)),
        "slic": (lambda: segmentation.slic(image, n_segments=100, start_label=1),
                 lambda: imseg.load("slic").segment(image)),
        "grabcut": (ref_grabcut, lambda: imseg.load("grabcut").segment(
            image, box=(rect[0], rect[1], rect[0] + rect[2], rect[1] + rect[3]))),
    }
    for name, (ref, ours) in cases.items():
        ref(), ours()  # warm-up
        t_ref = min(_time(ref) for _ in range(repeats))
        t_ours = min(_time(ours) for _ in range(repeats))
        print(f"timing  {name:8s} library={t_ref * 1e3:8.1f} ms  imseg={t_ours * 1e3:8.1f} ms  ratio={t_ours / t_ref:.2f}")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horses", type=int, default=64, help="test-split horses to use (max 64)")
    parser.add_argument("--isbi", type=int, default=30, help="ISBI training images to use (max 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads")
    parser.add_argument("--only", nargs="+", choices=["nuclei", "horses", "isbi", "timing"],
                        help="run only these parts (default: all)")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(args.threads)
    parts = {"nuclei": nuclei, "horses": lambda: horses(args.horses), "isbi": lambda: isbi(args.isbi),
             "timing": overhead}
    for name in args.only or list(parts):
        parts[name]()


if __name__ == "__main__":
    main()
