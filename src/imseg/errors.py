"""Errors raised by imseg. Every message says what went wrong, where, and how to fix it."""

from __future__ import annotations


class ImsegError(Exception):
    """Base class of every error imseg raises on purpose."""


class InputError(ImsegError, ValueError):
    """An image or array given to imseg cannot be used (unreadable, empty, wrong shape, too large)."""


class PromptError(InputError):
    """Points, labels, boxes or mask prompts are malformed or outside the image."""


class StateError(ImsegError, RuntimeError):
    """An object was used in the wrong order (e.g. ``predict`` before ``set_image``)."""


class CheckpointError(ImsegError):
    """A checkpoint is missing, corrupted, or belongs to another architecture."""


class WeightsError(ImsegError):
    """Weights could not be found in the cache or downloaded (offline, bad checksum)."""


class ModelNotFoundError(ImsegError, LookupError):
    """A model name is not in the registry."""


class DatasetError(ImsegError):
    """A dataset is malformed: mismatched pairs, sizes, unknown class values, empty split."""


class ConfigError(ImsegError, ValueError):
    """A configuration value (CLI option, YAML key, keyword argument) is invalid."""


class DependencyError(ImsegError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class ExportError(ImsegError):
    """A model could not be exported or an export target is invalid."""


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`DependencyError` naming ``pip install imseg[extra]``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised via monkeypatch in tests
        raise DependencyError(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not installed. "
            f"Install it with: pip install 'imseg[{extra}]'"
        ) from exc


def describe_files(paths, limit: int = 10) -> str:
    """Format a list of offending files as 'first N ... (and K more)'."""
    paths = [str(p) for p in paths]
    shown = "\n  ".join(paths[:limit])
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"  {shown}{more}"
