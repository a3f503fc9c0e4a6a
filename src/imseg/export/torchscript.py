"""TorchScript export of semantic models (traced), with class names and normalisation as extra files."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .onnx import prepare_out_dir, write_manifest

EXTRA_FILE = "imseg.json"


def export_semantic_torchscript(
    model,
    out_dir: str | os.PathLike,
    *,
    class_names: list[str],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    model_name: str = "semantic",
    pad_multiple: int = 32,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Trace ``model`` ((N, 3, H, W) normalised float -> (N, C, H, W) logits) to ``out_dir/model.pt``.

    The metadata (class names, mean/std in 0..1 units, pad multiple) is stored as the extra file
    ``imseg.json`` inside the archive (``torch.jit.load(p, _extra_files={"imseg.json": ""})``) and in
    the manifest. Returns the manifest path.
    """
    import torch

    out = prepare_out_dir(out_dir)
    model = model.eval()
    meta = {"imseg_model": model_name, "class_names": list(class_names), "mean": list(mean), "std": list(std),
            "pad_multiple": pad_multiple}
    path = out / "model.pt"
    example = torch.randn(1, 3, 2 * pad_multiple, 3 * pad_multiple)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings on shape checks that hold for multiples of pad_multiple
            traced = torch.jit.trace(model, example, check_trace=False)
            traced = torch.jit.freeze(traced)
        tmp = path.with_name(f".{path.name}.tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the deployable format
            torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: json.dumps(meta)})
        os.replace(tmp, path)
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc
    manifest = {"format": "torchscript", "family": "semantic", "model": model_name, "files": {"model": path.name},
                "class_names": list(class_names), "normalization": {"mean": list(mean), "std": list(std), "units": "0..1"},
                "pad_multiple": pad_multiple, **(extra or {})}
    return write_manifest(out, manifest)


def load_torchscript(path: str | os.PathLike, device: str = "cpu"):
    """Load a TorchScript export: returns (module, metadata dict)."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ExportError(f"{path}: TorchScript file not found; export with `imseg export --run RUN --format torchscript`.")
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    return module.eval(), json.loads(extra[EXTRA_FILE] or "{}")
