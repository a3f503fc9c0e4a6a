"""Every CPU engine and precision against the official fp32 models, with their drift, in one run.

SAM (ViT-B: official ``segment_anything``; MobileSAM: official ``mobile_sam``; same random weights):
``set_image`` on a ``--size`` square image for the official fp32 predictor and for imseg on torch
fp32/bf16, ONNX Runtime fp32/int8 and OpenVINO fp32/bf16/int8 (best of ``--repeats``). Drift: the
masks of a 3x3 grid of point prompts (3 masks each) against the official fp32 masks: mean and minimum
mask IoU over all pixels, the minimum over pixels whose fp32 logit is beyond +-0.5 (random weights
leave many logits near zero), and the largest predicted-IoU score difference.

Semantic (a ``segmentation_models_pytorch`` U-Net, ResNet-34 encoder, random weights): one image of
``--semantic-size`` px through plain torch fp32 (the reference) and the same engines; drift is the
fraction of pixels whose class is unchanged.

Prints the CPU model and ISA flags first: figures only mean something with the CPU they ran on.

    .venv/bin/python benchmarks/cpu_engines.py                       # ViT-B, MobileSAM, U-Net at 512 px
    .venv/bin/python benchmarks/cpu_engines.py --models vit_t --size 128 --semantic-size 64 --repeats 1
    .venv/bin/python benchmarks/cpu_engines.py --cap-isa avx2   # an AVX2-only CPU, emulated (see CAPS)

``--cap-isa avx2`` re-runs the script with every library that honours an ISA cap held to AVX2 (:data:`CAPS`:
torch's own kernels, MKL, oneDNN in torch and in OpenVINO) and bf16 treated as not native. The CPU's cache,
memory and clock stay those of the machine, so this stands in for, and does not replace, a real AVX2-only CPU.
ONNX Runtime's kernels pick their instructions from the CPU itself and cannot be capped: its rows are left out.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

MARGIN = 0.5
#: environment that holds each library to an ISA (read when the library first runs, hence the re-run)
CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "DNNL_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2", "IMSEG_NATIVE_BF16": "0"}}
ENGINES = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocation and kernel selection are not the steady state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_image(size: int) -> np.ndarray:
    from skimage import data, transform

    img = data.astronaut()
    return (transform.resize(img, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)


def official_sam(variant: str, seed: int = 0):
    """The official model with random weights (every parameter drawn, so no layer is the identity)."""
    if variant == "vit_t":
        from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    torch.manual_seed(seed)
    model = sam_model_registry[variant]().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 and (p == p.flatten()[0]).all():  # norms/biases initialised constant
                p.add_(torch.randn_like(p) * 0.02)
    return model


def grid_masks(predictor, image: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Logit masks (3, H, W) and scores (3,) for a 3x3 grid of single points on the image set."""
    h, w = image.shape[:2]
    masks, scores = [], []
    for y in (np.arange(3) + 0.5) * h / 3:
        for x in (np.arange(3) + 0.5) * w / 3:
            m, s, _ = predictor.predict(np.array([[x, y]]), np.array([1]), return_logits=True)
            masks.append(np.asarray(m, np.float32))
            scores.append(np.asarray(s, np.float32))
    return masks, scores


def sam_drift(ref: tuple, got: tuple) -> str:
    from imseg.precision import logit_mask_iou

    plain = [logit_mask_iou(a, b) for ma, mb in zip(ref[0], got[0], strict=True) for a, b in zip(ma, mb, strict=True)]
    sure = [logit_mask_iou(a, b, MARGIN) for ma, mb in zip(ref[0], got[0], strict=True)
            for a, b in zip(ma, mb, strict=True)]
    score = max(float(np.abs(a - b).max()) for a, b in zip(ref[1], got[1], strict=True))
    return (f"IoU mean {np.mean(plain):.4f} min {np.min(plain):.4f} | confident min {np.min(sure):.4f} | "
            f"score diff {score:.4f}")


def sam_engines(variant: str, checkpoint: Path, export: Path, wanted: set[str], calibration):
    """(name, predictor) for every wanted imseg engine of the SAM ``variant``."""
    from imseg.export.openvino import OpenVinoSamPredictor
    from imseg.export.quantize import quantize_dynamic_int8, quantize_static_int8
    from imseg.export.runtime import OrtSamPredictor
    from imseg.sam import SamPredictor, sam_model_registry

    model = sam_model_registry[variant](checkpoint=checkpoint).eval()
    if "torch-fp32" in wanted:
        yield "torch-fp32", SamPredictor(model)
    if "torch-bf16" in wanted:
        yield "torch-bf16", SamPredictor(model, dtype="bf16")
    if "ort-fp32" in wanted:
        yield "ort-fp32", OrtSamPredictor(export, device="cpu")
    if "ort-int8" in wanted:
        target = export / "encoder.int8.onnx"
        if calibration is None:
            quantize_dynamic_int8(export / "encoder.onnx", target)
        else:
            from imseg.export.quantize import calibration_images

            fp32 = OrtSamPredictor(export, device="cpu")
            quantize_static_int8(export / "encoder.onnx", target, calibration_images(calibration, 16),
                                 lambda img: {"image": fp32.preprocess(img)})
        yield "ort-int8", OrtSamPredictor(export, device="cpu", files={"encoder": target.name,
                                                                      "decoder": "decoder.onnx"})
    for precision in ("fp32", "bf16", "int8"):
        if f"openvino-{precision}" in wanted:
            yield f"openvino-{precision}", OpenVinoSamPredictor(export, precision=precision, calibration=calibration)


def bench_sam(variant: str, args, tmp: Path) -> None:
    from imseg.export import export_sam_checkpoint
    from imseg.registry import get_spec

    name = {"vit_t": "mobile-sam"}.get(variant, f"sam-{variant.replace('_', '-')}")
    official = official_sam(variant)
    checkpoint = tmp / f"{variant}.pth"
    torch.save(official.state_dict(), checkpoint)
    image = test_image(args.size)
    if variant == "vit_t":
        from mobile_sam import SamPredictor as Official
    else:
        from segment_anything import SamPredictor as Official
    ref_pred = Official(official)
    with torch.inference_mode():
        base = best_of(lambda: ref_pred.set_image(image), args.repeats)
        ref = grid_masks(ref_pred, image)
    print(f"\n{name} set_image, {args.size}x{args.size}: official fp32 {base:.3f} s")
    wanted = set(args.engines)
    export = tmp / f"{variant}-onnx"
    if wanted & {e for e in ENGINES if not e.startswith("torch")}:
        export_sam_checkpoint(get_spec(name), checkpoint, export)
    for engine, predictor in sam_engines(variant, checkpoint, export, wanted, args.calibration):
        with torch.inference_mode():
            seconds = best_of(lambda p=predictor: p.set_image(image), args.repeats)
            drift = sam_drift(ref, grid_masks(predictor, image))
        print(f"  {engine:14s} {seconds:8.3f} s  {base / seconds:5.2f}x official | {drift}")
        del predictor


def semantic_engines(model, export: Path, wanted: set[str], calibration, size: int):
    from imseg.export.openvino import OpenVinoSemanticSegmenter
    from imseg.export.quantize import quantize_dynamic_int8
    from imseg.export.runtime import OrtSemanticSegmenter
    from imseg.precision import apply_to_semantic
    from imseg.semantic.infer import SemanticSegmenter

    def torch_segmenter(m):  # without resize, an image up to imgsz runs whole at its own size (no tiles)
        return SemanticSegmenter(m, ["a", "b", "c"], imgsz=size, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu",
                                 resize=False)

    if "torch-fp32" in wanted:
        yield "torch-fp32", torch_segmenter(model)
    if "torch-bf16" in wanted:
        yield "torch-bf16", apply_to_semantic(torch_segmenter(copy.deepcopy(model)), "bf16")
    if "ort-fp32" in wanted:
        yield "ort-fp32", OrtSemanticSegmenter(export, device="cpu", resize=False)
    if "ort-int8" in wanted:
        quantize_dynamic_int8(export / "model.onnx", export / "model.int8.onnx")
        yield "ort-int8", OrtSemanticSegmenter(export, device="cpu", files={"model": "model.int8.onnx"}, resize=False)
    for precision in ("fp32", "bf16", "int8"):
        if f"openvino-{precision}" in wanted:
            yield f"openvino-{precision}", OpenVinoSemanticSegmenter(export, precision=precision, resize=False,
                                                                     calibration=calibration)


def bench_semantic(args, tmp: Path) -> None:
    import segmentation_models_pytorch as smp

    from imseg.export import export_semantic_model

    torch.manual_seed(0)
    model = smp.Unet("resnet34", encoder_weights=None, classes=3).eval()
    image = test_image(args.semantic_size)
    x = ((torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)[None]
    with torch.inference_mode():
        base = best_of(lambda: model(x), args.repeats)
        ref = model(x)[0].argmax(0).numpy()
    print(f"\nsemantic U-Net (ResNet-34), {args.semantic_size}x{args.semantic_size}: plain torch fp32 {base:.3f} s")
    export = tmp / "unet-onnx"
    export_semantic_model(model, export, class_names=["a", "b", "c"], mean=(0.5,) * 3, std=(0.25,) * 3)
    for engine, seg in semantic_engines(model, export, set(args.engines), args.calibration, args.semantic_size):
        with torch.inference_mode():
            seconds = best_of(lambda s=seg: s.predict_probs(image), args.repeats)
            labels = seg.predict_probs(image).argmax(0)
        print(f"  {engine:14s} {seconds:8.3f} s  {base / seconds:5.2f}x torch | pixels unchanged "
              f"{(labels == ref).mean():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit_b,vit_t", help="SAM variants, comma-separated (vit_b, vit_t; "
                        "empty for none).")
    parser.add_argument("--size", type=int, default=512, help="SAM test image side, px.")
    parser.add_argument("--semantic-size", type=int, default=512, help="U-Net test image side, px (0: skip).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {ENGINES}.")
    parser.add_argument("--calibration", default=None, help="image folder for static int8 (default: dynamic "
                        "ONNX Runtime int8; OpenVINO int8 calibrates on built-in sample images).")
    parser.add_argument("--cap-isa", choices=sorted(CAPS), default=None,
                        help="emulate a CPU with at most this ISA (see the module docstring).")
    args = parser.parse_args()
    if args.cap_isa and any(os.environ.get(k) != v for k, v in CAPS[args.cap_isa].items()):
        os.environ.update(CAPS[args.cap_isa])  # the libraries read their caps once, at first use: start afresh
        os.execv(sys.executable, [sys.executable, *sys.argv])
    args.engines = [e for e in args.engines.split(",") if e]
    if args.cap_isa:
        dropped = [e for e in args.engines if e.startswith("ort-")]
        args.engines = [e for e in args.engines if not e.startswith("ort-")]
        print(f"ISA capped to {args.cap_isa} (emulated: {' '.join(f'{k}={v}' for k, v in CAPS[args.cap_isa].items())})"
              + (f"; {dropped} left out (ONNX Runtime cannot be capped)" if dropped else ""))
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        sys.exit(f"unknown engines {unknown}; choose from {ENGINES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from imseg.precision import describe_cpu, resolve_precision

    print(f"CPU: {describe_cpu()}")
    print(f"torch {torch.__version__} (kernels: {torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads; precision='auto' picks "
          f"{resolve_precision('auto', 'cpu')} here; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in [v for v in args.models.split(",") if v]:
            bench_sam(variant, args, Path(tmp))
        if args.semantic_size:
            bench_semantic(args, Path(tmp))


if __name__ == "__main__":
    main()
