"""Float32 matrix products on CPU: MKL or oneDNN, whichever runs this CPU's widest kernels.

torch multiplies float32 matrices with MKL, whose AVX-512 kernels run on Intel CPUs only: on other CPUs with
AVX-512 (AMD Zen 4, Zen 5) it takes its AVX2 code. oneDNN, also inside torch, picks its kernels from the CPU's ISA
flags. On a Zen 5 (2 threads) a 2048^3 float32 product runs at 111 GMAC/s in MKL and 237 in oneDNN, and the SAM
ViT-B image encoder takes 5.15 s with MKL, 3.85 s with its linear layers in oneDNN. Both compute in float32; only
the order of the sums differs (results agree to float32 rounding, ~1e-6 relative).

The rule: oneDNN where the CPU is not Intel's and has AVX-512 (``avx512f``), MKL elsewhere. ``IMSEG_FP32_GEMM=mkl``
or ``onednn`` overrides it. :func:`linear` and :func:`apply_linear` apply it to inference (no autograd); training
keeps torch's own path, and so do autocast, ONNX export and tracing. Used by the SAM ViT and MobileSAM (TinyViT)
image encoders (TinyViT, mostly convolutions that oneDNN already runs: 0.98 -> 0.91 s on the same Zen 5) and by
SAM 2's Hiera encoder, memory attention and memory encoder, and by the SAM mask decoder's products with a prompt's
image tokens (:mod:`imseg.sam.batch_decoder`).

:func:`attention` applies the same rule to attention over many keys (torch's fused CPU kernel multiplies through
MKL too): SAM 2's memory attention (a frame's 4,096 tokens against up to 7 x 4,096 memory tokens, 4 layers: about
240 GMAC a frame), Hiera's global blocks and the SAM ViT's global attention.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .precision import cpu_fields, cpu_flags

ENV = "IMSEG_FP32_GEMM"
CHOICES = ("mkl", "onednn")


def cpu_vendor() -> str:
    """``vendor_id`` of ``/proc/cpuinfo`` (``GenuineIntel``, ``AuthenticAMD``, ...), or "" where unreadable."""
    return cpu_fields().get("vendor_id", "")


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fp32_gemm_library() -> str:
    """``"onednn"`` or ``"mkl"``: the library :func:`linear` multiplies float32 with on this CPU (see the module)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced and forced not in CHOICES:
        from .errors import ConfigError

        raise ConfigError(f"{ENV} must be one of {', '.join(CHOICES)} (or unset for the rule), got {forced!r}")
    if not _onednn_linear_available():
        return "mkl"
    if forced:
        return forced
    vendor = cpu_vendor()
    return "onednn" if vendor and vendor != "GenuineIntel" and "avx512f" in cpu_flags() else "mkl"


def _tracing() -> bool:
    """True inside ONNX export, TorchScript tracing or torch.compile/export, which must see torch's own ops."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def onednn_applies(x: torch.Tensor) -> bool:
    """float32 CPU inference on a oneDNN CPU, outside autocast (which would run the product in bfloat16) and
    outside export and tracing (:func:`_tracing`)."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and fp32_gemm_library() == "onednn" and not _tracing())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for 2-D ``x`` (M, K) and ``weight`` (N, K): in oneDNN where :func:`onednn_applies`
    (then ``out`` is not used: oneDNN returns a new tensor), else ``torch.addmm``/``mm`` (into ``out`` when given)."""
    if onednn_applies(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if out is None:
        return F.linear(x, weight, bias)
    return torch.mm(x, weight.t(), out=out) if bias is None else torch.addmm(bias, x, weight.t(), out=out)


def apply_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a layer called on (..., C_in) tokens, through :func:`linear` when ``layer`` is a plain,
    unhooked ``nn.Linear`` (a LoRA wrapper, a hooked or quantised layer is called as it is)."""
    if type(layer) is not nn.Linear or layer._forward_hooks or layer._forward_pre_hooks or not onednn_applies(x):
        return layer(x)
    return linear(x.reshape(-1, layer.in_features), layer.weight, layer.bias).view(*x.shape[:-1], layer.out_features)


#: attention with fewer keys than this stays in torch's fused kernel (many small windows: per-call overhead)
MIN_KEYS = 1024
#: queries per block of attention scores: on a Zen 5 (2 threads) 128 rows ran 1.8x torch's kernel for 28,736 keys of
#: width 256 and 1.9x for 4,096; blocks of 512 rows or more fell back to torch's speed
QUERY_BLOCK = 128


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)`` for (B, H, N, D) ``q`` and
    (B, H, M, D) ``k``/``v``, with both products in oneDNN where :func:`onednn_applies` and there are at least
    :data:`MIN_KEYS` keys; elsewhere torch's own kernel.

    torch's CPU attention kernel multiplies float32 through MKL (AVX2 code on AMD CPUs). Here the queries go in
    blocks of rows: scores ``q @ k.T * scale (+ bias)`` by one oneDNN product (the bias added inside it), an exact
    softmax over each row, then ``p @ v`` by another, :data:`QUERY_BLOCK` queries at a time. The
    result equals torch's to float32 rounding (the sums are ordered otherwise). ``bias``: an additive float mask
    broadcastable to (B, H, N, M); a boolean mask (True: attend) goes to torch's kernel, which reads it so.
    """
    if (q.ndim != 4 or k.shape[-2] < MIN_KEYS or not onednn_applies(q) or k.dtype != q.dtype or v.dtype != q.dtype
            or (bias is not None and not bias.is_floating_point())):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    batch, heads, rows, _ = q.shape
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if bias is not None:
        bias = bias.to(q.dtype).expand(batch, heads, rows, k.shape[-2])
    out = q.new_empty(batch, heads, rows, v.shape[-1])
    for b in range(batch):
        for h in range(heads):
            keys_bh, values_t = k[b, h].contiguous(), v[b, h].t().contiguous()
            queries = q[b, h] * scale
            for start in range(0, rows, QUERY_BLOCK):
                block = queries[start:start + QUERY_BLOCK]
                if bias is None:
                    scores = torch.ops.mkldnn._linear_pointwise(block, keys_bh, None, "none", [], "")
                else:
                    scores = torch.ops.mkldnn._linear_pointwise.binary(
                        block, bias[b, h, start:start + QUERY_BLOCK].contiguous(), keys_bh, None, "add")
                out[b, h, start:start + QUERY_BLOCK] = torch.ops.mkldnn._linear_pointwise(
                    torch.softmax(scores, dim=-1), values_t, None, "none", [], "")
    return out
