"""OpenVINO backend: the ONNX exports (``imseg export``) run on OpenVINO's CPU plugin through the same
engines as ONNX Runtime (:class:`OpenVinoSamPredictor` / :class:`OpenVinoSamSegmenter`,
:class:`OpenVinoSemanticSegmenter`), so ``segment()``, the server and the automatic generator see no
difference.

Precision (:mod:`imseg.precision`): ``fp32`` and ``bf16`` are OpenVINO's inference-precision hints
(OpenVINO itself picks bf16 on AMX CPUs unless told otherwise, so fp32 is always asked for explicitly);
``int8`` is NNCF post-training quantisation of the encoder (or semantic network) calibrated on images,
saved once as OpenVINO IR under ``EXPORT_DIR/openvino/``. SAM's prompt decoder always runs in fp32.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError, require
from ..segmenter import Segmenter
from .ort_sam import OrtSamPredictor, OrtSamSegmenter
from .ort_semantic import OrtSemanticSegmenter, semantic_preprocess
from .sessions import read_manifest

__all__ = ["OpenVinoSamPredictor", "OpenVinoSamSegmenter", "OpenVinoSemanticSegmenter", "OvSession",
           "load_openvino", "quantize_openvino"]

_ONNX_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "u8": "tensor(uint8)", "i64": "tensor(int64)",
               "i32": "tensor(int32)", "boolean": "tensor(bool)"}
IR_DIR = "openvino"


def openvino():
    """Import openvino or raise :class:`DependencyError` naming ``pip install 'imseg[openvino]'``."""
    return require("openvino", "openvino", "The OpenVINO backend")


class _Port:
    """name / type / shape of a model input or output, as ONNX Runtime's ``NodeArg`` spells them."""

    def __init__(self, port: Any) -> None:
        self.name = port.get_any_name()
        self.type = _ONNX_TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
        self.shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]


class OvSession:
    """A compiled OpenVINO model with ONNX Runtime's session interface (``run``, ``get_inputs``,
    ``get_outputs``). Thread-safe: one infer request per calling thread."""

    def __init__(self, model: Any, *, precision: str = "fp32", threads: int | None = None) -> None:
        ov = openvino()
        core = ov.Core()
        if isinstance(model, (str, os.PathLike)):
            model = core.read_model(str(model))
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ExportError(f"OpenVINO could not compile the model for CPU ({precision}): {exc}") from exc
        self.precision = precision
        self._local = threading.local()

    def get_inputs(self) -> list[_Port]:
        return [_Port(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(p) for p in self.compiled.outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feeds)
        names = output_names or [o.name for o in self.get_outputs()]
        return [np.array(result[self.compiled.output(name)], copy=True) for name in names]


def _check_device(device: str) -> None:
    if str(device or "auto").lower() not in ("auto", "cpu"):
        raise ConfigError(f"the OpenVINO backend runs on the CPU here; pass device='cpu' (or 'auto'), not {device!r}.")


def _ov_precision(precision: str | None) -> str:
    from ..precision import resolve_precision

    return resolve_precision(precision, "cpu", engine="openvino")


class OpenVinoSamPredictor(OrtSamPredictor):
    """:class:`OrtSamPredictor` on OpenVINO: the encoder in ``precision`` (fp32, bf16 or NNCF int8), the
    prompt decoder in fp32."""

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", threads: int | None = None,
                 precision: str | None = None, calibration: str | os.PathLike | None = None) -> None:
        _check_device(device)
        self.precision = _ov_precision(precision)
        self._calibration = calibration
        manifest = read_manifest(export_dir)
        super().__init__(export_dir, device="cpu", threads=threads, files=dict(manifest.get("files_fp32",
                                                                                            manifest["files"])))

    def open_session(self, path: Path, role: str, device: str, providers: list[str] | None, threads: int | None):
        if role != "encoder":
            return OvSession(path, precision="fp32", threads=threads)
        if self.precision == "int8":
            return OvSession(quantize_openvino(path.parent, calibration=self._calibration), threads=threads)
        return OvSession(path, precision=self.precision, threads=threads)


class OpenVinoSamSegmenter(OrtSamSegmenter):
    """SAM on OpenVINO as a :class:`~imseg.segmenter.Segmenter` (prompts and everything mode)."""

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", threads: int | None = None,
                 precision: str | None = None, calibration: str | os.PathLike | None = None,
                 embedding_cache_size: int = 1, **amg_options: Any) -> None:
        predictor = OpenVinoSamPredictor(export_dir, device=device, threads=threads, precision=precision,
                                         calibration=calibration)
        super().__init__(export_dir, embedding_cache_size=embedding_cache_size, predictor=predictor, **amg_options)
        self.precision = predictor.precision


class OpenVinoSemanticSegmenter(OrtSemanticSegmenter):
    """A semantic export on OpenVINO in ``precision`` (fp32, bf16 or NNCF int8)."""

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", threads: int | None = None,
                 precision: str | None = None, calibration: str | os.PathLike | None = None,
                 resize: bool | None = None, imgsz: int | None = None, tta: bool | str | None = None,
                 scales: Any = None) -> None:
        _check_device(device)
        self.precision = _ov_precision(precision)
        self._calibration = calibration
        manifest = read_manifest(export_dir)
        super().__init__(export_dir, device="cpu", threads=threads, resize=resize, imgsz=imgsz, tta=tta, scales=scales,
                         files=dict(manifest.get("files_fp32", manifest["files"])))

    def open_session(self, path: Path, device: str, providers: list[str] | None, threads: int | None):
        if self.precision == "int8":
            return OvSession(quantize_openvino(path.parent, calibration=self._calibration), threads=threads)
        return OvSession(path, precision=self.precision, threads=threads)


def load_openvino(path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                  precision: str | None = None, calibration: str | os.PathLike | None = None,
                  checkpoint: Any = None, **kwargs: Any) -> Segmenter:
    """An export directory (``imseg_export.json``, ONNX files) as an OpenVINO segmenter."""
    openvino()
    manifest = read_manifest(path)
    if manifest.get("format") != "onnx":
        raise ExportError(f"{path}: export format {manifest.get('format')!r} cannot run on OpenVINO; "
                          f"export with --format onnx.")
    family = manifest.get("family")
    if family == "sam":
        return OpenVinoSamSegmenter(path, device=device, threads=threads, precision=precision,
                                    calibration=calibration, **kwargs)
    if family == "semantic":
        unknown = sorted(set(kwargs) - {"resize", "imgsz", "tta", "scales"})
        if unknown:
            raise ConfigError(f"unexpected options for a semantic export: {unknown} (it takes resize=, imgsz=, "
                              f"tta=, scales=)")
        return OpenVinoSemanticSegmenter(path, device=device, threads=threads, precision=precision,
                                         calibration=calibration, **kwargs)
    raise ExportError(f"{path}: unknown model family {family!r}; OpenVINO runs SAM and semantic exports.")


# ============================================================================ int8 (NNCF)
def _calibration_feeds(export_dir: Path, manifest: dict, calibration: str | os.PathLike | None,
                       limit: int) -> list[dict[str, np.ndarray]]:
    """The encoder's (or semantic model's) inputs for the calibration images (or the built-in samples)."""
    from .quantize import _sample_images

    images = _sample_images(calibration, limit)
    if manifest.get("family") == "semantic":
        norm, pad = manifest["normalization"], int(manifest.get("pad_multiple", 32))
        return [{"image": semantic_preprocess(img, norm["mean"], norm["std"], pad)} for img in images]
    fp32 = OrtSamPredictor.__new__(OrtSamPredictor)  # only its preprocessing: no sessions needed
    from ..sam.transforms import ResizeLongestSide

    fp32.img_size = int(manifest.get("img_size", 1024))
    fp32.transform = ResizeLongestSide(fp32.img_size)
    fp32.pixel_mean = np.asarray(manifest["normalization"]["mean"], np.float32)
    fp32.pixel_std = np.asarray(manifest["normalization"]["std"], np.float32)
    raw = bool(manifest.get("raw_input", False))
    return [{"image": np.ascontiguousarray(img) if raw else fp32.preprocess(img)} for img in images]


def quantize_openvino(export_dir: str | os.PathLike, calibration: str | os.PathLike | None = None,
                      limit: int = 16, seven_bit: bool | None = None) -> Path:
    """NNCF int8 of the export's encoder (SAM) or model (semantic), calibrated on the images of
    ``calibration`` (default: built-in sample images); written once to ``openvino/<role>.int8.xml`` and
    reused. Returns the IR path.

    ``seven_bit`` keeps every layer's weights to 7 bits (NNCF's overflow fix), so that CPUs without VNNI,
    whose int8 products saturate at 16 bits, stay accurate (SAM ViT-B held to AVX2: mask IoU against fp32
    0.938 with 8-bit weights, 0.987 with 7-bit); None: 7 bits where :func:`imseg.precision.native_int8` is
    false. That IR is ``openvino/<role>.int8-7bit.xml``."""
    from ..precision import native_int8

    ov = openvino()
    nncf = require("nncf", "openvino", "int8 quantisation for OpenVINO")
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    files = manifest.get("files_fp32", manifest["files"])
    role = "encoder" if manifest.get("family") == "sam" else "model"
    seven_bit = not native_int8() if seven_bit is None else bool(seven_bit)
    target = export_dir / IR_DIR / f"{role}.int8{'-7bit' if seven_bit else ''}.xml"
    if target.is_file() and calibration is None:
        return target
    model = ov.Core().read_model(str(export_dir / files[role]))
    feeds = _calibration_feeds(export_dir, manifest, calibration, limit)
    try:
        overflow_fix = nncf.OverflowFix.ENABLE if seven_bit else nncf.OverflowFix.FIRST_LAYER
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                                  model_type=nncf.ModelType.TRANSFORMER if role == "encoder" else None,
                                  fast_bias_correction=True,
                                  advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=overflow_fix))
    except Exception as exc:  # NNCF raises many types; report them as one
        raise ExportError(f"NNCF int8 quantisation of {export_dir / files[role]} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return target
