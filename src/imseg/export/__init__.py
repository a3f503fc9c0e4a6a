"""Export (ONNX, TorchScript, int8) and the ONNX Runtime backend.

``imseg.export.onnx``: SAM encoder/decoder and semantic models to ONNX; ``imseg.export.onnx_sam2``: SAM 2.1
encoder, prompt decoder and memory attention to ONNX; ``imseg.export.torchscript``:
semantic models to TorchScript; ``imseg.export.quantize``: int8 through onnxruntime.quantization;
``imseg.export.runtime``: ``load_exported`` / ``load_registry_model`` (ONNX Runtime segmenters).
Nothing heavy is imported here.
"""

from __future__ import annotations

__all__ = ["export_model", "load_exported"]


def __getattr__(name: str):
    if name == "load_exported":
        from .runtime import load_exported

        return load_exported
    raise AttributeError(name)


# ============================================================================ high-level export
def build_sam(variant: str, checkpoint=None):
    """Our SAM model (``imseg.sam.sam_model_registry[variant]``, official module layout) in eval mode,
    with the official-layout ``checkpoint`` loaded strictly (``weights_only=True``; errors are
    :class:`~imseg.errors.CheckpointError` naming the file and the fix)."""
    from ..errors import CheckpointError, DependencyError

    try:
        from ..sam import sam_model_registry
    except ImportError as exc:
        raise DependencyError(f"exporting SAM needs imseg.sam (torch), which is not importable here ({exc}).") from exc
    if variant not in sam_model_registry:
        raise CheckpointError(f"unknown SAM variant {variant!r}; expected one of {sorted(sam_model_registry)}.")
    return sam_model_registry[variant](checkpoint=checkpoint).eval()


def export_sam2_checkpoint(spec, checkpoint, out, *, memory_attention: bool = False, opset: int = 17,
                           simplify_graph: bool = False):
    """Export registry SAM 2.1 model ``spec`` with its official ``checkpoint`` to ``out``; returns the manifest."""
    from ..errors import DependencyError

    try:
        from ..sam2.checkpoint import build_sam2_model
    except ImportError as exc:
        raise DependencyError(f"exporting SAM 2.1 needs imseg.sam2 (torch), which is not importable here ({exc}).") from exc
    from .onnx_sam2 import export_sam2

    variant = spec.options["variant"]
    model = build_sam2_model(variant, checkpoint)
    return export_sam2(model, out, model_name=spec.name, variant=variant, memory_attention=memory_attention,
                       opset=opset, simplify_graph=simplify_graph)


def export_sam_checkpoint(spec, checkpoint, out, *, int8: bool = False, calibration=None, **options):
    """Export registry SAM model ``spec`` with ``checkpoint`` to ``out``; returns the manifest path."""
    if spec.family == "sam2":
        if int8 or calibration is not None or options.pop("raw_input", False) or options.pop("single_mask", False):
            from ..errors import ConfigError

            raise ConfigError(f"{spec.name}: --int8, --calibration, --raw-input and --single-mask apply to SAM 1 "
                              f"exports; export SAM 2.1 without them.")
        return export_sam2_checkpoint(spec, checkpoint, out, **options)
    options.pop("memory_attention", None)
    from .onnx import export_sam

    variant = spec.options["variant"]
    model = build_sam(variant, checkpoint)  # our SAM modules trace with dynamic prompt batches as they are
    manifest = export_sam(model, out, model_name=spec.name, variant=variant, **options)
    if int8 or calibration is not None:
        from .quantize import quantize_sam_export

        quantize_sam_export(manifest.parent, calibration=calibration)
    return manifest


def export_model(
    model: str | None = None,
    *,
    out,
    checkpoint=None,
    run=None,
    format: str = "onnx",
    int8: bool = False,
    calibration=None,
    raw_input: bool = False,
    single_mask: bool = False,
    opset: int = 17,
    simplify: bool = False,
    memory_attention: bool = False,
):
    """``imseg export`` in Python: a registry SAM or SAM 2.1 model (``model`` + ``checkpoint``) or a training
    run (``run``) to ``out`` as ONNX (or TorchScript for runs). Returns the manifest path.

    ``memory_attention`` (SAM 2.1 only) also exports the video memory attention (real-valued RoPE)."""
    from pathlib import Path

    from ..errors import ConfigError, ExportError
    from ..registry import get_spec
    from .onnx import check_opset, check_out_dir

    if format not in ("onnx", "torchscript"):
        raise ConfigError(f"--format must be 'onnx' or 'torchscript', got {format!r}.")
    if (model is None) == (run is None):
        raise ConfigError("give exactly one of --model NAME (with --checkpoint) or --run RUN_DIR.")
    if format == "onnx":
        check_opset(opset)
    check_out_dir(out)  # nothing is created until the model and checkpoint have been checked
    if run is not None:
        from ..finetune.run import export_finetune_run, is_finetune_run

        if is_finetune_run(run):  # a fine-tuned SAM: encoder.onnx + decoder.onnx at the run's input size
            return export_finetune_run(run, out, int8=int8, calibration=calibration, raw_input=raw_input,
                                       single_mask=single_mask, opset=opset, simplify_graph=simplify)
        if raw_input or single_mask:
            raise ConfigError("--raw-input and --single-mask apply to SAM exports (--model), not to training runs.")
        return export_run(run, out, format=format, int8=int8, calibration=calibration, opset=opset, simplify=simplify)
    spec = get_spec(model)
    if memory_attention and spec.family != "sam2":
        raise ConfigError(f"--memory-attention applies to SAM 2.1 models (sam2.1-hiera-*), not {spec.name}.")
    if spec.family not in ("sam", "sam2"):
        raise ExportError(f"model {spec.name!r} ({spec.family}) has nothing to export; export SAM models or training runs.")
    if format != "onnx":
        raise ConfigError("SAM and SAM 2.1 models export to ONNX only (--format onnx).")
    if checkpoint is None:
        from ..registry import find_weights

        checkpoint = find_weights(spec.name)
        if checkpoint is None:
            raise ConfigError(
                f"no checkpoint for {spec.name}: pass --checkpoint PATH or run `imseg weights download {spec.name}`."
            )
    if not Path(checkpoint).is_file():
        from ..errors import CheckpointError

        raise CheckpointError(f"checkpoint {checkpoint} not found; pass the path of the .pth/.pt file.")
    return export_sam_checkpoint(spec, checkpoint, out, int8=int8, calibration=calibration, raw_input=raw_input,
                                 single_mask=single_mask, opset=opset, simplify_graph=simplify,
                                 memory_attention=memory_attention)


def _run_model(run, checkpoint=None):
    """(model, class_names, mean, std, name) of a training run directory via imseg.semantic.infer (its best.pt or
    last.pt, or the weights file ``checkpoint``)."""
    from pathlib import Path

    from ..errors import CheckpointError, DependencyError, ExportError

    run = Path(run)
    if not run.is_dir():
        raise ExportError(f"run directory {run} does not exist; pass a training run such as runs/train/exp.")
    weights = [run / "weights" / "best.pt", run / "weights" / "last.pt"]
    if checkpoint is None and not any(w.is_file() for w in weights):
        raise CheckpointError(
            f"run directory {run} has no weights (looked for weights/best.pt and weights/last.pt); "
            f"train it first (`imseg train ...`) or pass the run that holds them."
        )
    try:
        from ..semantic.infer import load_run
    except ImportError as exc:
        raise DependencyError(f"exporting a run needs imseg.semantic.infer, which is not importable here ({exc}).") from exc
    segmenter = load_run(run, checkpoint=checkpoint, device="cpu")
    model = getattr(segmenter, "model", None)
    names = getattr(segmenter, "class_names", None)
    mean = getattr(segmenter, "mean", None)
    std = getattr(segmenter, "std", None)
    if model is None or names is None or mean is None or std is None:
        raise ExportError(f"{run}: the loaded segmenter lacks model/class_names/mean/std; cannot export it.")
    import numpy as np

    mean = tuple(float(v) for v in np.asarray(mean, dtype=float).reshape(-1))
    std = tuple(float(v) for v in np.asarray(std, dtype=float).reshape(-1))
    return model.cpu().eval(), list(names), mean, std, run.name, _run_inference(segmenter)


def _run_inference(segmenter) -> dict:
    """The manifest's ``inference``: how the run's segmenter sees an image (letterbox size or native), and the
    test-time augmentation the run stored (flips, scales), so the exported engines predict as the run does."""
    inference = {"imgsz": int(segmenter.imgsz), "resize": bool(segmenter.resize)}
    if segmenter.tta or tuple(segmenter.scales) != (1.0,):
        inference.update(tta=segmenter.tta, tta_flips=segmenter.tta_flips, scales=[float(s) for s in segmenter.scales])
    if segmenter.input_multiple != 32 or "scales" in inference:  # the letterbox side of a scale is a multiple of it
        inference["input_multiple"] = int(segmenter.input_multiple)
    return inference


def export_semantic_model(model, out, *, class_names, mean, std, format: str = "onnx", name: str = "semantic",
                          int8: bool = False, calibration=None, opset: int = 17, simplify: bool = False,
                          inference: dict | None = None):
    """Export a semantic torch model ((N,3,H,W) normalised -> (N,C,H,W) logits); returns the manifest path.

    ``inference`` (``{"imgsz": int, "resize": bool}``, plus the run's stored ``tta``, ``tta_flips``, ``scales`` and
    the model's ``input_multiple``) goes into the manifest so the ONNX Runtime segmenter sees images as the run's
    own segmenter does."""
    extra = {"inference": dict(inference)} if inference else None
    from ..errors import ConfigError

    if format == "torchscript":
        if int8 or calibration is not None:
            raise ConfigError("--int8/--calibration apply to ONNX exports only; use --format onnx.")
        from .torchscript import export_semantic_torchscript

        return export_semantic_torchscript(model, out, class_names=class_names, mean=mean, std=std, model_name=name,
                                           extra=extra)
    from .onnx import export_semantic

    manifest = export_semantic(model, out, class_names=class_names, mean=mean, std=std, model_name=name, opset=opset,
                               simplify_graph=simplify, extra=extra)
    if int8 or calibration is not None:
        from .quantize import quantize_semantic_export

        quantize_semantic_export(manifest.parent, calibration=calibration)
    return manifest


def export_run(run, out, *, format: str = "onnx", int8: bool = False, calibration=None, opset: int = 17,
               simplify: bool = False, checkpoint=None):
    """Export a training run directory (``runs/train/exp``) to ``out``; returns the manifest path. ``checkpoint``:
    a semantic run's weights file to export instead of its best.pt / last.pt."""
    from ..instance.infer import is_instance_run

    if is_instance_run(run):
        from ..instance.export import export_instance_run

        return export_instance_run(run, out, format=format, int8=int8, calibration=calibration, opset=opset,
                                   simplify=simplify)
    model, names, mean, std, name, inference = _run_model(run, checkpoint)
    return export_semantic_model(model, out, class_names=names, mean=mean, std=std, format=format, name=name,
                                 int8=int8, calibration=calibration, opset=opset, simplify=simplify,
                                 inference=inference)
