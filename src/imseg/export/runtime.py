"""ONNX Runtime backend: run exported models with the same ``segment()`` API and ``Masks`` output.

``load_exported(dir)`` reads ``imseg_export.json`` and returns :class:`OrtSamSegmenter`,
:class:`~imseg.export.ort_sam2.OrtSam2Segmenter` or :class:`OrtSemanticSegmenter`;
``load_registry_model(spec, checkpoint=...)`` exports a registry model into the cache once and loads that.
Sessions and manifests: :mod:`imseg.export.sessions`; the SAM engine: :mod:`imseg.export.ort_sam`;
the semantic engine: :mod:`imseg.export.ort_semantic`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, DependencyError, ExportError
from ..sam.transforms import ResizeLongestSide
from ..segmenter import Segmenter
from .onnx import MANIFEST
from .ort_sam import OrtAmgBackend, OrtSamPredictor, OrtSamSegmenter
from .ort_semantic import OrtSemanticSegmenter, semantic_preprocess
from .sessions import PROVIDER_ALIASES, check_manifest, check_session, make_session, onnxruntime, read_manifest, select_providers

__all__ = [
    "PROVIDER_ALIASES", "OrtAmgBackend", "OrtSamPredictor", "OrtSamSegmenter", "OrtSemanticSegmenter",
    "ResizeLongestSide", "check_manifest", "check_session", "export_cache_dir", "load_exported",
    "load_registry_model", "make_session", "onnxruntime", "read_manifest", "select_providers", "semantic_preprocess",
]


def load_exported(path: str | os.PathLike, device: str = "auto", providers: list[str] | None = None,
                  threads: int | None = None, checkpoint: Any = None, precision: str | None = None,
                  **kwargs: Any) -> Segmenter:
    """Load an export directory (with ``imseg_export.json``) as an ONNX Runtime segmenter.

    ``precision``: None/``auto`` runs the files the manifest names (int8 after ``--int8``), ``fp32`` the
    float32 files, ``int8`` the quantized ones (export with ``--int8`` or ``--calibration`` first)."""
    onnxruntime()
    manifest = read_manifest(path)
    family = manifest.get("family")
    if manifest.get("format") != "onnx":
        raise ExportError(
            f"{path}: export format {manifest.get('format')!r} cannot run on ONNX Runtime; export with --format onnx."
        )
    files = precision_files(manifest, path, precision)
    if family == "sam":
        return OrtSamSegmenter(path, device=device, providers=providers, threads=threads, files=files, **kwargs)
    if family == "sam2":
        from .ort_sam2 import OrtSam2Segmenter

        return OrtSam2Segmenter(path, device=device, providers=providers, threads=threads, **kwargs)
    if family == "semantic":
        unknown = sorted(set(kwargs) - {"resize", "imgsz", "tta", "scales"})
        if unknown:
            raise ConfigError(f"unexpected options for a semantic export: {unknown} (it takes resize=, imgsz=, "
                              f"tta=, scales=)")
        return OrtSemanticSegmenter(path, device=device, providers=providers, threads=threads, files=files, **kwargs)
    if family == "instance":
        from .ort_instance import load_instance_export

        return load_instance_export(path, device=device, providers=providers, threads=threads, files=files, **kwargs)
    raise ExportError(f"{path}: unknown model family {family!r} in {MANIFEST}.")


def precision_files(manifest: dict, path: str | os.PathLike, precision: str | None) -> dict[str, str]:
    """The manifest's files for ``precision`` on ONNX Runtime (see :func:`load_exported`)."""
    from ..precision import check_precision

    name = check_precision(precision) if precision is not None else "auto"
    quantized = "quantization" in manifest
    if name == "auto":
        return dict(manifest["files"])
    if name == "fp32":
        return dict(manifest.get("files_fp32", manifest["files"]))
    if name == "int8":
        if not quantized:
            raise ConfigError(f"{path}: this export has no int8 models; export with --int8 (or --calibration DIR), "
                              f"or run `imseg.export.quantize` on it, or use precision='fp32'.")
        return dict(manifest["files"])
    raise ConfigError(f"ONNX Runtime runs these models in fp32 or int8, not {name}; use backend='openvino' or "
                      f"backend='torch' for bf16.")


def export_cache_dir(spec_name: str, checkpoint: str | os.PathLike) -> Path:
    """Cache directory of the ONNX export of ``checkpoint`` (keyed by its path, size and mtime)."""
    from ..registry import cache_dir

    ckpt = Path(checkpoint).resolve()
    stat = ckpt.stat()
    key = hashlib.sha256(f"{ckpt}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{spec_name}-{key}"


def load_registry_model(spec, checkpoint: str | os.PathLike | None = None, device: str = "auto",
                        providers: list[str] | None = None, threads: int | None = None, backend: str = "onnxruntime",
                        **kwargs: Any) -> Segmenter:
    """A registry model on ONNX Runtime (or OpenVINO): export ``checkpoint`` to the cache once, then load it."""
    if backend != "openvino":
        onnxruntime()
    if spec.family not in ("sam", "sam2"):
        raise ConfigError(
            f"model {spec.name!r} ({spec.family}) has no {backend} backend; use backend='torch'. "
            f"Semantic runs: `imseg export --run RUN --format onnx`, then imseg.load(EXPORT_DIR)."
        )
    if checkpoint is None:
        from ..registry import find_weights

        checkpoint = find_weights(spec.name)
        if checkpoint is None:
            raise CheckpointError(
                f"no checkpoint for {spec.name!r}: pass checkpoint=PATH, run `imseg weights download {spec.name}`, "
                f"or export once with `imseg export --model {spec.name} --checkpoint P --out DIR` and load DIR."
            )
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found.")
    target = export_cache_dir(spec.name, checkpoint)
    if not (target / MANIFEST).is_file():
        from . import export_sam_checkpoint

        try:
            export_sam_checkpoint(spec, checkpoint, target)
        except DependencyError:
            raise
        except ExportError as exc:
            raise ExportError(
                f"{exc}\nExport it explicitly with `imseg export --model {spec.name} --checkpoint {checkpoint} --out DIR`, "
                f"then imseg.load(DIR, backend='onnxruntime')."
            ) from exc
    if backend == "openvino":
        from .openvino import load_openvino

        return load_openvino(target, device=device, threads=threads, **kwargs)
    return load_exported(target, device=device, providers=providers, threads=threads, **kwargs)
