"""Numeric precision of the heavy part of a model (SAM image encoders, semantic networks): the one rule
behind ``precision="auto"`` and the means to run a torch module in bfloat16 on CPU.

The rule (``auto``):

* **bf16** on a CPU with native bfloat16 arithmetic: the ``amx_bf16`` (Intel AMX: Sapphire Rapids,
  Emerald Rapids and later) or ``avx512_bf16`` (Cooper Lake, AMD Zen 4 and later) CPU flags. There the
  matrix products of an encoder run several times faster than in float32 and the masks stay within
  the drift the tests bound (mask IoU against exact float32).
* **fp32** everywhere else (CPUs without those flags emulate bfloat16 in float32 arithmetic, which is
  slower than float32 itself; GPUs keep their own ``dtype`` option).

Only the encoder (or the semantic network) changes precision: SAM's prompt encoder, mask decoder and
mask post-processing always run in float32 on a float32 embedding. ``int8`` runs on the exported
engines only (ONNX Runtime, OpenVINO), never in torch.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
_ALIASES = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "int8": "int8", "auto": "auto"}
#: CPU flags that mean bfloat16 products run natively (not emulated in float32).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: CPU flags whose int8 dot products accumulate u8 x s8 pairs without 16-bit saturation (VNNI, AMX).
NATIVE_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that leave VNNI out, whatever the CPU has.
_ONEDNN_CAPS_WITHOUT_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE")
#: The ISA flags the benchmarks print next to every figure.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
                  "avx_vnni")


def check_precision(precision: str | None) -> str:
    """The canonical name (``auto``/``fp32``/``bf16``/``int8``) of ``precision``; None means ``fp32``."""
    if precision is None:
        return "fp32"
    key = str(precision).strip().lower()
    if key not in _ALIASES:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return _ALIASES[key]


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ISA flags of this machine's CPU (``/proc/cpuinfo`` on Linux; empty where it cannot be read)."""
    return frozenset(cpu_fields().get("flags", "").split())


@functools.lru_cache(maxsize=1)
def cpu_fields() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``vendor_id``, ``model name``, ...); empty where
    unreadable."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), or ``platform.processor()`` where that is unavailable."""
    fields = cpu_fields()
    if "model name" in fields:  # VMs often say only "Intel Xeon Processor": family/model name the generation
        return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    import platform

    return platform.processor() or platform.machine()


def _forced(name: str) -> bool | None:
    """The 0/1 override in environment variable ``name``: None when unset or empty, ConfigError for another value."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise ConfigError(f"{name} must be 0 or 1 (or unset to detect from the CPU's flags), got {value!r}")
    return value == "1"


def native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively (see :data:`NATIVE_BF16_FLAGS`).

    ``IMSEG_NATIVE_BF16=0/1`` overrides the detection (a CPU whose flags are hidden by a hypervisor)."""
    forced = _forced("IMSEG_NATIVE_BF16")
    if forced is not None:
        return forced
    flags = cpu_flags()
    if flags:
        return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    try:  # no /proc/cpuinfo (macOS, Windows): torch's dispatch level says whether AMX kernels run
        import torch

        return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()
    except (ImportError, AttributeError):
        return False


def native_int8() -> bool:
    """True when this CPU's int8 products cannot saturate (see :data:`NATIVE_INT8_FLAGS`).

    Without VNNI (AVX2 and first AVX-512 CPUs: Zen 1-3, Haswell..Skylake) an int8 product adds pairs of
    u8 x s8 products in 16 bits, which saturates with full 8-bit weights; quantisers then keep the weights to
    7 bits (:func:`imseg.export.openvino.quantize_openvino`). ``ONEDNN_MAX_CPU_ISA`` capped below VNNI counts
    as no VNNI; ``IMSEG_NATIVE_INT8=0/1`` overrides the detection. Unknown CPUs (no ``/proc/cpuinfo``)
    count as without, the choice that is accurate everywhere."""
    forced = _forced("IMSEG_NATIVE_INT8")
    if forced is not None:
        return forced
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_CAPS_WITHOUT_VNNI:
        return False
    return any(flag in cpu_flags() for flag in NATIVE_INT8_FLAGS)


def resolve_precision(precision: str | None, device: Any = "cpu", *, engine: str = "torch") -> str:
    """``fp32``/``bf16``/``int8`` for ``precision`` on ``device`` ("cpu", "cuda", a torch.device) and
    ``engine`` ("torch", "onnxruntime", "openvino"): ``auto`` applies the module's rule; an explicit
    value is checked against what the engine can run."""
    name = check_precision(precision)
    device_type = str(getattr(device, "type", device) or "cpu").split(":")[0]
    if name == "auto":
        return "bf16" if device_type == "cpu" and native_bf16() and engine != "onnxruntime" else "fp32"
    if name == "int8" and engine == "torch":
        raise ConfigError("precision='int8' runs on the exported engines only: use backend='onnxruntime' or "
                          "backend='openvino' (imseg.load(NAME_OR_EXPORT_DIR, backend=..., precision='int8')).")
    if name == "bf16" and engine == "onnxruntime":
        raise ConfigError("ONNX Runtime has no bfloat16 CPU kernels for these models: use backend='openvino' or "
                          "backend='torch' for precision='bf16', or precision='fp32'/'int8' on onnxruntime.")
    if name == "bf16" and device_type != "cpu" and engine == "torch":
        raise ConfigError(f"precision='bf16' is the CPU option; on {device_type} pass dtype='bfloat16' "
                          f"(autocast) instead, or precision='fp32'.")
    return name


def torch_dtype(precision: str) -> Any:
    """torch.bfloat16 for ``bf16``, torch.float32 for ``fp32``."""
    import torch

    return torch.bfloat16 if check_precision(precision) == "bf16" else torch.float32


def to_bf16(module: Any) -> Any:
    """Cast ``module``'s weights to bfloat16 in place, its convolution weights channels-last: oneDNN's
    bfloat16 convolutions then read and write channels-last activations directly instead of reordering
    every NCHW tensor in and out (a third of TinyViT's bf16 encode time went to those reorders). Returns
    ``module``."""
    import torch

    return module.to(torch.bfloat16).to(memory_format=torch.channels_last)


def _to_float(value: Any) -> Any:
    """Every floating tensor in ``value`` (tensors, lists, tuples, dicts) as float32."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _to_float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def run_in_bf16(module: Any) -> Any:
    """Cast ``module``'s weights to bfloat16 in place (:func:`to_bf16`); hooks make it take float32 inputs
    (cast to bfloat16) and hand back float32 outputs, so callers see the same interface. Returns ``module``."""
    import torch

    to_bf16(module)

    def bf16_inputs(_module, args, kwargs):
        cast = tuple(a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        return cast, kwargs

    module.register_forward_pre_hook(bf16_inputs, with_kwargs=True)
    module.register_forward_hook(lambda _module, _args, output: _to_float(output))
    return module


def describe_cpu() -> str:
    """``"<model> | flags: ..."``: the CPU and the ISA flags that decide engine speed."""
    flags = cpu_flags()
    present = [f for f in REPORTED_FLAGS if f in flags]
    return f"{cpu_model()} | flags: {' '.join(present) or 'none of ' + ','.join(REPORTED_FLAGS)}"


def apply_to_semantic(segmenter: Any, precision: str | None) -> Any:
    """A torch semantic segmenter (``.model``, ``.device``) with its network in ``precision``; the
    probabilities after it are computed in float32. Returns the segmenter (``.precision`` set)."""
    chosen = resolve_precision(precision, getattr(segmenter, "device", "cpu"))
    if chosen == "bf16":
        run_in_bf16(segmenter.model)
    segmenter.precision = chosen
    return segmenter


def logit_mask_iou(reference: Any, logits: Any, margin: float = 0.0) -> float:
    """IoU of the masks ``logits > 0`` and ``reference > 0`` over the pixels where ``|reference| > margin``
    (with random weights many logits sit near zero, where any rounding flips a pixel; ``margin`` keeps
    the comparison to the pixels the reference is confident about). 1.0 when both masks are empty."""
    import numpy as np

    ref, got = np.asarray(reference, np.float32), np.asarray(logits, np.float32)
    keep = np.abs(ref) > margin
    a, b = (ref > 0) & keep, (got > 0) & keep
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
