"""int8 quantization of exported ONNX models through ``onnxruntime.quantization``.

Dynamic: weights stored as int8, activations quantized on the fly (no data needed). Static:
activation ranges calibrated on a folder of images (QDQ format, per-channel int8 weights).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError, ExportError, require


def _quantization():
    return require("onnxruntime.quantization", "export", "int8 quantization")


@contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """Drop the root-logger WARNINGs ``onnxruntime.quantization`` emits through ``logging.warning``
    (pre-processing advice, one multi-line tensor dump per unquantizable tensor) while it runs; a
    NullHandler stops ``logging.warning`` from installing a stderr handler when there is none."""
    root = logging.getLogger()
    null = logging.NullHandler() if not root.handlers else None

    def keep(record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR

    if null is not None:
        root.addHandler(null)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if null is not None:
            root.removeHandler(null)


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8 quantization of ``src`` into ``dst``; returns ``dst``."""
    q = _quantization()
    dst = Path(dst)
    try:
        # uint8 weights: ConvInteger/MatMulInteger have CPU kernels for it on every onnxruntime build
        with _quiet_root_warnings():
            q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QUInt8, per_channel=False)
    except Exception as exc:
        raise ExportError(f"dynamic int8 quantization of {src} failed: {type(exc).__name__}: {exc}") from exc
    store_large_floats_as_fp16(dst)
    return dst


def store_large_floats_as_fp16(path: str | os.PathLike, min_bytes: int = 1 << 16) -> int:
    """Store the float32 tensors that int8 quantization leaves (e.g. precomputed attention-bias
    tables) as float16 followed by a Cast back to float32: the graph computes in float32 as before,
    the file shrinks. Returns the number of tensors converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    converted = 0
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.nbytes < min_bytes or not np.isfinite(array).all() or np.abs(array).max() > 6e4:
            continue
        half_name = f"{init.name}__fp16"
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), half_name))
        graph.node.insert(0, helper.make_node("Cast", [half_name], [init.name], to=onnx.TensorProto.FLOAT,
                                              name=f"{init.name}__cast"))
        graph.initializer.remove(init)
        converted += 1
    for node in graph.node:
        if node.op_type != "Constant" or not node.attribute or node.attribute[0].name != "value":
            continue
        tensor = node.attribute[0].t
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(tensor)
        if array.nbytes < min_bytes or not np.isfinite(array).all() or np.abs(array).max() > 6e4:
            continue
        out_name = node.output[0]
        half_name = f"{out_name}__fp16"
        node.output[0] = half_name
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(array.astype(np.float16), tensor.name))
        graph.node.insert(list(graph.node).index(node) + 1,
                          helper.make_node("Cast", [half_name], [out_name], to=onnx.TensorProto.FLOAT, name=f"{out_name}__cast"))
        converted += 1
    if converted:
        onnx.save(model, str(path))
    return converted


class _Reader:
    """``CalibrationDataReader`` over precomputed input dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self):
        return next(self._items, None)


def calibration_images(folder: str | os.PathLike, limit: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` RGB uint8 images from ``folder`` (sorted, deterministic)."""
    from ..io import list_images, read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"calibration folder {folder} does not exist or is not a directory; pass a folder of images.")
    paths = list_images(folder)[:limit]
    if not paths:
        raise DatasetError(f"calibration folder {folder} holds no images (.png, .jpg, .tif, ...).")
    return [read_image(p) for p in paths]


def quantize_static_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    images: list[np.ndarray],
    make_feed: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> Path:
    """Static int8 (QDQ, per-channel weights) of ``src`` calibrated on ``images`` via ``make_feed``."""
    q = _quantization()
    if not images:
        raise ConfigError("static quantization needs at least one calibration image.")
    dst = Path(dst)
    reader = _Reader([make_feed(img) for img in images])
    try:
        with _quiet_root_warnings():
            q.quantize_static(
                str(src), str(dst), reader, quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8, per_channel=True, calibrate_method=q.CalibrationMethod.MinMax,
            )
    except Exception as exc:
        raise ExportError(f"static int8 quantization of {src} failed: {type(exc).__name__}: {exc}") from exc
    return dst


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean arrays of the same shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _sample_images(calibration: str | os.PathLike | None, limit: int) -> list[np.ndarray]:
    """Calibration images, or scikit-image's astronaut and coffee (256 px) when none are given."""
    if calibration is not None:
        return calibration_images(calibration, limit)
    from skimage import data, transform

    out = []
    for img in (data.astronaut(), data.coffee()):
        scale = 256 / max(img.shape[:2])
        size = (round(img.shape[0] * scale), round(img.shape[1] * scale))
        out.append((transform.resize(img, size, anti_aliasing=True) * 255).round().astype(np.uint8))
    return out


def _update_manifest(export_dir: Path, files: dict[str, str], report: dict) -> dict:
    import json

    from .onnx import MANIFEST, write_manifest

    manifest = json.loads((export_dir / MANIFEST).read_text())
    manifest["files_fp32"] = dict(manifest["files"])
    manifest["files"] = files
    manifest["quantization"] = report
    write_manifest(export_dir, manifest)
    return report


def _size_report(pairs: dict[str, tuple[Path, Path]]) -> dict:
    fp32 = sum(a.stat().st_size for a, _ in pairs.values())
    int8 = sum(b.stat().st_size for _, b in pairs.values())
    return {"bytes_fp32": fp32, "bytes_int8": int8, "size_ratio": round(int8 / fp32, 4),
            "files": {k: {"fp32": a.stat().st_size, "int8": b.stat().st_size} for k, (a, b) in pairs.items()}}


def sam_mask_agreement(fp32, int8, images: list[np.ndarray], grid: int = 3) -> dict:
    """Compare two :class:`OrtSamPredictor` on ``grid``x``grid`` single-point prompts per image:
    IoU of the masks (all multimask outputs), relative embedding error, max |IoU-prediction| change."""
    ious, emb_err, score_err = [], [], []
    for img in images:
        fp32.set_image(img)
        int8.set_image(img)
        ref = fp32.features
        emb_err.append(float(np.abs(int8.features - ref).max() / (np.abs(ref).max() + 1e-12)))
        h, w = img.shape[:2]
        for y in (np.arange(grid) + 0.5) * h / grid:
            for x in (np.arange(grid) + 0.5) * w / grid:
                pt, lab = np.array([[x, y]]), np.array([1])
                m_a, s_a, _ = fp32.predict(pt, lab, multimask_output=True)
                m_b, s_b, _ = int8.predict(pt, lab, multimask_output=True)
                ious.extend(mask_iou(a, b) for a, b in zip(m_a, m_b, strict=True))
                score_err.append(float(np.abs(s_a - s_b).max()))
    return {"mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)),
            "embedding_rel_error": float(np.max(emb_err)), "iou_prediction_abs_error": float(np.max(score_err)),
            "prompts": len(score_err), "images": len(images)}


def quantize_sam_export(export_dir: str | os.PathLike, calibration: str | os.PathLike | None = None,
                        limit: int = 16) -> dict:
    """int8 versions of a SAM export (``encoder.int8.onnx``, ``decoder.int8.onnx``); the manifest then
    points at them (fp32 files kept under ``files_fp32``) and records size and accuracy change.

    Without ``calibration`` both models are quantized dynamically; with it the encoder is quantized
    statically (calibrated on those images) and the decoder dynamically.
    """
    from .runtime import OrtSamPredictor, read_manifest

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    files = manifest.get("files_fp32", manifest["files"])
    enc, dec = export_dir / files["encoder"], export_dir / files["decoder"]
    enc_q, dec_q = export_dir / "encoder.int8.onnx", export_dir / "decoder.int8.onnx"
    fp32 = OrtSamPredictor(export_dir, device="cpu", files=files)
    if calibration is None:
        quantize_dynamic_int8(enc, enc_q)
        mode = "dynamic"
    else:
        images = calibration_images(calibration, limit)

        def feed(img: np.ndarray) -> dict[str, np.ndarray]:
            return {"image": img if fp32.raw_input else fp32.preprocess(img)}

        quantize_static_int8(enc, enc_q, images, feed)
        mode = f"static encoder (calibrated on {len(images)} images), dynamic decoder"
    quantize_dynamic_int8(dec, dec_q)
    int8_files = {"encoder": enc_q.name, "decoder": dec_q.name}
    int8 = OrtSamPredictor(export_dir, device="cpu", files=int8_files)
    report = {"mode": mode, **_size_report({"encoder": (enc, enc_q), "decoder": (dec, dec_q)}),
              "accuracy": sam_mask_agreement(fp32, int8, _sample_images(calibration, 4)),
              "kernels": {"encoder": _kernel_summary(enc_q), "decoder": _kernel_summary(dec_q)}}
    return _update_manifest(export_dir, int8_files, report)


def quantize_semantic_export(export_dir: str | os.PathLike, calibration: str | os.PathLike | None = None,
                             limit: int = 16) -> dict:
    """int8 version of a semantic ONNX export (``model.int8.onnx``; dynamic, or static with
    ``calibration``); records size and the fraction of pixels whose class is unchanged."""
    from .runtime import OrtSemanticSegmenter, read_manifest, semantic_preprocess

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    files = manifest.get("files_fp32", manifest["files"])
    src, dst = export_dir / files["model"], export_dir / "model.int8.onnx"
    norm, pad = manifest["normalization"], int(manifest.get("pad_multiple", 32))
    if calibration is None:
        quantize_dynamic_int8(src, dst)
        mode = "dynamic"
    else:
        images = calibration_images(calibration, limit)
        quantize_static_int8(src, dst, images, lambda img: {"image": semantic_preprocess(img, norm["mean"], norm["std"], pad)})
        mode = f"static (calibrated on {len(images)} images)"
    fp32 = OrtSemanticSegmenter(export_dir, device="cpu", files=files)
    int8 = OrtSemanticSegmenter(export_dir, device="cpu", files={"model": dst.name})
    agree = [float((fp32.predict_labels(img) == int8.predict_labels(img)).mean()) for img in _sample_images(calibration, 4)]
    report = {"mode": mode, **_size_report({"model": (src, dst)}),
              "accuracy": {"pixel_agreement_mean": float(np.mean(agree)), "pixel_agreement_min": float(np.min(agree))},
              "kernels": {"model": _kernel_summary(dst)}}
    return _update_manifest(export_dir, {"model": dst.name}, report)


#: ONNX Runtime ops that multiply in integers (quantized weights and activations).
INTEGER_PRODUCT_OPS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
                       "MatMulIntegerToFloat", "QGemm", "MatMulNBits")
_FLOAT_PRODUCT_OPS = ("MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "NhwcFusedConv")


def optimized_graph_ops(path: str | os.PathLike) -> dict:
    """What ONNX Runtime's CPU provider really runs for the model at ``path``: the op-type counts of its
    optimized graph, how many products run in integers, and the float products that multiply by a
    constant weight (a quantized weight dequantized and folded back to float32 would show up there).

    Returns ``{"op_types": {op: count}, "integer_products": n, "float_weight_products": [node names]}``."""
    import tempfile

    import onnx

    from .sessions import onnxruntime

    ort = onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    counts: dict[str, int] = {}
    folded = []
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type in _FLOAT_PRODUCT_OPS and len(node.input) > 1 and node.input[1] in constants:
            folded.append(node.name or node.output[0])
    return {"op_types": dict(sorted(counts.items())),
            "integer_products": sum(counts.get(op, 0) for op in INTEGER_PRODUCT_OPS),
            "float_weight_products": folded}


def _kernel_summary(path: Path) -> dict:
    """How many products of ``path`` ONNX Runtime runs in integers / in float on constant weights."""
    ops = optimized_graph_ops(path)
    return {"integer_products": ops["integer_products"], "float_weight_products": len(ops["float_weight_products"])}
