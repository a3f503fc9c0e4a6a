"""Devices and nodes of a Lightning run (``imseg train`` and ``imseg finetune``): the accepted ``devices`` values and
the strategy, DDP (with unused-parameter detection where the model needs it) once several processes train, and
BatchNorm statistics shared across those processes on GPUs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DEVICES_ACCEPTED", "ddp_strategy", "devices_ok", "is_distributed", "parse_devices",
           "sync_batchnorm", "uses_gpu"]

#: what ``devices`` accepts, for error messages
DEVICES_ACCEPTED = "a count >= 1, -1 or 'auto' (all), or device ids such as '0,1'"


def devices_ok(devices: Any) -> bool:
    """A count >= 1, -1 / 'auto' (all), or device ids ('0,1' or [0, 1]); a string without a comma is a count,
    as Lightning reads it."""
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return True
        parts = [part.strip() for part in text.split(",")]
        if len(parts) == 1:
            return parts[0].isdigit() and int(parts[0]) >= 1
        return all(part.isdigit() for part in parts if part) and any(parts)
    if isinstance(devices, list | tuple):
        return bool(devices) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    return False


def parse_devices(text: str) -> int | str:
    """The CLI's ``--devices`` text as ``devices``: a count becomes an int; -1, auto and id lists stay text."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def is_distributed(devices: Any, nodes: int, accelerator: str = "auto") -> bool:
    """Whether the run trains in several processes: several devices or nodes; 'auto' on a machine with several
    GPUs (Lightning then starts one process per GPU)."""
    if nodes > 1:
        return True
    if str(devices).strip() == "auto":
        if accelerator == "cpu":
            return False
        import torch

        return torch.cuda.device_count() > 1
    return devices not in (1, "1", None)


def uses_gpu(accelerator: str = "auto") -> bool:
    """Whether a run with this Lightning ``accelerator`` trains on a CUDA GPU ('auto' where one is present)."""
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def ddp_strategy(devices: Any, nodes: int, has_unused: Callable[[], bool], accelerator: str = "auto") -> str:
    """Lightning's ``strategy``: "auto" in one process, else "ddp", or "ddp_find_unused_parameters_true" when
    ``has_unused()`` says some trained parameters may get no gradient in a step (DDP must then look for them)."""
    if not is_distributed(devices, nodes, accelerator):
        return "auto"
    return "ddp_find_unused_parameters_true" if has_unused() else "ddp"


def sync_batchnorm(devices: Any, nodes: int, accelerator: str = "auto") -> bool:
    """Lightning's ``sync_batchnorm``: True when several processes train on GPUs, so every BatchNorm layer
    normalises with the statistics of the whole batch (all processes' samples) rather than each process's share,
    as one process training the whole batch would. torch's SyncBatchNorm runs on GPUs only: processes on CPUs
    keep their own statistics."""
    return is_distributed(devices, nodes, accelerator) and uses_gpu(accelerator)
