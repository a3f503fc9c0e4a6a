"""Checkpoints of a run: imseg's ``best.pt``/``last.pt`` (save, load, find, rebuild the model) and the
resumable Lightning ``last.ckpt`` (read and checked before training resumes from it).

Every file loads with ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .models import build_from_config

CHECKPOINT_FORMAT = "imseg.semantic"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write an imseg checkpoint atomically: plain types + tensors only (loads with ``weights_only=True``)."""
    from ..io import atomic_path

    payload = dict(meta)
    payload["format"] = CHECKPOINT_FORMAT
    payload["version"] = CHECKPOINT_VERSION
    payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read an imseg checkpoint (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. A run directory has weights/best.pt and weights/last.pt.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an imseg semantic checkpoint (no format={CHECKPOINT_FORMAT!r}); "
            "expected weights/best.pt or weights/last.pt written by `imseg train` (a SAM checkpoint loads with "
            "imseg.load('sam-vit-b', checkpoint=PATH), or vit_l/vit_h/mobile-sam)."
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this imseg; upgrade imseg.")
    return payload


def model_from_checkpoint(payload: Mapping[str, Any]) -> torch.nn.Module:
    """Rebuild the model of a checkpoint dict and load its weights (eval mode)."""
    model = build_from_config(payload["model"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match the model {payload['model']}: {exc}") from exc
    return model.eval()


def find_checkpoint(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of a run dir: ``checkpoint`` (path, or "best"/"last"), else weights/best.pt, else last.pt."""
    path = Path(path)
    if path.is_file():
        return path
    if checkpoint is not None:
        ck = Path(checkpoint)
        if str(checkpoint) in ("best", "last"):
            ck = path / "weights" / f"{checkpoint}.pt"
        elif not ck.is_absolute() and not ck.exists():
            ck = path / ck
        if not ck.is_file():
            raise CheckpointError(f"checkpoint {checkpoint!r} not found (looked at {ck}).")
        return ck
    for candidate in (path / "weights" / "best.pt", path / "weights" / "last.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{path}: no weights/best.pt or weights/last.pt. Is this a run directory written by `imseg train`?"
    )


def read_resume_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The resumable state in ``last.ckpt`` (``weights_only=True``, tensors memory-mapped, not copied).

    A truncated, empty or foreign file (or a pickle that would run code) is a :class:`CheckpointError`
    naming the file and the ways on: the run's ``best.pt``/``last.pt`` still hold its weights.
    """
    path = Path(path)
    run_dir = path.parent.parent
    advice = (f"it cannot be resumed. Start a new run, or fine-tune from the run's saved weights with "
              f"`imseg train --init {run_dir}` (weights/best.pt or weights/last.pt).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=path.stat().st_size > 0)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or hostile files
        raise CheckpointError(f"{path}: damaged or not a training checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); {advice}") from None
    needed = ("epoch", "state_dict", "loops", "optimizer_states")
    if not isinstance(state, dict) or not all(key in state for key in needed):
        raise CheckpointError(f"{path}: not a resumable checkpoint written by `imseg train` (it lacks "
                              f"{', '.join(needed)}); {advice}")
    return state
