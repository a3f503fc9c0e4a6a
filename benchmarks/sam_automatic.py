"""Segment everything: official ``segment_anything`` generator vs ``imseg.sam.automatic``, one run.

Both get the same random ViT-B weights (the official model saves them, ours loads the file) and the
same 512x512 image (scikit-image astronaut). Each generator runs in its own (spawned) process so its
peak RSS can be reported. The image encoder is also timed alone (once per implementation) so the
decode + post-process speed-up can be reported apart from the encoder, which both pay once.

    .venv/bin/python benchmarks/sam_automatic.py                      # 32x32 grid (official ~minutes)
    .venv/bin/python benchmarks/sam_automatic.py --points-per-side 8  # quick run

Random weights predict IoUs far below the official default threshold (0.88), so with defaults no
candidate survives the first filter - which flatters us (we skip upscaling the rejected ones). Use
``--survive`` for thresholds under which candidates survive to full-resolution post-processing.

``--precisions fp32,bf16`` runs imseg once per encoder precision (bf16: the image encoder in bfloat16, as
``precision="bf16"``/``"auto"`` on a CPU with native bfloat16; the decoder and post-processing stay float32) and
prints each one's ratio to the official fp32 and how many of its masks match the fp32 run's (IoU >= 0.9).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _image(size: int) -> np.ndarray:
    from skimage import data, transform

    img = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    return (img * 255).round().astype(np.uint8)


def _run(which: str, ckpt: str, args, queue, precision: str = "fp32") -> None:
    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    image = _image(args.size)
    kwargs = dict(points_per_side=args.points_per_side)
    if args.survive:
        kwargs.update(pred_iou_thresh=0.0, stability_score_thresh=0.5, stability_score_offset=0.05)
    if which == "official":
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

        model = sam_model_registry[args.variant](checkpoint=ckpt).eval()
        predictor = SamPredictor(model)
        t0 = time.perf_counter()
        with torch.no_grad():
            predictor.set_image(image)
        t_enc = time.perf_counter() - t0
        generator = SamAutomaticMaskGenerator(model, **kwargs)
    else:
        from imseg.sam import sam_model_registry
        from imseg.sam.automatic import SamAutomaticMaskGenerator

        model = sam_model_registry[args.variant](checkpoint=ckpt).eval()
        if precision == "bf16":
            from imseg.precision import to_bf16

            to_bf16(model.image_encoder)
        generator = SamAutomaticMaskGenerator(model, **kwargs)
        import torchvision.ops  # noqa: F401  (NMS: the official generator's module imports it before its clock)

        t0 = time.perf_counter()
        with torch.inference_mode():
            generator._embed(image)
        t_enc = time.perf_counter() - t0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    records = generator.generate(image)
    t_gen = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    boxes = [r["bbox"] for r in records]
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
    np.save(Path(args.tmp) / f"masks_{which}_{precision}.npy", np.packbits(masks, axis=-1))
    queue.put((which if which == "official" else f"imseg-{precision}", t_enc, t_gen, len(boxes), peak / 1024,
               base / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_t", "vit_l", "vit_h"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--size", type=int, default=512, help="square image side (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--survive", action="store_true", help="thresholds under which random-weight masks survive")
    parser.add_argument("--only", choices=["official", "imseg"], help="run one side only")
    parser.add_argument("--precisions", default="fp32", help="imseg encoder precisions to run: fp32, bf16 or both")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_official_sam

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / f"sam_{args.variant}.pth")
        torch.save(build_official_sam(args.variant).state_dict(), ckpt)
        ctx = mp.get_context("spawn")  # fork after torch ran can deadlock OpenMP
        args.tmp = tmp
        runs = [("official", "fp32")] + [("imseg", p.strip()) for p in args.precisions.split(",") if p.strip()]
        results = {}
        for which, precision in runs:
            if args.only and which != args.only:
                continue
            queue = ctx.Queue()
            proc = ctx.Process(target=_run, args=(which, ckpt, args, queue, precision))
            proc.start()
            got = queue.get()
            results[got[0]] = got
            proc.join()
        agreement = {name: _agreement(Path(tmp), name) for name in results if name != "imseg-fp32"}
    print(f"{args.variant}, {args.size}x{args.size}, {args.points_per_side}x{args.points_per_side} points, "
          f"{args.threads} threads, thresholds: {'survive' if args.survive else 'official defaults'}")
    for which, t_enc, t_gen, n, peak, base in results.values():
        match = agreement.get(which)
        print(f"  {which:10s} encoder {t_enc:7.1f} s | generate (end to end) {t_gen:7.1f} s | "
              f"decode+post ~{t_gen - t_enc:7.1f} s | masks {n:4d} | peak RSS {peak:7.0f} MiB (start {base:.0f})"
              + (f" | {match}" if match else ""))
    if "official" in results:
        o = results["official"]
        for name, m in results.items():
            if name != "official":
                print(f"  {name}: speed-up end to end {o[2] / m[2]:.2f}x ; decode+post-process "
                      f"{(o[2] - o[1]) / max(m[2] - m[1], 1e-9):.2f}x")


def _agreement(folder: Path, name: str) -> str | None:
    """How many of ``name``'s masks have a mask of imseg fp32 at IoU >= 0.9 (None without an fp32 run)."""
    ref_path = folder / "masks_imseg_fp32.npy"
    which, _, precision = name.partition("-")
    path = folder / f"masks_{which}_{precision or 'fp32'}.npy"
    if not ref_path.exists() or not path.exists():
        return None
    ref, got = np.load(ref_path), np.load(path)
    if not len(got) or not len(ref):
        return f"{len(got)} masks vs {len(ref)} in imseg fp32"
    ref = np.unpackbits(ref, axis=-1).reshape(len(ref), -1).astype(bool)
    got = np.unpackbits(got, axis=-1).reshape(len(got), -1).astype(bool)
    inter = got.astype(np.float32) @ ref.T.astype(np.float32)
    union = got.sum(1)[:, None] + ref.sum(1)[None, :] - inter
    best = (inter / np.maximum(union, 1)).max(1)
    return f"{int((best >= 0.9).sum())} of {len(got)} masks match imseg fp32 (IoU >= 0.9)"


if __name__ == "__main__":
    main()
