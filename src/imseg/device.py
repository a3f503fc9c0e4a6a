"""Torch device resolution shared by every torch engine (SAM, semantic)."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

_DEVICES = "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(device: str | Any = "auto") -> Any:
    """``"auto"`` (or None) -> cuda if available else cpu; otherwise ``torch.device(device)``, checked
    against what this machine has (a :class:`ConfigError` says what to use instead)."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{_DEVICES}, got {device!r}.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} was requested but CUDA is not available; "
                          f"use device='cpu' or 'auto'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError("device='mps' was requested but MPS (Apple GPU) is not available here; "
                          "use device='cpu' or 'auto'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{_DEVICES}, got {device!r}.")
    return dev
