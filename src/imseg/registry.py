"""One place that lists what exists: model names -> builders, weights (URL + sha256), the cache.

Entries name their builder as ``"module:function"`` strings so listing models imports nothing
heavy. ``load(name, ...)`` resolves a name, a run directory or an exported model to a
:class:`Segmenter`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelNotFoundError, WeightsError
from .segmenter import Segmenter

__all__ = ["ModelSpec", "Segmenter", "WeightsSpec", "get_spec", "list_models", "load", "register"]


# ----------------------------------------------------------------------------- registry entries
@dataclass(frozen=True)
class WeightsSpec:
    """An official checkpoint: file name, download URL, sha256 and size in bytes."""

    filename: str
    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. ``builder`` is "module:function" called as ``fn(spec, **kwargs)``."""

    name: str
    family: str  # "sam" | "classical" | "semantic"
    builder: str
    summary: str
    weights: WeightsSpec | None = None
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_WEIGHTS = {
    "vit_b": WeightsSpec(
        "sam_vit_b_01ec64.pth",
        _SAM_BASE + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375042383,
    ),
    "vit_l": WeightsSpec(
        "sam_vit_l_0b3195.pth",
        _SAM_BASE + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": WeightsSpec(
        "sam_vit_h_4b8939.pth",
        _SAM_BASE + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_t": WeightsSpec(
        "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        40728226,
    ),
}

MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (also under its aliases)."""
    for key in (spec.name, *spec.aliases):
        MODELS[key] = spec
    return spec


for _variant, _name, _aliases, _summary in [
    ("vit_b", "sam-vit-b", ("vit_b", "sam"), "Segment Anything, ViT-B image encoder (91M params)"),
    ("vit_l", "sam-vit-l", ("vit_l",), "Segment Anything, ViT-L image encoder (308M params)"),
    ("vit_h", "sam-vit-h", ("vit_h",), "Segment Anything, ViT-H image encoder (636M params)"),
    ("vit_t", "mobile-sam", ("vit_t", "mobilesam", "sam-vit-t"), "MobileSAM, TinyViT image encoder (5.8M)"),
]:
    register(
        ModelSpec(
            name=_name,
            family="sam",
            builder="imseg.sam.segmenter:build_sam_segmenter",
            summary=_summary,
            weights=SAM_WEIGHTS[_variant],
            options={"variant": _variant},
            aliases=_aliases,
        )
    )


def _register_classical() -> None:
    # name, summary (when to use it), prompt support is declared by the segmenter itself
    methods = [
        ("threshold", "global threshold at a fixed value; bright objects on a dark background"),
        ("otsu", "Otsu threshold; bimodal histograms (cells, documents, silhouettes)"),
        ("li", "Li minimum-cross-entropy threshold; skewed histograms, faint foreground"),
        ("yen", "Yen threshold; high-contrast images with small foreground"),
        ("adaptive", "local (adaptive) threshold; uneven illumination"),
        ("canny", "Canny edges then filled regions; objects with clear closed outlines"),
        ("watershed", "distance-transform watershed; touching round objects (nuclei, coins)"),
        ("region_grow", "grow regions from seed points within a colour tolerance (prompt: points)"),
        ("flood", "flood fill from seed points (prompt: points)"),
        ("kmeans", "k-means on colour(+position); a few dominant colours"),
        ("meanshift", "mean shift on colour; unknown number of colour modes"),
        ("gmm", "Gaussian mixture on colour(+position); soft colour classes"),
        ("slic", "SLIC superpixels; over-segmentation as a pre-step"),
        ("felzenszwalb", "Felzenszwalb graph segmentation; natural images, variable region size"),
        ("quickshift", "Quickshift superpixels; texture-aware over-segmentation"),
        ("chan_vese", "Chan-Vese active contour; one object without sharp edges"),
        ("grabcut", "OpenCV GrabCut from a box and/or points; one object with a user prompt"),
    ]
    for name, summary in methods:
        register(
            ModelSpec(
                name=name,
                family="classical",
                builder="imseg.classical:build_classical_segmenter",
                summary=summary,
                options={"method": name},
            )
        )


_register_classical()


def list_models(family: str | None = None) -> list[ModelSpec]:
    """Registry entries (unique by name), optionally of one family."""
    seen: dict[str, ModelSpec] = {}
    for spec in MODELS.values():
        if family is None or spec.family == family:
            seen.setdefault(spec.name, spec)
    return list(seen.values())


def get_spec(name: str) -> ModelSpec:
    key = name.strip().lower().replace("_", "-") if name not in MODELS else name
    spec = MODELS.get(name) or MODELS.get(key) or MODELS.get(name.lower())
    if spec is None:
        import difflib

        names = sorted({s.name for s in MODELS.values()})
        close = difflib.get_close_matches(name.lower(), names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(names)}; "
            f"or pass a training run directory (runs/train/exp) or an exported model directory."
        )
    return spec


def _call_builder(path: str, *args, **kwargs):
    module_name, func_name = path.split(":")
    return getattr(importlib.import_module(module_name), func_name)(*args, **kwargs)


def load(
    name: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    backend: str = "torch",
    **kwargs: Any,
) -> Segmenter:
    """Build a segmenter.

    ``name`` is a registry name (``"sam-vit-b"``, ``"mobile-sam"``, ``"otsu"``, see
    ``imseg.registry.list_models()``), a training run directory (``runs/train/exp``) or one of its
    weights files (``runs/train/exp/weights/last.pt``), or a directory of exported ONNX models
    (with ``backend="onnxruntime"``).
    """
    if backend not in ("torch", "onnxruntime"):
        raise ConfigError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    path = Path(name)
    if isinstance(name, os.PathLike) or path.exists():  # a run/export directory or a run's best.pt/last.pt
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such run or export directory.")
        if backend == "onnxruntime" or (path / "imseg_export.json").exists():
            return _call_builder("imseg.export.runtime:load_exported", path, device=device, **kwargs)
        return _call_builder("imseg.semantic.infer:load_run", path, checkpoint=checkpoint, device=device, **kwargs)
    spec = get_spec(str(name))
    if backend == "onnxruntime":
        return _call_builder(
            "imseg.export.runtime:load_registry_model", spec, checkpoint=checkpoint, device=device, **kwargs
        )
    return _call_builder(spec.builder, spec, checkpoint=checkpoint, device=device, **kwargs)


# ----------------------------------------------------------------------------- weights cache
def cache_dir() -> Path:
    """Weights cache: ``$IMSEG_HOME`` if set, else ``~/.cache/imseg``."""
    root = os.environ.get("IMSEG_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "imseg"


def weights_path(name: str) -> Path:
    """Where the official weights of model ``name`` live in the cache (may not exist yet)."""
    spec = get_spec(name)
    if spec.weights is None:
        raise WeightsError(f"model {spec.name!r} has no downloadable weights.")
    return cache_dir() / spec.weights.filename


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_weights(name: str) -> Path | None:
    """Cached weights of ``name`` if present, else None (never downloads)."""
    path = weights_path(name)
    return path if path.is_file() else None


def download_weights(name: str, *, force: bool = False, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download the official weights of ``name`` into the cache and verify their sha256."""
    spec = get_spec(name)
    target = weights_path(spec.name)
    assert spec.weights is not None
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with urllib.request.urlopen(spec.weights.url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or spec.weights.size
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=spec.weights.filename)
                while block := response.read(1 << 20):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
                if bar is not None:
                    bar.close()
        except OSError as exc:
            raise WeightsError(
                f"could not download {spec.weights.url} ({exc}). If this machine is offline, download "
                f"{spec.weights.filename} elsewhere and place it at {target} (or set IMSEG_HOME), or pass "
                f"--checkpoint PATH / checkpoint=PATH."
            ) from exc
        digest = sha256_file(tmp)
        if digest != spec.weights.sha256:
            raise WeightsError(
                f"checksum mismatch for {spec.weights.filename}: expected sha256 {spec.weights.sha256}, got "
                f"{digest}. The download is incomplete or altered; it was not kept. Try again."
            )
        shutil.move(str(tmp), target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
