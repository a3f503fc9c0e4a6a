"""Detector and CLIP checkpoints for text prompts in the weights commands: they live in the Hugging Face
cache (``HF_HOME``), where ``transformers`` and ``open_clip`` look for them."""

from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from .specs import CLIP_WEIGHTS, DETECTOR_WEIGHTS, TextWeights


def text_weights(name: str) -> TextWeights | None:
    """The text-prompt checkpoint called ``name`` (``grounding-dino-tiny``, ``clip-vit-b-32``, ...), or None."""
    key = name.strip().lower()
    return DETECTOR_WEIGHTS.get(key) or CLIP_WEIGHTS.get(key)


def all_text_weights() -> list[TextWeights]:
    return [*DETECTOR_WEIGHTS.values(), *CLIP_WEIGHTS.values()]


def text_weights_path(spec: TextWeights) -> Path:
    """The folder the Hugging Face cache keeps ``spec``'s files in (present or not)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + spec.hub_id.replace("/", "--"))


def download_text_weights(spec: TextWeights, force: bool = False) -> Path:
    """Fetch ``spec``'s files into the Hugging Face cache; offline, a :class:`WeightsError` says what to place where."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.hub_id, force_download=force))
    except Exception as exc:  # the hub client raises many types (HTTP, offline mode, missing repo)
        raise WeightsError(
            f"could not download {spec.hub_id} ({type(exc).__name__}: {exc}). If this machine is offline, run "
            f"`hf download {spec.hub_id}` on one that is online and copy its cache folder "
            f"{text_weights_path(spec)} into this machine's Hugging Face cache (HF_HOME), or pass the local "
            f"folder as --detector grounding-dino:DIR / owlv2:DIR."
        ) from exc
