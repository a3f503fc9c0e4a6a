"""An instance run to ONNX: ``imseg_export.json`` (family ``instance``) and the network's graph.

Mask R-CNN runs export ``model.onnx``, described here. Contour-aware U-Net runs (:mod:`imseg.instance.unet`)
export their pixel network as a semantic export in ``pixels/`` (see :func:`export_unet_instance_run`).

The graph is the whole detector for one image: ``image`` (3, H, W) float32 RGB in [0, 1], any H and W (the
model's own normalisation and resize are inside), to ``boxes`` (N, 4) XYXY pixels, ``labels`` (N,) int64
(1-based, 0 is background), ``scores`` (N,) and ``masks`` (N, 1, H, W) probabilities pasted into the image.
The box head's score threshold is 0 in the graph, so one export serves every ``score_threshold``; the ONNX
Runtime engine (:mod:`imseg.export.ort_instance`) applies it, as the torch engine does.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

OUTPUTS = ("boxes", "labels", "scores", "masks")


def _wrapper(model):
    import torch

    class SingleImage(torch.nn.Module):
        """torchvision's list-of-images / list-of-dicts interface as plain tensors for the exporter."""

        def __init__(self, detector) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, image):
            out = self.detector([image])[0]
            return tuple(out[k] for k in OUTPUTS)

    return SingleImage(model).eval()


def export_instance_run(run: str | os.PathLike, out: str | os.PathLike, *, format: str = "onnx", int8: bool = False,
                        calibration=None, opset: int = 17, simplify: bool = False) -> Path:
    """Export an instance run directory (weights/best.pt) to ``out``; returns the manifest path."""
    import copy

    import torch

    from ..export.onnx import _torch_onnx_export, check_onnx, check_opset, prepare_out_dir, set_metadata, write_manifest
    from .infer import _unet_info, load_instance_run

    if format != "onnx":
        raise ConfigError(f"instance runs export to ONNX only (--format onnx); got {format!r}.")
    info = _unet_info(Path(run))
    if info is not None:
        return export_unet_instance_run(run, out, info, int8=int8, calibration=calibration, opset=opset,
                                        simplify=simplify)
    if int8 or calibration is not None or simplify:
        raise ConfigError("--int8, --calibration and --simplify are not supported for instance (Mask R-CNN) runs; "
                          "export without them.")
    check_opset(opset)
    segmenter = load_instance_run(run, device="cpu")
    if not hasattr(segmenter, "model"):
        raise ConfigError(f"{run}: only Mask R-CNN instance runs export to ONNX; this is a {segmenter.name} run.")
    model = copy.deepcopy(segmenter.model).cpu().eval()
    model.roi_heads.score_thresh = 0.0
    outdir = prepare_out_dir(out)
    path = outdir / "model.onnx"
    example = torch.rand(3, 192, 256, generator=torch.Generator().manual_seed(0))
    dynamic = {"image": {1: "height", 2: "width"}, "masks": {0: "detections", 2: "height", 3: "width"},
               **{k: {0: "detections"} for k in ("boxes", "labels", "scores")}}
    _torch_onnx_export(_wrapper(model), (example,), path, input_names=["image"], output_names=list(OUTPUTS),
                       dynamic_axes=dynamic, opset=opset)
    transform = model.transform
    meta = {"imseg_model": "maskrcnn", "class_names": segmenter.class_names,
            "input": "image: (3, H, W) float32 RGB in [0, 1]",
            "output": "boxes (N, 4) XYXY, labels (N,) 1-based, scores (N,), masks (N, 1, H, W) probabilities"}
    set_metadata(path, meta)
    check_onnx(path)
    manifest = {"format": "onnx", "family": "instance", "model": "maskrcnn", "files": {"model": path.name},
                "opset": opset, "class_names": segmenter.class_names,
                # normalisation is inside the graph; recorded for reference
                "normalization": {"mean": [float(v) for v in transform.image_mean],
                                  "std": [float(v) for v in transform.image_std], "units": "0..1", "in_graph": True},
                "score_threshold": segmenter.score_threshold, "mask_threshold": segmenter.mask_threshold,
                "max_detections": segmenter.max_detections, "run": str(Path(run).resolve())}
    return write_manifest(outdir, manifest)


PIXELS = "pixels"


def export_unet_instance_run(run: str | os.PathLike, out: str | os.PathLike, info: dict, *, int8: bool = False,
                             calibration=None, opset: int = 17, simplify: bool = False) -> Path:
    """Export a contour-aware U-Net run: its network as a semantic export (any image size, the run's letterbox
    recorded) in ``out/pixels`` (int8 through the semantic quantizer), and ``out/imseg_export.json`` naming the
    object classes and the watershed's settings, so :mod:`imseg.export.ort_instance` repeats the torch
    engine's post-processing. Returns the top manifest path."""
    from ..export import _run_model, export_semantic_model
    from ..export.onnx import prepare_out_dir, write_manifest
    from ..export.sessions import read_manifest
    from .unet import ARCH

    model, names, mean, std, name, inference = _run_model(run)
    outdir = prepare_out_dir(out)
    export_semantic_model(model, outdir / PIXELS, class_names=names, mean=mean, std=std, name=name, int8=int8,
                          calibration=calibration, opset=opset, simplify=simplify, inference=inference)
    pixels = read_manifest(outdir / PIXELS)
    inside = lambda files: {role: f"{PIXELS}/{name}" for role, name in files.items()}  # noqa: E731
    manifest = {"format": "onnx", "family": "instance", "model": ARCH, "pixels": PIXELS,
                "files": inside(pixels["files"]), "opset": opset, "class_names": list(info["class_names"]),
                "pixel_classes": pixels["class_names"], "normalization": pixels["normalization"],
                "inference": pixels.get("inference"), "min_area": int(info.get("min_area", 8)),
                "normalize": info.get("normalize", "none"), "score_threshold": 0.5, "mask_threshold": 0.5,
                "run": str(Path(run).resolve())}
    if "quantization" in pixels:
        manifest.update(files_fp32=inside(pixels["files_fp32"]), quantization=pixels["quantization"])
    return write_manifest(outdir, manifest)
