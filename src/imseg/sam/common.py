"""Small building blocks shared by the SAM modules (MLP block, channel-first LayerNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Module):
    """Two linear layers with an activation between: (..., C) -> (..., C)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor.

    The channel count is kept as a plain int (not read from the input), so tracing/ONNX export
    records a constant normalised shape even when batch or spatial axes are dynamic.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = int(num_channels)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise channels-last with the fused kernel, hand back a (B, C, H, W) view
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def tracing() -> bool:
    """True while TorchScript tracing or ONNX export runs (shape logic must then stay symbolic)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def autocast_active(device_type: str) -> bool:
    """True while ``torch.autocast`` is on for ``device_type`` ("cpu", "cuda", ...).

    Autocast casts the inputs of listed ops (``linear``, ``addmm``, SDPA, ...) but not of their ``out=`` or
    in-place forms, and it keeps LayerNorm outputs in float32: code that writes into preallocated buffers
    or accumulates in place must not run under it, or it silently computes in float32 (or fails on a dtype
    mismatch)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))  # torch >= 2.4
    except (TypeError, RuntimeError):
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())  # torch 2.3: the CUDA flag


def plain_modules(module: nn.Module) -> bool:
    """True when ``module`` and all its submodules are unmodified torch.nn / imseg (or official SAM) classes
    with no forward hooks. The fast inference paths read weights (``.weight``, ``.bias``) straight from such modules
    instead of calling them; anything else (LoRA-style wrappers, hooks, subclasses) makes the callers run
    the modules themselves, so what the user attached is honoured."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    for sub in module.modules():
        if sub._forward_hooks or sub._forward_pre_hooks:
            return False
        if not type(sub).__module__.startswith(("torch.nn.", "imseg.", "segment_anything.", "mobile_sam.")):
            return False
    return True


def weights_key(*modules: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``modules`` is replaced or changed in place (optimizer
    steps, ``load_state_dict``, ``copy_``): a key for tensors derived from the weights."""
    key = []
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            try:
                version = tensor._version
            except RuntimeError:  # inference tensors have no version counter
                version = -1
            key.append((tensor.data_ptr(), version))
    return tuple(key)
