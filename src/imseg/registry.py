"""One place that lists what exists: model names -> builders, weights (URL + sha256), the cache.

Entries name their builder as ``"module:function"`` strings so listing models imports nothing
heavy. The classical entries come from the method table of :mod:`imseg.classical.table`, the
semantic ones from the architecture tables of :mod:`imseg.semantic.models`; the SAM entries are
listed here with their official weights. ``load(name, ...)`` resolves a name, a run directory or
an exported model to a :class:`Segmenter`.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelNotFoundError, WeightsError
from .segmenter import Segmenter

#: Engines ``load`` can run a model on; ``auto`` measures them once on this CPU (:mod:`imseg.engines_auto`).
BACKENDS = ("torch", "onnxruntime", "openvino", "auto")

__all__ = ["ModelSpec", "Segmenter", "WeightsSpec", "get_spec", "list_models", "load", "register"]


# ----------------------------------------------------------------------------- registry entries
@dataclass(frozen=True)
class WeightsSpec:
    """An official checkpoint: file name, download URL, sha256 (None where it is not known) and size in bytes."""

    filename: str
    url: str
    sha256: str | None
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


def _register_sam2() -> None:
    """One entry per SAM 2.1 checkpoint of :mod:`imseg.sam2.specs` (stdlib only)."""
    from .sam2.specs import SPECS

    params = {"t": "39M", "s": "46M", "b+": "81M", "l": "224M"}
    for spec in SPECS.values():
        short = spec.name.rsplit("-", 1)[1]
        register(
            ModelSpec(
                name=spec.name,
                family="sam2",
                builder="imseg.sam2.segmenter:build_sam2_segmenter",
                summary=f"SAM 2.1, Hiera-{short.upper()} image encoder ({params[short]} params)",
                weights=WeightsSpec(spec.filename, spec.url, spec.sha256),
                options={"variant": spec.variant},
                aliases=(spec.filename.removesuffix(".pt"), f"sam2-{short}", f"sam2.1-{short}",
                         *(("sam2",) if short == "t" else ())),
            )
        )


def _register_classical() -> None:
    """One entry per row of the classical method table (:mod:`imseg.classical.table`, stdlib only)."""
    from .classical.table import BUILDER, METHODS

    for method in METHODS.values():
        register(
            ModelSpec(
                name=method.name,
                family="classical",
                builder=BUILDER,
                summary=method.summary,
                options={"method": method.name},
            )
        )


def _register_semantic() -> None:
    """One entry per architecture of :mod:`imseg.semantic.models` (its tables import no torch)."""
    from .semantic.models import ALIASES, SMP_ARCHITECTURES, TORCHVISION_MODELS

    sources = [(name, "smp", f"segmentation_models_pytorch.{cls}") for name, cls in SMP_ARCHITECTURES.items()]
    sources += [(name, "torchvision", f"torchvision.models.segmentation.{fn}") for name, fn in TORCHVISION_MODELS.items()]
    for name, source, where in sources:
        register(
            ModelSpec(
                name=name,
                family="semantic",
                builder="imseg.registry:build_semantic_architecture",
                summary=f"{where} semantic segmentation; train it first: imseg train --model {name}",
                options={"architecture": name, "source": source},
                aliases=tuple(alias for alias, target in ALIASES.items() if target == name),
            )
        )


def build_semantic_architecture(spec: ModelSpec, checkpoint: Any = None, device: str = "auto", **kwargs: Any):
    """Registry builder of the semantic architectures: they have no weights until trained, so this
    explains where a trained model comes from instead of building one."""
    run_hint = "imseg.load('runs/train/NAME') (or its weights/best.pt)"
    if checkpoint is not None:
        run_hint = f"imseg.load({str(checkpoint)!r}) (the run directory or its weights file, as the model name)"
    raise ConfigError(
        f"{spec.name!r} is a semantic architecture with no pretrained weights here: train it first with "
        f"`imseg train --model {spec.name} --data DATA`, then load the run directory: {run_hint}."
    )


_register_sam2()
_register_classical()
_register_semantic()


def list_models(family: str | None = None) -> list[ModelSpec]:
    """Registry entries (unique by name, in registration order), optionally of one family
    (``"sam"``, ``"sam2"``, ``"classical"``, ``"semantic"``)."""
    if family is not None and family not in _families():
        raise ConfigError(f"unknown model family {family!r}; the families are {', '.join(_families())}.")
    seen: dict[str, ModelSpec] = {}
    for spec in MODELS.values():
        if family is None or spec.family == family:
            seen.setdefault(spec.name, spec)
    return list(seen.values())


def get_spec(name: str) -> ModelSpec:
    """The entry of a model name or alias; case, spaces and ``-`` versus ``_`` do not matter."""
    key = name.strip().lower()
    for candidate in (name, key, key.replace("_", "-"), key.replace("-", "_")):
        if candidate in MODELS:
            return MODELS[candidate]
    import difflib

    names = sorted({s.name for s in MODELS.values()})
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    known = "; ".join(f"{family}: {', '.join(s.name for s in list_models(family))}" for family in _families())
    raise ModelNotFoundError(
        f"unknown model {name!r}.{hint} Known models ({known}); "
        f"or pass a training run directory (runs/train/exp) or an exported model directory."
    )


def _families() -> list[str]:
    return list(dict.fromkeys(spec.family for spec in MODELS.values()))


def _call_builder(path: str, *args, **kwargs):
    module_name, func_name = path.split(":")
    return getattr(importlib.import_module(module_name), func_name)(*args, **kwargs)


def load(
    name: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    backend: str = "torch",
    precision: str | None = None,
    **kwargs: Any,
) -> Segmenter:
    """Build a segmenter.

    ``name`` is a registry name (``"sam-vit-b"``, ``"mobile-sam"``, ``"otsu"``, see
    ``imseg.registry.list_models()``), a training run directory (``runs/train/exp``) or one of its
    weights files (``runs/train/exp/weights/last.pt``), or a directory of exported ONNX models
    (with ``backend="onnxruntime"`` or ``backend="openvino"``). ``precision`` (``auto``/``fp32``/``bf16``/
    ``int8``; default fp32) is the encoder's or semantic network's precision: the rule of ``auto`` is in
    :mod:`imseg.precision`. ``backend="auto"`` (SAM and SAM 2.1 models, semantic runs) runs the engine and
    precision measured fastest on this CPU within a mask drift limit: the rule is in :mod:`imseg.engines_auto`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return _call_builder("imseg.engines_auto:load_auto", name, checkpoint, device=device, precision=precision,
                             **kwargs)
    if precision is not None:
        from .precision import check_precision

        kwargs["precision"] = check_precision(precision)
    path = Path(name)
    if isinstance(name, os.PathLike) or path.exists():  # a run/export directory or a run's best.pt/last.pt
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such run or export directory.")
        if backend == "openvino":
            return _call_builder("imseg.export.openvino:load_openvino", path, device=device, **kwargs)
        if backend == "onnxruntime" or (path / "imseg_export.json").exists():
            return _call_builder("imseg.export.runtime:load_exported", path, device=device, **kwargs)
        from .finetune.run import is_finetune_run
        from .instance.infer import is_instance_run

        if is_finetune_run(path):
            return _call_builder("imseg.finetune.run:load_finetune_run", path, weights=str(checkpoint or "best"),
                                 device=device, **kwargs)

        if is_instance_run(path):
            if kwargs.pop("precision", None) not in (None, "auto", "fp32"):
                raise ConfigError(f"{path}: instance runs run in fp32 on torch; export them for other precisions.")
            return _call_builder("imseg.instance.infer:load_instance_run", path, device=device, **kwargs)
        chosen = kwargs.pop("precision", None)
        segmenter = _call_builder("imseg.semantic.infer:load_run", path, checkpoint=checkpoint, device=device,
                                  **kwargs)
        return _call_builder("imseg.precision:apply_to_semantic", segmenter, chosen)
    spec = get_spec(str(name))
    if backend in ("onnxruntime", "openvino"):
        kwargs["backend"] = backend
        return _call_builder(
            "imseg.export.runtime:load_registry_model", spec, checkpoint=checkpoint, device=device, **kwargs
        )
    if spec.family == "classical" and kwargs.get("precision") is not None:
        if kwargs.pop("precision") not in ("auto", "fp32"):
            raise ConfigError(f"{spec.name} is a classical method with no network: drop precision (or use fp32).")
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
    """Download the official weights of ``name`` into the cache and verify their sha256; where the registry
    knows no sha256 the file is kept unverified, with a warning saying so."""
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
        except (OSError, http.client.HTTPException) as exc:  # offline, refused, timed out, HTTP error status
            raise WeightsError(
                f"could not download {spec.weights.url} ({exc}). If this machine is offline, download "
                f"{spec.weights.filename} elsewhere and place it at {target} (or set IMSEG_HOME), or pass "
                f"--checkpoint PATH / checkpoint=PATH."
            ) from exc
        digest = sha256_file(tmp)
        if spec.weights.sha256 is None:
            warnings.warn(
                f"{spec.weights.filename}: no sha256 is recorded for it, so the download was NOT verified "
                f"(sha256 of the file: {digest}). Compare it with the publisher's checksum if you have one.",
                UserWarning, stacklevel=2)
        elif digest != spec.weights.sha256:
            got = tmp.stat().st_size
            sizes = f" ({got:,} bytes received, {spec.weights.size:,} expected)" if spec.weights.size else ""
            raise WeightsError(
                f"checksum mismatch for {spec.weights.filename} from {spec.weights.url}: expected sha256 "
                f"{spec.weights.sha256}, got {digest}{sizes}. The download is incomplete or altered; it was not "
                f"kept. Try again."
            )
        shutil.move(str(tmp), target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
