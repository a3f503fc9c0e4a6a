"""Load test of ``imseg serve``: N concurrent segment requests against one cached embedding.

Starts the server (imseg's MobileSAM, random weights, official checkpoint layout) in a child
process on a free loopback port, uploads one image, then fires ``--requests`` point prompts at once
(bounded by ``--deadline`` seconds), twice: a warm-up burst, then the measured one.
Reports 5xx count, p50/p95 latency, requests/s, the server's
RSS before/after, and, as the reference, the official ``mobile_sam`` predictor's ``predict`` calls/s
in this process on the same weights (ratio = what HTTP + queueing + encoding cost on top).

    .venv/bin/python benchmarks/serve_load.py --requests 200 --concurrency 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build_checkpoint(path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import torch

    from conftest import build_official_sam

    torch.save(build_official_sam("vit_t").state_dict(), path)


def serve(port: int, checkpoint: str, concurrency: int, threads: int) -> None:
    import torch
    import uvicorn

    import imseg
    from imseg.serve.app import ServeSettings, create_app

    torch.set_num_threads(threads)
    segmenter = imseg.load("mobile-sam", checkpoint=checkpoint, device="cpu")
    app = create_app(segmenter, ServeSettings(concurrency=concurrency, queue_timeout=300, max_queue=1024))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def image_bytes() -> tuple[np.ndarray, bytes]:
    from PIL import Image
    from skimage import data, transform

    img = (transform.resize(data.astronaut(), (256, 256), anti_aliasing=True) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return img, buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2, help="server model workers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the server and the reference")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole burst")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.concurrency, args.threads)
        return
    asyncio.run(run(args))


async def run(args) -> None:
    import httpx
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    image, png = image_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "mobile_sam.pt"
        build_checkpoint(ckpt)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), str(ckpt), "--concurrency", str(args.concurrency),
             "--threads", str(args.threads)],
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=args.deadline,
                                         limits=httpx.Limits(max_connections=args.requests)) as client:
                for _ in range(600):
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.2)
                else:
                    raise SystemExit("server did not start")
                up = await client.post("/v1/images", content=png)
                up.raise_for_status()
                image_id = up.json()["image_id"]
                rng = np.random.default_rng(0)
                points = rng.uniform(5, 250, size=(args.requests, 2)).round(1).tolist()

                async def one(p) -> tuple[float, int]:
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(f"/v1/images/{image_id}/segment", json={"points": [p], "labels": [1]})
                        return time.perf_counter() - t0, r.status_code
                    except httpx.HTTPError:
                        return time.perf_counter() - t0, 599

                rss_cold = rss_mib(proc.pid)
                # warm-up burst of the same size: thread pools, allocator arenas and buffers reach their
                # working size; the measured burst after it shows whether memory keeps growing (a leak)
                await asyncio.wait_for(asyncio.gather(*(one(p) for p in points)), args.deadline)
                rss_before = rss_mib(proc.pid)
                t0 = time.perf_counter()
                results = await asyncio.wait_for(asyncio.gather(*(one(p) for p in points)), args.deadline)
                wall = time.perf_counter() - t0
                rss_after = rss_mib(proc.pid)
                metrics = (await client.get("/metrics")).text
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    # reference: the official predictor on the same weights, same prompts, in this process
    sys.path.insert(0, str(REPO / "tests"))
    from mobile_sam import SamPredictor

    from conftest import build_official_sam

    predictor = SamPredictor(build_official_sam("vit_t"))
    predictor.set_image(image)
    n_ref = min(50, args.requests)
    t0 = time.perf_counter()
    for p in points[:n_ref]:
        predictor.predict(np.array([p], np.float32), np.array([1]), multimask_output=True)
    ref_rate = n_ref / (time.perf_counter() - t0)

    latencies = np.array([r[0] for r in results]) * 1000
    statuses = [r[1] for r in results]
    n5xx = sum(s >= 500 for s in statuses)
    rate = len(results) / wall
    hits = [line for line in metrics.splitlines() if line.startswith("imseg_cache_hits_total")]
    print(f"requests: {len(results)} at once, server workers {args.concurrency}, torch threads {args.threads}")
    print(f"status counts: { {s: statuses.count(s) for s in sorted(set(statuses))} }  5xx: {n5xx}")
    print(f"latency ms: p50 {np.percentile(latencies, 50):.0f}  p95 {np.percentile(latencies, 95):.0f}  "
          f"max {latencies.max():.0f}")
    print(f"throughput: {rate:.2f} req/s (burst wall {wall:.1f} s)")
    print(f"reference official SamPredictor.predict in-process: {ref_rate:.2f} calls/s; "
          f"server/reference ratio {rate / ref_rate:.2f}")
    print(f"server RSS MiB: after upload {rss_cold:.0f}, after a warm-up burst {rss_before:.0f}, after the measured "
          f"burst {rss_after:.0f}: change over the measured burst {100 * (rss_after / rss_before - 1):+.1f}%")
    print(hits[0] if hits else "no cache metric")
    if n5xx or abs(rss_after / rss_before - 1) > 0.10:
        raise SystemExit("FAILED: 5xx responses or RSS grew more than 10%")


if __name__ == "__main__":
    main()
