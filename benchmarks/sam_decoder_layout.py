"""Batched prompt decoding off the CPU: kernel count and memory, official vs imseg, one run.

On a GPU every small op is at least one kernel launch, so the number of ops a decode dispatches is what
a batch of prompts costs once the arithmetic is small. This script counts top-level aten ops (torch
profiler) for 64 box prompts on one image embedding, the same random ViT-B decoder weights on both sides
(the official model saves them, ours loads the file):

* the official ``MaskDecoder`` on the batch, and imseg's ``PromptBatchDecoder`` in its CPU layout (one
  prompt per pass, the upscaling head per band of rows) and in its device layout (64 prompts per pass,
  each product over all of them), on CPU tensors;
* the whole ``predict_torch`` (prompt encoding, decoding, postprocessing) of both predictors on the
  ``meta`` device (shapes only), where imseg takes the branches it takes on CUDA, for 2 and 64 boxes;
* each decoder's peak RSS growth on the batch, in its own spawned process (Linux: ``/proc/self/clear_refs``).

    .venv/bin/python benchmarks/sam_decoder_layout.py

With a GPU (``--device cuda``) it also times the two predictors' ``predict_torch`` on 64 boxes.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

PROMPTS = 64


def _official():
    """The official ViT-B with random weights (seed 0)."""
    from segment_anything import sam_model_registry as official_registry

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return official_registry["vit_b"]().eval()


def _ours(ckpt: str):
    from imseg.sam import sam_model_registry

    return sam_model_registry["vit_b"](checkpoint=ckpt).eval()


def _inputs(model, device="cpu"):
    g = torch.Generator().manual_seed(0)
    boxes = torch.sort(torch.rand(PROMPTS, 2, 2, generator=g) * 1024, dim=1).values.reshape(PROMPTS, 4)
    embedding = torch.randn(1, 256, 64, 64, generator=g)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes.to(device), masks=None)
    return embedding.to(device), sparse, dense, boxes.to(device)


def _decoders(official, ours, layout: str):
    """name -> a no-argument call decoding the 64 prompts."""
    from imseg.sam.batch_decoder import PromptBatchDecoder

    embedding, sparse, dense, _ = _inputs(official)
    pe = official.prompt_encoder.get_dense_pe()
    if layout == "official":
        return lambda: official.mask_decoder(embedding, pe, sparse, dense, True)
    decoder = PromptBatchDecoder(ours, embedding, chunk=1 if layout == "cpu" else PROMPTS)
    decoder.per_prompt = layout == "cpu"
    return lambda: decoder(sparse, True)


def _ops(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak(layout: str, ckpt: str, threads: int, queue) -> None:
    """Peak RSS growth of one decode: the high-water mark is reset after the models are built (Linux;
    None where ``/proc/self/clear_refs`` cannot be written)."""
    torch.set_num_threads(threads)
    official = _official()
    run = _decoders(official, None if layout == "official" else _ours(ckpt), layout)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        queue.put(None)
        return
    base = _status_kib("VmRSS")
    with torch.inference_mode():
        run()
    queue.put((_status_kib("VmHWM") - base) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from segment_anything import SamPredictor as OfficialPredictor

    from imseg.sam import SamPredictor

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "sam_vit_b_random.pth")
        official = _official()
        torch.save(official.state_dict(), ckpt)
        ours = _ours(ckpt)
        print(f"ViT-B decoder, {PROMPTS} box prompts, torch {torch.__version__}")
        rows = {}
        ctx = mp.get_context("spawn")
        for layout, name in (("official", "official MaskDecoder, one batch"),
                             ("cpu", "imseg, CPU layout (1 prompt per pass)"),
                             ("device", f"imseg, device layout ({PROMPTS} per pass)")):
            run = _decoders(official, ours, layout)
            run()
            t0 = time.perf_counter()
            run()
            seconds = time.perf_counter() - t0
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak, args=(layout, ckpt, args.threads, queue))
            proc.start()
            proc.join()  # the child puts one small value: joining first cannot deadlock
            peak = queue.get() if proc.exitcode == 0 else f"child exited with {proc.exitcode}"
            rows[layout] = _ops(run)
            memory = (f"{peak:7.0f} MiB" if isinstance(peak, float)
                      else "n/a (needs Linux)" if peak is None else f"n/a ({peak})")
            print(f"{name:42s} {rows[layout]:6d} aten ops | peak RSS growth {memory} | CPU {seconds:6.2f} s")
        print(f"ops, imseg device layout / official: {rows['device'] / rows['official']:.2f}x; "
              f"CPU layout / official: {rows['cpu'] / rows['official']:.0f}x")

        image = torch.zeros(1, 3, 1024, 1024, device="meta")
        preds = {"official": OfficialPredictor(copy.deepcopy(official).to("meta")),
                 "imseg": SamPredictor(copy.deepcopy(ours).to("meta"))}
        counts = {}
        for name, pred in preds.items():
            with torch.inference_mode():
                pred.set_torch_image(image, (600, 800))
            for n in (2, PROMPTS):
                boxes = torch.zeros(n, 4, device="meta")
                pred.predict_torch(None, None, boxes=boxes)  # warm (imseg builds its decoder once per image)
                counts[name, n] = _ops(lambda pred=pred, boxes=boxes: pred.predict_torch(None, None, boxes=boxes))
        for n in (2, PROMPTS):
            print(f"predict_torch on meta, {n:2d} boxes: official {counts['official', n]:5d} aten ops | imseg "
                  f"{counts['imseg', n]:5d} ({counts['imseg', n] / counts['official', n]:.2f}x)")

        if args.device == "cuda":
            official.to("cuda")
            ours.to("cuda")
            times = {}
            for name, pred in (("official", OfficialPredictor(official)), ("imseg", SamPredictor(ours))):
                pred.set_torch_image(torch.randn(1, 3, 1024, 1024, device="cuda"), (1024, 1024))
                boxes = _inputs(official, "cuda")[3]
                for _ in range(3):
                    pred.predict_torch(None, None, boxes=boxes)
                torch.cuda.synchronize()
                best = float("inf")
                for _ in range(10):
                    t0 = time.perf_counter()
                    pred.predict_torch(None, None, boxes=boxes)
                    torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t0)
                times[name] = best
            print(f"predict_torch, {PROMPTS} boxes, CUDA: official {times['official'] * 1e3:.1f} ms | imseg "
                  f"{times['imseg'] * 1e3:.1f} ms | speed-up {times['official'] / times['imseg']:.2f}x")


if __name__ == "__main__":
    main()
