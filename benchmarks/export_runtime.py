"""ONNX Runtime fp32 / int8 vs PyTorch eager on CPU, in one process run.

Times the SAM ViT-B image encoder and prompt decoder (random weights, official architecture) and a
U-Net (resnet18) at 512x512. Prints milliseconds per call and ratios (PyTorch time / ORT time; > 1
means ORT is faster). Usage::

    .venv/bin/python benchmarks/export_runtime.py [--variant vit_b] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="vit_b", help="SAM variant: vit_b (default) or vit_t")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from imseg.export.onnx import export_sam, export_semantic
    from imseg.export.quantize import quantize_dynamic_int8
    from imseg.export.runtime import make_session

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if args.variant == "vit_t":
                from mobile_sam import sam_model_registry
            else:
                from segment_anything import sam_model_registry
            sam = sam_model_registry[args.variant](checkpoint=None).eval()
        t0 = time.perf_counter()
        export_sam(sam, tmp / "sam", model_name=args.variant, variant=args.variant, check=False)
        print(f"export SAM {args.variant}: {time.perf_counter() - t0:.1f} s")
        for name in ("encoder", "decoder"):
            quantize_dynamic_int8(tmp / "sam" / f"{name}.onnx", tmp / "sam" / f"{name}.int8.onnx")

        def session(path):
            return make_session(path, device="cpu", threads=args.threads)

        x = torch.randn(1, 3, 1024, 1024)
        with torch.no_grad():
            emb = sam.image_encoder(x)
        enc32, enc8 = session(tmp / "sam" / "encoder.onnx"), session(tmp / "sam" / "encoder.int8.onnx")
        with torch.no_grad():
            t_torch = timed(lambda: sam.image_encoder(x), args.repeats)
        t32 = timed(lambda: enc32.run(None, {"image": x.numpy()}), args.repeats)
        t8 = timed(lambda: enc8.run(None, {"image": x.numpy()}), args.repeats)
        rows.append((f"SAM {args.variant} encoder 1024x1024", t_torch, t32, t8))

        feeds = {
            "image_embeddings": emb.numpy(), "point_coords": np.array([[[500.0, 375.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, -1.0]], np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([768.0, 1024.0], np.float32),
        }
        coords, labels = torch.from_numpy(feeds["point_coords"][:, :1]), torch.ones(1, 1)

        def torch_decoder():
            with torch.no_grad():
                sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
                low, _ = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=True)
                sam.postprocess_masks(low, (768, 1024), (768, 1024))

        dec32, dec8 = session(tmp / "sam" / "decoder.onnx"), session(tmp / "sam" / "decoder.int8.onnx")
        reps = max(10, args.repeats)
        rows.append(("SAM decoder (1 point, 768x1024 out)", timed(torch_decoder, reps),
                     timed(lambda: dec32.run(None, feeds), reps), timed(lambda: dec8.run(None, feeds), reps)))

        import segmentation_models_pytorch as smp

        unet = smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
        export_semantic(unet, tmp / "unet", class_names=["bg", "fg"], mean=(0.5,) * 3, std=(0.25,) * 3, check=False)
        quantize_dynamic_int8(tmp / "unet" / "model.onnx", tmp / "unet" / "model.int8.onnx")
        u32, u8 = session(tmp / "unet" / "model.onnx"), session(tmp / "unet" / "model.int8.onnx")
        xu = torch.randn(1, 3, 512, 512)
        with torch.no_grad():
            t_torch = timed(lambda: unet(xu), args.repeats)
        rows.append(("U-Net resnet18 512x512", t_torch, timed(lambda: u32.run(None, {"image": xu.numpy()}), args.repeats),
                     timed(lambda: u8.run(None, {"image": xu.numpy()}), args.repeats)))

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}, median of {args.repeats}+")
    print(f"{'model':40s} {'torch ms':>10s} {'ort fp32':>10s} {'ort int8':>10s} {'fp32 x':>8s} {'int8 x':>8s}")
    for name, tt, t32, t8 in rows:
        print(f"{name:40s} {tt:10.1f} {t32:10.1f} {t8:10.1f} {tt / t32:8.2f} {tt / t8:8.2f}")


if __name__ == "__main__":
    main()
