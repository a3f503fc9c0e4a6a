"""LoRA adapters on the image encoder's attention projections of SAM, MobileSAM and SAM 2 (via peft).

``apply_lora`` wraps every ``image_encoder...attn.qkv`` / ``attn.proj`` linear layer of a SAM ViT, TinyViT
(MobileSAM) or SAM 2 Hiera encoder with a low-rank update ``W + (alpha / rank) B A`` and freezes every
other weight; unfreeze what else should train (the mask decoder, say) afterwards. ``merge_lora`` folds
the updates into plain weights and returns a state_dict with the official key names, which the
official ``segment_anything`` / ``mobile_sam`` / ``sam2`` code and imseg load unchanged.

peft's wrapped layers are not plain ``nn.Linear`` modules, so the encoders' fast inference paths (which
read ``.weight`` directly) step aside and the adapters are always applied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from imseg.errors import ConfigError, InputError, require

#: Projections LoRA can target: the attention's fused query/key/value and its output projection.
LORA_TARGETS = ("qkv", "proj")
ADAPTER = "default"


def lora_target_names(model: nn.Module, targets: Sequence[str] = LORA_TARGETS) -> list[str]:
    """Names of the ``nn.Linear`` attention projections of ``model``'s image encoder matching ``targets``."""
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown or not targets:
        raise ConfigError(f"LoRA targets must be a non-empty subset of {list(LORA_TARGETS)}, got {list(targets)}")
    pattern = re.compile(r"(^|.*\.)attn\.(" + "|".join(map(re.escape, targets)) + r")$")
    prefix = "image_encoder." if hasattr(model, "image_encoder") else ""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(prefix) and pattern.match(name)
    ]


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] = LORA_TARGETS,
    dropout: float = 0.0,
) -> nn.Module:
    """Add LoRA adapters (in place) to the image encoder's attention ``targets``; freeze everything else.

    ``alpha`` defaults to ``rank`` (scale 1). The adapters start as a no-op (B = 0), so the model's
    outputs are unchanged until training. Works on a whole model (``image_encoder`` attribute) or on
    an encoder alone. Returns ``model``.
    """
    peft = require("peft", "lora", "LoRA fine-tuning")
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if has_lora(model):
        raise InputError("this model already has LoRA adapters: merge them (merge_lora) into a fresh model first")
    names = lora_target_names(model, targets)
    if not names:
        raise InputError(
            f"no attention projections {list(targets)} found in {type(model).__name__}'s image encoder "
            "(expected SAM ViT, TinyViT or SAM 2 Hiera blocks with attn.qkv / attn.proj)"
        )
    config = peft.LoraConfig(
        r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout, target_modules=names, bias="none"
    )
    model.requires_grad_(False)
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def has_lora(model: nn.Module) -> bool:
    """True when ``model`` holds peft LoRA layers."""
    return any(_is_lora_layer(m) for m in model.modules())


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (``...lora_A.default.weight`` / ``lora_B``): a small file to save."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain weights of ``model`` with every LoRA update folded in, under the official key names.

    ``model`` is left as it is (training can go on). The result loads with ``strict=True`` into the
    model without adapters, imseg's or the official one.
    """
    deltas = {}
    for name, module in model.named_modules():
        if _is_lora_layer(module):
            if getattr(module, "merged", False):
                raise InputError(f"{name}: LoRA weights are already merged into the base layer; unmerge them first")
            with torch.no_grad():
                deltas[f"{name}.weight"] = sum(
                    module.get_delta_weight(adapter) for adapter in module.active_adapters if adapter in module.lora_A
                )
    merged = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        value = value.detach().clone()
        if plain in deltas:
            value += deltas[plain].to(value.dtype)
        merged[plain] = value
    return merged
