"""Official ``sam2`` vs imseg SAM 2.1 video tracking on CPU, same random weights, in one run.

For each variant (tiny and base+ by default) a random-weight model is built with the official package and saved
as the official checkpoints are (``{"model": state_dict}``); then each engine runs in its own subprocess, one
after the other, so their peak memory is their own: load the predictor, ``init_state`` on the first ``--frames``
frames of the bedroom video, a point on frame 0, ``propagate_in_video`` over all of them. Reported per engine:
seconds per tracked frame (median over the frames after the prompted one), the image encoder alone (best of
``--repeats``), peak RSS (``resource.getrusage``) and the Python heap peak while tracking (``tracemalloc``:
numpy and Python objects, not torch tensors); then the ratios
official / imseg (above 1: imseg is faster or smaller). The CPU model and its ISA flags are printed first.

The official predictor stores memories in bfloat16 and relies on CUDA autocast; on a CPU its memory attention
inputs are upcast to float32 here, and its hole filling (a CUDA extension) uses scikit-image's connected
components, so both engines do the same work.

Engines: ``official``, ``imseg`` (exact float32) and ``imseg-bf16`` (``precision="bf16"``: image encoder, and on a
CPU with AMX the memory attention, in bfloat16, which is what ``precision="auto"`` picks on a CPU with native
bfloat16). The masks of
object 1 on every frame are compared between engines (mean and minimum IoU).

    .venv/bin/python benchmarks/sam2_video.py --frames 3 --variants t           # smoke check
    .venv/bin/python benchmarks/sam2_video.py --frames 200 --variants t --engines official,imseg-bf16
    .venv/bin/python benchmarks/sam2_video.py --device cuda                       # on a GPU

``--device cuda`` runs every engine on the GPU (the same float32 memory attention and connected components for
both, so they still do the same work); the encoder and frame times then wait for the GPU to finish, and the GPU's
peak allocated memory is reported beside the process's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _data import data_dir  # noqa: E402

CONFIGS = {"t": "configs/sam2.1/sam2.1_hiera_t.yaml", "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
           "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml", "l": "configs/sam2.1/sam2.1_hiera_l.yaml"}
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``ISA_FLAGS`` it reports."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    name = fields.get("model name") or fields.get("CPU part") or platform.machine()
    return name, [f for f in ISA_FLAGS if f in flags]


# ============================================================================ worker (one engine, one process)
def patch_official_for_cpu() -> None:
    """Float32 memory attention inputs (the stored memories are bfloat16) and CPU connected components."""
    import numpy as np
    import sam2.modeling.memory_attention as official_attention
    import sam2.utils.misc as official_misc
    import torch

    forward = official_attention.MemoryAttention.forward

    def upcast(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return forward(self, curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens)

    def connected_components(mask):
        from skimage.measure import label

        m = mask.to(torch.uint8).cpu().numpy()
        labels, counts = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
        for i in range(m.shape[0]):
            lab = label(m[i, 0], connectivity=2)
            areas = np.bincount(lab.ravel())
            areas[0] = 0
            labels[i, 0], counts[i, 0] = lab, areas[lab]
        return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)

    official_attention.MemoryAttention.forward = upcast
    official_misc.get_connected_components = connected_components


ENGINES = ("official", "imseg", "imseg-bf16")


def build_predictor(engine: str, variant: str, checkpoint: str, device: str = "cpu"):
    """``imseg`` is exact float32; ``imseg-bf16`` runs the image encoder (and, with AMX, the memory attention) in
    bfloat16."""
    options = {}
    if engine == "official":
        patch_official_for_cpu()
        from sam2.build_sam import build_sam2_video_predictor
    else:
        from imseg.sam2 import build_sam2_video_predictor

        options["precision"] = "bf16" if engine == "imseg-bf16" else "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sam2_video_predictor(CONFIGS[variant], checkpoint, device=device, **options)


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so a time covers it (nothing on a CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_encoder(predictor, repeats: int, device: str = "cpu") -> float:
    import torch

    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)).to(device)
    runs = []
    with torch.inference_mode():
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            predictor.forward_image(x)
            synchronize(device)
            runs.append(time.perf_counter() - start)
    return min(runs)


def worker(args: argparse.Namespace) -> None:
    import resource
    import tracemalloc

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    tracemalloc.start()
    predictor = build_predictor(args.worker, args.variant, args.checkpoint, args.device)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.reset_peak()  # the heap peak of tracking, not of reading the checkpoint
    encoder = time_encoder(predictor, args.repeats, args.device)
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(args.device)
    with torch.inference_mode():
        start = time.perf_counter()
        state = predictor.init_state(str(args.video))
        init_seconds = time.perf_counter() - start
        height, width = state["video_height"], state["video_width"]
        start = time.perf_counter()
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                        points=np.array([[width * 0.5, height * 0.5]], np.float32),
                                        labels=np.array([1], np.int32))
        prompt_seconds = time.perf_counter() - start
        times, packed, last = [], [], time.perf_counter()
        for _frame_idx, _obj_ids, masks in predictor.propagate_in_video(state):
            packed.append(np.packbits((masks[0, 0] > 0).cpu().numpy()))  # ~65 kB a frame, the same for every engine
            now = time.perf_counter()
            times.append(now - last)
            last = now
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    heap_peak = tracemalloc.get_traced_memory()[1]
    gpu_peak = torch.cuda.max_memory_allocated(args.device) / 2**20 if on_gpu else 0.0
    tracked = times[1:] or times  # the first yield is the prompted frame, already computed
    if args.masks_out:
        np.save(args.masks_out, np.stack(packed))
    print(json.dumps({"engine": args.worker, "frames": len(times), "sec_per_frame": float(np.median(tracked)),
                      "sec_per_frame_mean": float(np.mean(tracked)), "encoder_sec": encoder,
                      "init_state_sec": init_seconds, "prompt_sec": prompt_seconds,
                      "peak_rss_mib": peak_rss / 1024, "rss_after_load_mib": loaded_rss / 1024,
                      "python_heap_peak_mib": heap_peak / 2**20, "gpu_peak_mib": gpu_peak}))


# ============================================================================ driver
def make_checkpoint(variant: str, folder: Path) -> Path:
    """Official random weights (every parameter perturbed, so no output is trivially constant), saved as the
    official files are."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2(CONFIGS[variant], None, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = folder / f"sam2.1_hiera_{variant}_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def frame_folder(source: Path, frames: int, folder: Path) -> Path:
    """A folder of links to the first ``frames`` frames (the official predictor loads every frame it finds)."""
    names = sorted(p.name for p in source.glob("*.jpg"))[:frames]
    if len(names) < frames:
        raise SystemExit(f"{source} holds {len(names)} JPEG frames; --frames {frames} needs that many.")
    out = folder / f"frames{frames}"
    out.mkdir()
    for name in names:
        (out / name).symlink_to(source / name)
    return out


def run_engine(engine: str, variant: str, checkpoint: Path, video: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--variant", variant, "--checkpoint", str(checkpoint),
           "--video", str(video), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--masks-out", str(checkpoint.parent / f"masks_{variant}_{engine}.npy"), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{engine} ({variant}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


ROWS = (("sec_per_frame", "s / tracked frame (median)"), ("sec_per_frame_mean", "s / frame (mean)"),
        ("encoder_sec", "image encoder, s"), ("peak_rss_mib", "peak RSS, MiB"),
        ("rss_after_load_mib", "RSS after load, MiB"), ("python_heap_peak_mib", "Python heap peak, MiB"),
        ("init_state_sec", "init_state, s"), ("gpu_peak_mib", "GPU peak allocated, MiB"))


def mask_agreement(a: Path, b: Path) -> tuple[float, float]:
    """Mean and minimum per-frame IoU of two engines' masks (object 1; frames where both are empty count 1)."""
    import numpy as np

    x, y = np.unpackbits(np.load(a), axis=1).astype(bool), np.unpackbits(np.load(b), axis=1).astype(bool)
    union = (x | y).sum(1)
    iou = np.where(union == 0, 1.0, (x & y).sum(1) / np.maximum(union, 1))
    return float(iou.mean()), float(iou.min())


def report(variant: str, results: dict[str, dict], folder: Path) -> None:
    """Each engine's figures and, for every imseg engine, the ratio official / imseg and the masks' agreement."""
    engines = list(results)
    first = results[engines[-1]]
    print(f"\nSAM 2.1 hiera-{variant}, {first['frames']} frames")
    ours = [e for e in engines if e != "official"]
    header = "".join(f"{e:>12s}" for e in engines)
    ratios = "".join(f"{'/ ' + e:>14s}" for e in ours) if "official" in results else ""
    print(f"{'':28s}{header}{ratios}")
    for key, label in ROWS:
        if key == "gpu_peak_mib" and not first.get(key):
            continue
        values = "".join(f"{results[e][key]:12.3f}" for e in engines)
        line = f"{label:28s}{values}"
        if "official" in results:
            line += "".join(f"{results['official'][key] / results[e][key]:14.2f}" if results[e][key] else f"{'-':>14s}"
                            for e in ours)
        print(line)
    masks = {e: folder / f"masks_{variant}_{e}.npy" for e in engines}
    for a, b in (("official", "imseg"), ("imseg", "imseg-bf16"), ("official", "imseg-bf16")):
        if a in results and b in results:
            mean, low = mask_agreement(masks[a], masks[b])
            print(f"mask IoU {a} vs {b}: mean {mean:.4f}, min {low:.4f} over {first['frames']} frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="frames of the bedroom video to track")
    parser.add_argument("--variants", nargs="+", default=["t", "b+"], choices=sorted(CONFIGS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="image encoder runs (the best is kept)")
    parser.add_argument("--video", type=Path, default=None, help="JPEG frame folder (default: video-bedroom)")
    parser.add_argument("--engines", default="official,imseg,imseg-bf16",
                        help=f"comma-separated, from {', '.join(ENGINES)} (official first: the ratios are to it)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where every engine runs")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--masks-out", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    import torch

    name, flags = cpu_description()
    print(f"CPU: {name}; {os.cpu_count()} logical CPUs; ISA: {' '.join(flags) or 'unknown'}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch sees no CUDA GPU here; run with --device cpu.")
        print(f"GPU: {torch.cuda.get_device_name(args.device)}")
    elif args.device != "cpu":
        raise SystemExit(f"--device {args.device!r}: give cpu, cuda or cuda:N.")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise SystemExit(f"--engines: unknown {unknown or 'empty list'}; choose from {', '.join(ENGINES)}.")
    source = args.video or data_dir() / "video-bedroom"
    with tempfile.TemporaryDirectory() as tmp:
        video = frame_folder(source, args.frames, Path(tmp))
        for variant in args.variants:
            checkpoint = make_checkpoint(variant, Path(tmp))
            results = {engine: run_engine(engine, variant, checkpoint, video, args) for engine in engines}
            report(variant, results, Path(tmp))
            print(json.dumps({"variant": variant, **results}))


if __name__ == "__main__":
    main()
