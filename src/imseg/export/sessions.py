"""ONNX Runtime sessions and export manifests: providers, session creation, manifest and graph checks.

Torch-free: everything here needs only numpy and onnxruntime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExportError, ModelNotFoundError, require
from .onnx import MANIFEST

PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def onnxruntime():
    """Import onnxruntime or raise :class:`DependencyError` naming ``pip install 'imseg[export]'``."""
    return require("onnxruntime", "export", "The ONNX Runtime backend")


def select_providers(device: str = "auto", providers: list[str] | None = None) -> list[str]:
    """Execution providers for ``device`` ("auto" | "cpu" | "cuda" | "tensorrt"), best first.

    ``auto`` takes TensorRT, then CUDA, when onnxruntime reports them, and always ends with CPU.
    Explicit ``providers`` win; unknown or unavailable ones raise :class:`ConfigError`.
    """
    ort = onnxruntime()
    available = ort.get_available_providers()
    if providers is not None:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ConfigError(f"ONNX Runtime providers {missing} are not available here; available: {available}.")
        return list(providers)
    device = (device or "auto").lower().split(":")[0]
    if device == "auto":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    if device not in PROVIDER_ALIASES:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'tensorrt' for the onnxruntime backend; got {device!r}.")
    chosen = PROVIDER_ALIASES[device]
    if chosen[0] not in available:
        raise ConfigError(
            f"device {device!r} needs {chosen[0]}, which this onnxruntime build lacks (available: {available}). "
            f"Install onnxruntime-gpu for CUDA/TensorRT, or use device='cpu'."
        )
    return [p for p in chosen if p in available]


def make_session(path: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` with the chosen providers and intra-op threads."""
    ort = onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found; export the model again with `imseg export`.")
    options = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=select_providers(device, providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: ONNX Runtime could not load the model ({exc}). Re-export it.") from exc


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The ``imseg_export.json`` of an export directory, checked (:func:`check_manifest`)."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise ModelNotFoundError(
            f"{path}: no {MANIFEST} found, so this is not an imseg export directory. "
            f"Create one with `imseg export --model NAME --checkpoint P --out DIR` or `imseg export --run RUN`."
        )
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{file}: unreadable export manifest ({exc}); export again.") from exc
    check_manifest(manifest, file)
    return manifest


#: files each model family lists in its manifest
MANIFEST_FILES = {"sam": ("encoder", "decoder"), "sam2": ("encoder", "decoder"), "semantic": ("model",),
                  "instance": ("model",)}


def check_manifest(manifest: Any, file: str | os.PathLike = MANIFEST) -> None:
    """Raise :class:`ExportError` naming ``file`` and the fix unless ``manifest`` has the keys the
    ONNX Runtime backend reads: ``format``, ``family``, ``files`` (per family), ``normalization``
    (``mean``/``std``, 3 numbers each) and, for semantic models, ``class_names``."""
    fix = "export the model again with `imseg export` (or restore the manifest it wrote)"

    def bad(what: str) -> ExportError:
        return ExportError(f"{file}: {what}; {fix}.")

    if not isinstance(manifest, dict):
        raise bad(f"the export manifest must be a JSON object, got a JSON {type(manifest).__name__}")
    family = manifest.get("family")
    if family not in MANIFEST_FILES:
        raise bad(f"unknown model family {family!r} (expected 'sam', 'sam2', 'semantic' or 'instance')")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("the manifest has no 'files' object naming the .onnx files")
    wanted = MANIFEST_FILES[family]
    missing = [role for role in wanted if not isinstance(files.get(role), str) or not files.get(role)]
    if missing:
        others = {f: r for f, r in MANIFEST_FILES.items() if f != family and all(k in files for k in r)}
        hint = f" (the files {sorted(files)} are those of a {next(iter(others))!r} export: is 'family' wrong?)" if others else ""
        raise bad(f"family {family!r} needs files {list(wanted)}, but 'files' lists {sorted(files)}{hint}")
    for role, name in files.items():
        if isinstance(name, str) and (Path(name).is_absolute() or ".." in Path(name).parts):
            raise bad(f"files.{role} = {name!r} must be a file name inside the export directory")
    norm = manifest.get("normalization")
    if not isinstance(norm, dict):
        raise bad("the manifest has no 'normalization' object (mean, std)")
    for key in ("mean", "std"):
        value = norm.get(key)
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(f"normalization.{key} must be 3 numbers (R, G, B), got {value!r}")
    if any(v == 0 for v in norm["std"]):
        raise bad(f"normalization.std must not contain 0, got {norm['std']!r}")
    if family in ("semantic", "instance"):
        names = manifest.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise bad(f"class_names must be a non-empty list of strings, got {names!r}")


def io_signature(session) -> tuple[dict[str, tuple[str, list]], dict[str, tuple[str, list]]]:
    """({input name: (type, shape)}, {output name: (type, shape)}) of an ONNX Runtime session."""
    return ({i.name: (i.type, list(i.shape)) for i in session.get_inputs()},
            {o.name: (o.type, list(o.shape)) for o in session.get_outputs()})


def check_session(session, path: str | os.PathLike, role: str, inputs: dict[str, tuple[str, int]],
                  outputs: dict[str, tuple[str, int]], hint: str = "") -> None:
    """Raise :class:`ExportError` unless ``session`` has exactly the ``inputs`` and at least the
    ``outputs`` given as ``{name: (onnx type, rank)}``: the file at ``path`` is not the ``role`` model."""
    have_in, have_out = io_signature(session)

    def describe(sig: dict[str, tuple[str, list]]) -> str:
        return ", ".join(f"{n} {t.replace('tensor(', '').rstrip(')')}{s}" for n, (t, s) in sig.items()) or "none"

    def wrong(what: str) -> ExportError:
        fix = hint or " Point the manifest's 'files' at the right file, or export again with `imseg export`."
        return ExportError(
            f"{path}: this is not the {role} model this export's {MANIFEST} describes ({what}; the file has inputs "
            f"[{describe(have_in)}] and outputs [{describe(have_out)}]).{fix}"
        )

    if set(have_in) != set(inputs):
        raise wrong(f"expected inputs {sorted(inputs)}")
    missing = [name for name in outputs if name not in have_out]
    if missing:
        raise wrong(f"expected outputs {sorted(outputs)}")
    for kind, want, have in (("input", inputs, have_in), ("output", outputs, have_out)):
        for name, (dtype, rank) in want.items():
            got_type, got_shape = have[name]
            if got_type != dtype or len(got_shape) != rank:
                raise wrong(f"{kind} '{name}' should be {dtype} of rank {rank}, not {got_type} of rank {len(got_shape)}")


