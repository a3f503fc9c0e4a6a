"""Semantic knowledge distillation on real data (Weizmann horses: split.json train 200 / val 64 / test 64).

    PYTHONHASHSEED=0 .venv/bin/python benchmarks/distill_semantic.py
    PYTHONHASHSEED=0 .venv/bin/python benchmarks/distill_semantic.py --teacher-run runs/bench_distill/teacher

1. A teacher: U-Net on a full ResNet-34 with smp's default decoder (256..16 channels), trained at ``--imgsz``
   or ``--teacher-imgsz`` (skipped with ``--teacher-run``: an existing run directory is used). A teacher at k times
   the student's size answers, with ``--distill-cache``, on the student's views made at k times the pixels.
2. A small student: U-Net on the first four stages of MobileNetV2 (``encoder_depth 4``) with a 64/32/16/8-channel
   decoder (8x fewer multiply-adds than the teacher), trained for the same number of epochs with and without
   ``--teacher`` (``--distill``, ``--distill-weight``, ``--distill-temperature``, ``--distill-cache``,
   ``--distill-views``; fix them before the run), for each of ``--seeds``. With ``--same-time`` each seed also
   trains the student without the teacher for as long as its distilled run took (the epochs scaled by the time
   ratio), since the teacher makes a distilled run slower (on every batch, or on its cached views before training).

Every run uses the same data, augmentation, loss, schedule and epochs; best.pt is chosen on the validation split,
then scored once on the test split at each image's own resolution (letterboxed to imgsz and scaled back, as
``imseg val --resize``): foreground (horse) IoU, mean and spread (sample standard deviation, min..max) over seeds.
Inference speed: median time of a forward pass (batch 1 and batch 4 at imgsz, on 1 and ``--threads`` torch
threads), teacher and student measured interleaved so a shared CPU's load falls on both alike; a teacher trained at
another size is timed again at that size (``own_size_*``: each model at the size it predicts at).

Results (one JSON line per run, then a summary) go to stdout and to ``--out`` (default
runs/bench_distill/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _data import data_dir

from imseg.precision import cpu_model

HORSES = data_dir() / "weizmann-horse"
COMMON = dict(
    model="unet", batch=8, lr=3e-3, loss="ce+lovasz", workers=0, optimizer="adamw", scheduler="cosine", warmup=1.0,
    weight_decay=1e-4, patience=0, cache=True, save_period=1000, val_samples=0,
    augment={"hflip": 0.5, "scale": [0.9, 1.2], "rotate": 0, "color_jitter": 0.2},
    progress=False, exist_ok=True, accelerator="cpu",
)
TEACHER = dict(encoder="resnet34", model_kwargs={})
STUDENT = dict(encoder="mobilenet_v2", model_kwargs={"encoder_depth": 4, "decoder_channels": [64, 32, 16, 8]})


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--teacher-imgsz", type=int, help="train the teacher at this input size (default --imgsz); "
                        "with --distill-cache and a multiple of --imgsz it answers on the student's very views made "
                        "at its size, its answer shrunk to the student's pixels as class shares (detail the "
                        "student's input lacks)")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs (with and without the teacher)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--distill", default="kd")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--distill-temperature", type=float, default=1.0)
    parser.add_argument("--distill-cache", action="store_true", help="run the teacher before training on "
                        "--distill-views augmented views of each training image and keep its logits (imseg train "
                        "--distill-cache): the epochs cycle through those views")
    parser.add_argument("--distill-views", type=int, default=8)
    parser.add_argument("--teacher-run", help="use this trained run as the teacher instead of training one")
    parser.add_argument("--limit", type=int, help="keep the first N training images (quick trials)")
    parser.add_argument("--speed-imgsz", type=int, help="input size of the speed comparison (default --imgsz)")
    parser.add_argument("--amp", action="store_true", help="bf16 mixed precision for every run (as the planner "
                        "chooses on a CPU with native bf16)")
    parser.add_argument("--same-time", action="store_true",
                        help="also train each seed's student without the teacher for as long as the distilled "
                             "run took (more epochs), so the two are compared at equal training time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--project", default="runs/bench_distill")
    parser.add_argument("--out", default="runs/bench_distill/results.json")
    return parser.parse_args(argv)


def data_spec(limit: int | None) -> dict:
    split = json.loads((HORSES / "split.json").read_text())
    return {"path": str(HORSES), "names": ["background", "horse"], "train": list(split["train"])[: limit or None],
            "val": list(split["val"]), "test": list(split["test"])}


def train_run(spec: dict, sets: dict, name: str, options: dict) -> tuple[Path, float, int]:
    """(run dir, minutes, epochs run) of one training run."""
    from imseg.semantic.train import train

    start = time.perf_counter()
    result = train(dict(COMMON, data=spec, name=name, **options),
                   datasets={"train": sets["train"], "val": sets["val"]}, class_names=spec["names"], ignore_index=255)
    return result.run_dir, (time.perf_counter() - start) / 60, result.epochs_run


def score_test(run_dir: Path, native_test) -> float:
    from imseg import load

    seg = load(run_dir, device="cpu", resize=True)
    return float(seg.evaluate(native_test).compute()["iou"][1])


def forward_ms(teacher_dir: Path, student_dir: Path, imgsz: int, threads: int, repeats: int = 10,
               teacher_imgsz: int | None = None) -> dict:
    """Median forward time (ms) of each model at batch 1 and 4, on 1 and ``threads`` torch threads, measured
    interleaved (fp32 eager, as ``imseg.load(RUN)`` runs a model); the teacher's input is ``teacher_imgsz`` when
    given (the size it predicts at), else ``imgsz``."""
    import torch

    from imseg.semantic.checkpoints import find_checkpoint, load_checkpoint, model_from_checkpoint

    models = {k: model_from_checkpoint(load_checkpoint(find_checkpoint(d))) for k, d in
              (("teacher", teacher_dir), ("student", student_dir))}
    out: dict = {"speed_imgsz": imgsz}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        for batch in (1, 4):
            inputs = {"teacher": torch.randn(batch, 3, teacher_imgsz or imgsz, teacher_imgsz or imgsz),
                      "student": torch.randn(batch, 3, imgsz, imgsz)}
            times: dict[str, list[float]] = {k: [] for k in models}
            with torch.inference_mode():
                for key, model in models.items():
                    model(inputs[key])  # warm-up
                for _ in range(repeats):
                    for key, model in models.items():
                        start = time.perf_counter()
                        model(inputs[key])
                        times[key].append((time.perf_counter() - start) * 1000)
            tag = f"batch{batch}_threads{n_threads}"
            for key, values in times.items():
                out[f"{key}_ms_{tag}"] = round(statistics.median(values), 2)
            out[f"speedup_{tag}"] = round(out[f"teacher_ms_{tag}"] / out[f"student_ms_{tag}"], 2)
    torch.set_num_threads(threads)
    out["teacher_params"] = sum(p.numel() for p in models["teacher"].parameters())
    out["student_params"] = sum(p.numel() for p in models["student"].parameters())
    return out


def trained_imgsz(run_dir: Path) -> int:
    from imseg.semantic.checkpoints import find_checkpoint, load_checkpoint

    return int(load_checkpoint(find_checkpoint(run_dir))["imgsz"])


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "values": [round(v, 4) for v in values]}


def emit(record: dict, results: list, out: Path) -> None:
    record["load_average"] = load_average()
    results.append(record)
    print(json.dumps(record), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def main(argv: list[str]) -> list:
    import torch

    from imseg.semantic.data import build_datasets

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    print("command: PYTHONHASHSEED=0 .venv/bin/python benchmarks/distill_semantic.py "
          + " ".join(shlex.quote(a) for a in argv))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; "
          f"start {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; load average {load_average()}", flush=True)
    spec = data_spec(args.limit)
    native = build_datasets(spec, imgsz=None, augment="none", seed=None, cache=True, validate=False)
    results: list = []
    project = dict(project=args.project, imgsz=args.imgsz, amp=args.amp)
    if args.teacher_run:
        teacher_dir = Path(args.teacher_run)
        emit({"run": "teacher", "dir": str(teacher_dir), "given": True,
              "test_iou": round(score_test(teacher_dir, native["test"]), 4)}, results, out)
    else:
        teacher_imgsz = args.teacher_imgsz or args.imgsz
        sets = build_datasets(spec, imgsz=teacher_imgsz, augment=COMMON["augment"], seed=0, cache=True)
        teacher_dir, minutes, epochs = train_run(spec, sets, "teacher", dict(TEACHER, epochs=args.teacher_epochs,
                                                                             seed=0, **dict(project, imgsz=teacher_imgsz)))
        emit({"run": "teacher", "dir": str(teacher_dir), "minutes": round(minutes, 2), "epochs": epochs,
              "test_iou": round(score_test(teacher_dir, native["test"]), 4)}, results, out)
    distill = dict(teacher=str(teacher_dir), distill=args.distill, distill_weight=args.distill_weight,
                   distill_temperature=args.distill_temperature, distill_cache=args.distill_cache,
                   **({"distill_views": args.distill_views} if args.distill_cache else {}))
    scores: dict[str, list[float]] = {"student": [], "distilled": []}
    if args.same_time:
        scores["student_same_time"] = []
    student_dir = None
    for seed in (int(s) for s in args.seeds.split(",")):
        sets = build_datasets(spec, imgsz=args.imgsz, augment=COMMON["augment"], seed=seed, cache=True)
        minutes_of: dict[str, float] = {}
        runs = [("student", {}, args.epochs), ("distilled", distill, args.epochs)]
        if args.same_time:
            runs.append(("student_same_time", {}, None))
        for kind, extra, epochs in runs:
            if epochs is None:  # as long as the distilled run: the student's epochs scaled by the time ratio
                epochs = max(args.epochs, round(args.epochs * minutes_of["distilled"] / minutes_of["student"]))
            run_dir, minutes, epochs_run = train_run(spec, sets, f"{kind}_seed{seed}",
                                                     dict(STUDENT, epochs=epochs, seed=seed, **project, **extra))
            minutes_of[kind] = minutes
            iou = score_test(run_dir, native["test"])
            scores[kind].append(iou)
            student_dir = run_dir
            emit({"run": kind, "seed": seed, "dir": str(run_dir), "minutes": round(minutes, 2), "epochs": epochs_run,
                  "test_iou": round(iou, 4)}, results, out)
    teacher_imgsz = trained_imgsz(teacher_dir)
    summary = {"run": "summary", "imgsz": args.imgsz, "teacher_imgsz": teacher_imgsz,
               "amp": args.amp, "teacher_epochs": args.teacher_epochs,
               "student_epochs": args.epochs, "distill": {k: v for k, v in distill.items() if k != "teacher"},
               "test_images": len(native["test"]), "cpu": cpu_model(), "threads": args.threads,
               **{f"test_iou_{k}": spread(v) for k, v in scores.items() if v},
               **forward_ms(teacher_dir, student_dir, args.speed_imgsz or args.imgsz, args.threads)}
    if teacher_imgsz != args.imgsz:  # each at the size it predicts at, as deployed
        own = forward_ms(teacher_dir, student_dir, args.imgsz, args.threads, teacher_imgsz=teacher_imgsz)
        summary.update({f"own_size_{k}": v for k, v in own.items() if "_ms_" in k or k.startswith("speedup")},
                       own_size_teacher_imgsz=teacher_imgsz)
    if scores["student"] and scores["distilled"]:
        for kind in (k for k in scores if k.startswith("student")):
            summary[f"gain_mean_over_{kind}"] = round(statistics.mean(scores["distilled"])
                                                      - statistics.mean(scores[kind]), 4)
    emit(summary, results, out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
