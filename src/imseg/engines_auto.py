"""``backend="auto"``: the fastest engine for a model on this CPU whose output stays within a drift limit.

It measures the registry SAM models (``sam-vit-b/l/h``, ``mobile-sam``), the SAM 2.1 models
(``sam2.1-hiera-t/s/b+/l``) and semantic training runs (an ``imseg train`` run directory; the probe, drift
and export of a run are in :mod:`imseg.engines_auto_semantic`). The rule, applied once per model, weights and
machine, then cached:

1. **Candidates** (engine, precision), by family (:data:`FAMILY_ENGINES`): torch fp32 always; torch bf16 where the
   CPU multiplies bfloat16 natively (:func:`imseg.precision.native_bf16`); ONNX Runtime fp32 when
   ``onnxruntime`` imports; OpenVINO fp32, and bf16 where the CPU has native bf16, when ``openvino`` imports
   (SAM and semantic runs only: OpenVINO does not run SAM 2.1 exports). An explicit ``precision=`` (``fp32``
   or ``bf16``) keeps only the candidates of that precision (``bf16`` then also where bf16 is emulated). int8
   is never a candidate: it needs calibration images and its drift exceeds the limit (MobileSAM's int8
   encoder: mask IoU 0.987 against fp32 in benchmarks/RESULTS.md). The ONNX engines run an ONNX export made
   once into the cache from a checkpoint file (a run's from its weights file), so random weights (no
   checkpoint) leave torch only; random weights are built from a fixed seed, so every candidate is the same
   network.
2. **Probe**: SAM and SAM 2.1: scikit-image's astronaut (512x512) and the point prompts :data:`PROBE_POINTS`.
   Semantic runs: the first image of the run's validation split when its data config is still readable,
   else scikit-image's astronaut.
3. **Drift** against torch fp32 on the probe. SAM and SAM 2.1: for every probe point, the mask IoU of each
   of the three low-resolution mask logits (``> 0``) (:func:`imseg.precision.logit_mask_iou`, every pixel
   counted: no margin, since a margin large enough to matter on random weights, whose logits mostly sit
   within 0.1 of zero, would leave most pixels out), averaged. Semantic runs: the mean, over the classes
   present in either label map, of each class's mask IoU between the predicted label maps. A candidate
   **passes** when that mean IoU is at least :data:`MIN_IOU` (0.99); torch fp32 is the reference and always
   passes.
4. **Speed** on the probe, one warm-up call, then the best of :data:`TIMED_CALLS` timed calls: SAM and
   SAM 2.1, the image encoder (``embed``, the ``set_image`` work); semantic runs, the whole prediction (class
   probabilities and label map).
5. **Pick** the fastest passing candidate.
6. **Cache**: ``engine_choice.json`` in :func:`imseg.registry.cache_dir`, keyed by the model (registry name, or
   the run directory with its prediction options and probe), the weights (a checkpoint's or a run's weights
   file: resolved path, size and mtime; or ``"random"``), the CPU model and ISA flags, the core count, torch's
   thread count, the torch / onnxruntime / openvino versions and the precision asked for. A load with the same
   key reuses the choice without measuring; ``IMSEG_ENGINE_REMEASURE=1`` (or ``remeasure=True``) measures again.
   An unreadable cache file is ignored with a warning and rewritten.

The segmenter returned carries the decision as ``.engine_choice`` (:class:`EngineChoice`, with every
candidate's seconds and IoU). On a GPU there is nothing to measure: ``auto`` is torch there. Classical
methods, instance and fine-tuning runs and export directories are not measured: load them with an explicit
backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

#: A candidate passes when its mean mask IoU against torch fp32 on the probe is at least this.
MIN_IOU = 0.99
#: Point prompts of the probe, as fractions of the image's (x, y).
PROBE_POINTS = ((0.5, 0.35), (0.3, 0.6), (0.7, 0.75), (0.2, 0.2))
#: Timed encoder calls after the warm-up; the best one counts.
TIMED_CALLS = 2
CACHE_FILE = "engine_choice.json"
REMEASURE_ENV = "IMSEG_ENGINE_REMEASURE"
#: Part of the cache key: a change of the rule above invalidates every stored choice.
RULE_VERSION = 2
_REFERENCE = ("torch", "fp32")
_EVERY_ENGINE = (_REFERENCE, ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
#: The (engine, precision) pairs each measured family's segmenters run, in the order they are measured. SAM 2.1
#: has no OpenVINO engine (``imseg.load(EXPORT_DIR, backend="openvino")`` runs SAM and semantic exports only).
FAMILY_ENGINES = {"sam": _EVERY_ENGINE, "sam2": _EVERY_ENGINE[:3], "semantic": _EVERY_ENGINE}


@dataclass
class Row:
    """One measured candidate: ``seconds`` per encode (best timed call), ``iou`` against torch fp32,
    ``error`` when it could not be built or run."""

    engine: str
    precision: str
    seconds: float | None = None
    iou: float | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.iou is not None and self.iou >= MIN_IOU

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"


@dataclass
class EngineChoice:
    """What ``backend="auto"`` picked (``engine``, ``precision``), from which measured ``rows``, and
    whether it came from the cache."""

    engine: str
    precision: str
    rows: list[Row] = field(default_factory=list)
    cached: bool = False
    reason: str = ""

    def row(self, engine: str, precision: str) -> Row | None:
        return next((r for r in self.rows if (r.engine, r.precision) == (engine, precision)), None)

    def summary(self) -> str:
        """One line: the pick, its speed against torch fp32, its drift, and why."""
        if self.reason:
            return f"auto: {self.engine} {self.precision} ({self.reason})"
        got, ref = self.row(self.engine, self.precision), self.row(*_REFERENCE)
        speed = f"{got.seconds:.2f} s per image" if got and got.seconds is not None else "speed not measured"
        if ref is not None and ref.seconds is not None and (self.engine, self.precision) != _REFERENCE:
            speed += f" vs torch fp32 {ref.seconds:.2f} s"
        iou = f"; mask IoU {got.iou:.3f}" if got and got.iou is not None else ""
        n = len(self.rows)
        how = "cached choice" if self.cached else f"{n} candidate{'s' if n != 1 else ''} measured"
        return (f"auto: {self.engine} {self.precision}, {speed}{iou} (fastest with mask IoU >= {MIN_IOU} "
                f"against torch fp32; {how})")

    def to_json(self) -> dict:
        return {"engine": self.engine, "precision": self.precision, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_json(cls, data: dict) -> EngineChoice:
        return cls(str(data["engine"]), str(data["precision"]), [Row(**r) for r in data["rows"]], cached=True)


# ----------------------------------------------------------------------------- candidates and selection
def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def candidates(precision: str | None = None, exported: bool = True, family: str = "sam") -> list[tuple[str, str]]:
    """The (engine, precision) pairs the rule measures on this machine for a model of ``family`` (``sam``,
    ``sam2`` or ``semantic``; torch fp32 first); ``exported``: whether the ONNX engines can have an export."""
    from .precision import native_bf16

    if family not in FAMILY_ENGINES:
        raise ConfigError(f"backend='auto' measures the families {', '.join(FAMILY_ENGINES)}, not {family!r}.")
    wanted = {"fp32", "bf16"} if precision in (None, "auto") else {precision}
    bf16 = native_bf16() or precision == "bf16"
    return [(e, p) for e, p in FAMILY_ENGINES[family]
            if p in wanted and (p == "fp32" or bf16) and (e == "torch" or (exported and _imports(e)))]


def pick(rows: list[Row], allowed: list[tuple[str, str]] | None = None) -> Row | None:
    """The fastest passing row (among ``allowed`` pairs when given), or None when none passes."""
    passing = [r for r in rows if r.passed and r.seconds is not None
               and (allowed is None or (r.engine, r.precision) in allowed)]
    return min(passing, key=lambda r: r.seconds) if passing else None


# ----------------------------------------------------------------------------- measuring
def probe() -> tuple[np.ndarray, list[np.ndarray]]:
    """The probe image (RGB uint8) and its point prompts as (1, 2) float32 arrays."""
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut()[..., :3])
    h, w = rgb.shape[:2]
    return rgb, [np.array([[fx * w, fy * h]], np.float32) for fx, fy in PROBE_POINTS]


def measure_segmenter(segmenter: Any, rgb: np.ndarray, points: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """(best encode seconds, low-res logits (3, h, w) per probe point) of a SAM or SAM 2.1 engine."""
    from .segmenter import Prompts

    embedding = segmenter.embed(rgb)  # warm-up: first-call allocations and kernel selection
    best = float("inf")
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        segmenter.embed(rgb)
        best = min(best, time.perf_counter() - start)
    labels = np.ones(1, np.int32)
    logits = [segmenter.decode(embedding, Prompts(points=p, labels=labels), True).low_res_logits[0]
              for p in points]
    return best, logits


def drift(reference: list[np.ndarray], logits: list[np.ndarray]) -> float:
    """Mean mask IoU of ``logits`` against ``reference`` over every probe point and candidate mask."""
    from .precision import logit_mask_iou

    return float(np.mean([logit_mask_iou(a, b)
                          for ref, got in zip(reference, logits, strict=True)
                          for a, b in zip(ref, got, strict=True)]))


class Target:
    """What the rule measures: one model with its weights (``weights``: a file, or None for random weights).
    Subclasses say how to build its segmenter on an engine, time it and compare it on the probe."""

    family: str = "sam"
    label: str = ""
    weights: Path | None = None

    def key(self) -> dict:
        """The model's part of the cache key."""
        raise NotImplementedError

    def build(self, engine: str, precision: str, *, quiet: bool = False, device: Any = "cpu") -> Any:
        raise NotImplementedError

    def measure(self, segmenter: Any) -> tuple[float, Any]:
        """(best seconds on the probe, the outputs :meth:`drift` compares)."""
        raise NotImplementedError

    def drift(self, reference: Any, outputs: Any) -> float:
        """The mean IoU of ``outputs`` against torch fp32's ``reference`` (1.0: identical)."""
        raise NotImplementedError


class RegistryTarget(Target):
    """A registry SAM or SAM 2.1 model (``spec``) with a checkpoint file or random weights."""

    def __init__(self, spec: Any, weights: Path | None, options: dict) -> None:
        self.spec, self.weights, self.options = spec, weights, dict(options)
        self.family, self.label = spec.family, spec.name

    def key(self) -> dict:
        return {"model": self.spec.name, "checkpoint": file_stamp(self.weights)}

    def build(self, engine: str, precision: str, *, quiet: bool = False, device: Any = "cpu") -> Any:
        return build(self.spec, engine, precision, self.weights, self.options, quiet=quiet, device=device)

    def measure(self, segmenter: Any) -> tuple[float, list[np.ndarray]]:
        return measure_segmenter(segmenter, *probe())

    def drift(self, reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
        return drift(reference, outputs)


def measure_all(target: Target, pairs: list[tuple[str, str]]) -> list[Row]:
    """Build, time and compare torch fp32 (the reference) and every pair in ``pairs``, one at a time."""
    seconds, reference = target.measure(target.build(*_REFERENCE, quiet=True))
    rows = [Row(*_REFERENCE, seconds=seconds, iou=1.0)]
    for engine, precision in pairs:
        if (engine, precision) == _REFERENCE:
            continue
        try:
            segmenter = target.build(engine, precision, quiet=True)
            seconds, outputs = target.measure(segmenter)
            del segmenter  # one candidate in memory at a time (ViT-H is several GB)
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is recorded and skipped, not fatal
            warnings.warn(f"backend='auto': {engine} {precision} could not run ({type(exc).__name__}: {exc}); "
                          f"it is left out.", UserWarning, stacklevel=2)
            rows.append(Row(engine, precision, error=f"{type(exc).__name__}: {exc}"))
            continue
        rows.append(Row(engine, precision, seconds=seconds, iou=target.drift(reference, outputs)))
    return rows


def build(spec: Any, engine: str, precision: str, checkpoint: Path | None, options: dict, quiet: bool = False,
          device: Any = "cpu"):
    """The segmenter of ``spec`` on ``engine`` in ``precision`` (through :func:`imseg.registry.load`); random
    weights (no ``checkpoint``) come from a fixed seed, so every candidate measured is the same network."""
    from .registry import load

    opts = dict(options)
    if engine == "torch":
        opts["allow_random"] = checkpoint is None
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
        if checkpoint is None:
            stack.enter_context(seeded())
        return load(spec.name, checkpoint=checkpoint, device=device, backend=engine, precision=precision, **opts)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """torch's CPU random generator seeded with ``seed`` inside, restored after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- the cache
def file_stamp(path: Path | None) -> str:
    """``"<resolved path>:<size>:<mtime ns>"`` of a weights file, or ``"random"`` for None."""
    if path is None:
        return "random"
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(target: Target, precision: str | None) -> dict:
    """Everything the measured speeds and drifts depend on."""
    import torch

    from .precision import REPORTED_FLAGS, cpu_flags, cpu_model, native_bf16

    versions = {m: _version(m) for m in ("torch", "onnxruntime", "openvino")}
    return {"rule": RULE_VERSION, **target.key(), "precision": precision or "auto",
            "cpu": cpu_model(), "flags": sorted(f for f in REPORTED_FLAGS if f in cpu_flags()),
            "native_bf16": native_bf16(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "torch_threads": torch.get_num_threads(), "versions": versions}


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cache_path() -> Path:
    from .registry import cache_dir

    return cache_dir() / CACHE_FILE


def _read_entries(path: Path) -> dict:
    """The stored entries, or {} (with a warning) when the file is unreadable or not ours."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise TypeError("entries is not an object")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"{path}: unreadable engine-choice cache ({type(exc).__name__}: {exc}); it is ignored and "
                      f"will be rewritten.", UserWarning, stacklevel=3)
        return {}


def read_choice(key: dict) -> EngineChoice | None:
    """The stored choice for ``key``, or None."""
    entry = _read_entries(cache_path()).get(_digest(key))
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    try:
        return EngineChoice.from_json(entry["choice"])
    except (KeyError, TypeError, ValueError):
        return None


def write_choice(key: dict, choice: EngineChoice) -> None:
    """Store ``choice`` under ``key`` (temp file + rename, so readers never see half a file)."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt file was reported when it was read
        entries = _read_entries(path)
    entries[_digest(key)] = {"key": key, "choice": choice.to_json()}
    fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"entries": entries}, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- the entry point
def load_auto(name: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *, device: str = "auto",
              precision: str | None = None, remeasure: bool | None = None, **options: Any):
    """``imseg.load(name, backend="auto")``: the segmenter the module's rule picks, with ``.engine_choice``.
    ``name``: a registry SAM or SAM 2.1 model, or a semantic training run directory (``checkpoint``: its
    weights file, or ``"best"``/``"last"``)."""
    restrict = _restriction(precision)
    target = _target(name, checkpoint, options)
    from .device import resolve_device

    dev = resolve_device(device)
    if dev.type != "cpu":
        segmenter = target.build("torch", restrict or "fp32", device=str(dev))
        segmenter.engine_choice = EngineChoice("torch", segmenter.precision, reason="the GPU runs torch; "
                                               "auto measures CPU engines only")
        return segmenter
    key = cache_key(target, restrict)
    if remeasure is None:
        remeasure = os.environ.get(REMEASURE_ENV, "").strip() not in ("", "0")
    choice = None if remeasure else read_choice(key)
    if choice is None:
        pairs = candidates(restrict, exported=target.weights is not None, family=target.family)
        rows = measure_all(target, pairs)
        best = pick(rows, pairs)
        if best is None:
            raise ConfigError(f"backend='auto': no {restrict + ' ' if restrict else ''}engine for {target.label} "
                              f"stays within mask IoU >= {MIN_IOU} of torch fp32 on this CPU ({_table(rows)}); use "
                              f"precision='fp32' or an explicit backend.")
        choice = EngineChoice(best.engine, best.precision, rows)
        write_choice(key, choice)
    segmenter = target.build(choice.engine, choice.precision)
    segmenter.engine_choice = choice
    return segmenter


def _target(name: str | os.PathLike, checkpoint: str | os.PathLike | None, options: dict) -> Target:
    """What ``name`` is to the rule, or a :class:`ConfigError` saying what works when the rule does not measure it.
    Takes ``allow_random`` out of ``options``."""
    from .registry import get_spec

    allow_random = bool(options.pop("allow_random", False))
    if isinstance(name, os.PathLike) or Path(name).exists():
        from .engines_auto_semantic import run_target

        return run_target(Path(name), checkpoint, options)
    spec = get_spec(str(name))
    if spec.family not in ("sam", "sam2"):
        raise ConfigError(f"backend='auto' measures the SAM and SAM 2.1 models (sam-vit-b/l/h, mobile-sam, "
                          f"sam2.1-hiera-t/s/b+/l) and semantic training runs; {spec.name} is a {spec.family} model: "
                          f"use backend='torch'.")
    return RegistryTarget(spec, _weights(spec, checkpoint, allow_random), options)


def _restriction(precision: str | None) -> str | None:
    """None (every precision) or the one precision the candidates keep."""
    from .precision import check_precision

    if precision is None:
        return None
    name = check_precision(precision)
    if name == "int8":
        raise ConfigError("backend='auto' does not pick int8 (it needs calibration images and drifts beyond mask IoU "
                          f"{MIN_IOU}): use backend='onnxruntime' or 'openvino' with precision='int8'.")
    return None if name == "auto" else name


def _weights(spec: Any, checkpoint: str | os.PathLike | None, allow_random: bool) -> Path | None:
    """The checkpoint file (resolved), or None for random weights (only with ``allow_random``)."""
    from .errors import CheckpointError
    from .registry import find_weights

    if checkpoint is None:
        checkpoint = find_weights(spec.name)
    if checkpoint is None:
        if allow_random:
            return None
        raise CheckpointError(f"no checkpoint for {spec.name}: none was passed and none is in the weights cache. Get "
                              f"it with `imseg weights download {spec.name}` or pass --checkpoint PATH.")
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found.")
    return path


def _table(rows: list[Row]) -> str:
    return "; ".join(f"{r.label}: {r.error}" if r.error else f"{r.label}: {r.seconds:.2f} s, IoU {r.iou:.3f}"
                     for r in rows)


def choice_line(segmenter: Any) -> str | None:
    """The one-line summary of ``segmenter``'s auto choice (looking through wrappers such as
    :class:`imseg.text.TextSegmenter`), or None when it was not loaded with ``backend="auto"``."""
    while segmenter is not None:
        choice = getattr(segmenter, "engine_choice", None)
        if choice is not None:
            return choice.summary()
        segmenter = getattr(segmenter, "segmenter", None)
    return None
