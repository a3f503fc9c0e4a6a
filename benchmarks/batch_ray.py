"""Batch throughput: the local executor against the Ray executor, same images, same machine, one run.

Prints images/s for each and two overhead ratios, the CPU model, and a paper scaling estimate for 10 and 100
machines from the measured per-image cost and the bytes each image sends through the object store:

  * end to end: local images/s over Ray images/s, both given the same CPUs (the local process runs
    ``workers x cpus-per-worker`` torch threads, Ray that many single-process workers), Ray's actor start-up
    included;
  * steady state: the same with Ray's rate taken as ``workers / c`` (``c`` below), what a long run converges to
    once the one-off start-up is spread over many images.

Scaling estimate (the model the numbers below fill in):
  * per-image cost ``c`` = seconds per image of one Ray worker (model work + read + write), measured;
  * a machine with ``w`` workers does ``w / c`` images/s; ``m`` machines ``m * w / c`` when the work
    stays CPU/GPU bound: each image moves only its task row (path, name) to a worker and one result
    row (a few hundred bytes) back, the job recipe goes once per actor, so object-store traffic is
    ``rows * images`` plus ``recipe * actors``, far below a network link;
  * what does not scale: the driver listing and planning (``plan_s`` per image, one process), the
    shared file system the images are read from and the outputs written to (``bytes_out`` per
    image), and actor start-up (model load, ``startup_s``) paid once per worker.

Usage: .venv/bin/python benchmarks/batch_ray.py [--images 20] [--model otsu | mobile-sam --checkpoint X]
       [--workers 2] [--cpus-per-worker 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from imseg.precision import cpu_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def build_job(args: argparse.Namespace):
    from imseg.jobs import build_segment_job

    if args.model == "otsu":
        return build_segment_job("otsu", fmt="coco")
    return build_segment_job(args.model, checkpoint=args.checkpoint, device="cpu", fmt="coco",
                             prompts={"points_per_side": args.points_per_side})


def timed_run(images: Path, job, out: Path, executor) -> tuple[float, object]:
    from imseg.batch import run_batch

    start = time.perf_counter()
    summary = run_batch(images, job, out, executor=executor)
    return time.perf_counter() - start, summary


def output_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--model", default="otsu")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--local-threads", type=int, default=None,
                        help="torch threads of the local run (default: the CPUs Ray gets, workers x cpus-per-worker)")
    args = parser.parse_args()
    cpus = max(args.workers * int(max(args.cpus_per_worker, 1)), 1)
    local_threads = args.local_threads or cpus

    import ray
    import torch
    from ray import cloudpickle

    from imseg.batch_ray import RayExecutor

    photos = sorted((DATA / "weizmann-horse" / "images").glob("*.jpg"))[: args.images]
    if not photos:
        raise SystemExit(f"no images under {DATA / 'weizmann-horse' / 'images'}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for photo in photos:
            shutil.copy(photo, folder / photo.name)
        job = build_job(args)
        torch.set_num_threads(local_threads)  # the local executor gets the CPUs the Ray workers get
        local_s, local = timed_run(folder, job, Path(tmp) / "local", "local")
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False,
                 log_to_driver=False)
        init_s = time.perf_counter() - start
        executor = RayExecutor(workers=args.workers, cpus_per_worker=args.cpus_per_worker)
        ray_s, remote = timed_run(folder, job, Path(tmp) / "ray", executor)
        recipe_bytes = len(cloudpickle.dumps(job.recipe or job))
        costs = [json.loads(m.read_text())["seconds"] for m in (Path(tmp) / "ray" / "done").glob("*.json")]
        out_bytes = output_bytes(Path(tmp) / "ray") / max(remote.done, 1)
        ray.shutdown()

    n = len(photos)
    local_rate, ray_rate = local.done / local_s, remote.done / ray_s
    per_worker = ray_rate / args.workers
    cost = sum(costs) / len(costs) if costs else float("inf")  # seconds per image inside one worker
    startup = max(ray_s - n * cost / args.workers, 0.0)  # actor start-up and scheduling, paid once per run
    print(f"CPU: {cpu_model()} ({args.workers} workers x {args.cpus_per_worker:g} CPU)")
    print(f"model {args.model}, {n} images")
    steady = args.workers / cost if costs else 0.0
    print(f"local: {local_s:.2f} s, {local_rate:.2f} images/s (1 process, {local_threads} threads)")
    print(f"ray:   {ray_s:.2f} s, {ray_rate:.2f} images/s, {per_worker:.2f} per worker "
          f"(ray.init {init_s:.1f} s not included); steady state {steady:.2f} images/s")
    print(f"overhead ratio, end to end (local images/s / ray images/s): {local_rate / ray_rate:.2f}x"
          if ray_rate else "overhead ratio: n/a")
    print(f"overhead ratio, steady state (local images/s / ray workers / per-image cost): {local_rate / steady:.2f}x"
          if steady else "steady-state ratio: n/a")
    print(f"per-image cost in a worker: {cost:.3f} s; start-up and scheduling: {startup:.1f} s per run")
    print(f"object store: job recipe {recipe_bytes} B once per actor; ~300 B of rows per image; "
          f"outputs {out_bytes / 1024:.1f} KiB per image on the shared file system")
    for machines in (10, 100):
        workers = machines * args.workers
        rate = workers / cost
        print(f"paper estimate, {machines} machines x {args.workers} workers: ~{rate:.0f} images/s "
              f"(1M images in {(1e6 / rate + startup) / 3600:.1f} h), object-store traffic ~{rate * 300 / 1e6:.2f} MB/s, "
              f"file-system writes ~{rate * out_bytes / 1e6:.1f} MB/s")


if __name__ == "__main__":
    main()
