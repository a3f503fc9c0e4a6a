"""Build SAM models from a variant name and load official checkpoints (strict, ``weights_only``)."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .model import Sam
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

#: registry model name of each variant (for messages: ``imseg weights download NAME``)
VARIANT_MODEL_NAMES = {"vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h", "vit_t": "mobile-sam"}


@dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM variant. ``encoder`` is "vit" or "tiny_vit"."""

    variant: str
    encoder: str = "vit"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    img_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    tiny_vit: dict[str, Any] = field(default_factory=dict)


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig("vit_b", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamConfig("vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig("vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "vit_t": SamConfig("vit_t", encoder="tiny_vit", embed_dim=320, depth=12, num_heads=10, global_attn_indexes=()),
}
ALIASES = {"default": "vit_h", "sam-vit-b": "vit_b", "sam-vit-l": "vit_l", "sam-vit-h": "vit_h", "mobile-sam": "vit_t"}


def get_config(variant: str, **overrides: Any) -> SamConfig:
    """Config of ``variant`` (vit_b, vit_l, vit_h, vit_t, default), with optional field overrides
    (e.g. ``depth=2, global_attn_indexes=(1,)`` for a reduced test model)."""
    key = ALIASES.get(variant, variant)
    if key not in CONFIGS:
        raise CheckpointError(f"unknown SAM variant {variant!r}; expected one of {sorted(CONFIGS)} or 'default'.")
    return replace(CONFIGS[key], **overrides) if overrides else CONFIGS[key]


def build_model(config: SamConfig) -> Sam:
    """A randomly initialised :class:`Sam` of ``config``, in eval mode."""
    grid = config.img_size // config.patch_size
    if config.encoder == "tiny_vit":
        encoder: torch.nn.Module = TinyViT(img_size=config.img_size, **config.tiny_vit)
    else:
        encoder = ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            global_attn_indexes=tuple(config.global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=config.prompt_embed_dim, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    sam.variant = config.variant
    return sam.eval()


def detect_variant(state_dict: dict[str, Any]) -> str:
    """Name the architecture a state_dict belongs to: vit_b/l/h, vit_t, or a description."""
    if any(k.startswith("image_encoder.layers.") for k in state_dict):
        return "vit_t"
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None or not hasattr(patch, "shape"):
        return "not a SAM checkpoint"
    dim = int(patch.shape[0])
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, cfg in CONFIGS.items():
        if cfg.encoder == "vit" and cfg.embed_dim == dim and cfg.depth == depth:
            return name
    return f"custom ViT (embed_dim {dim}, depth {depth})"


def _how_to_get(variant: str) -> str:
    name = VARIANT_MODEL_NAMES.get(variant, "sam-vit-b")
    return f"`imseg weights download {name}` (or pass --checkpoint PATH / checkpoint=PATH)"


def key_mismatches(own: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state_dict`` from loading strictly into a model whose state_dict is ``own``: missing and
    unexpected keys and shape mismatches, each described with examples (empty when it loads)."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state_dict[k].shape)} vs "
                     f"model {tuple(own[k].shape)})")
    return parts


def load_checkpoint_file(path: str | os.PathLike, how_to_get: str, example: str) -> Any:
    """The object a checkpoint file holds, loaded on CPU with ``weights_only=True``; a missing, empty or
    unreadable file is a :class:`CheckpointError` that says how to get the file (``how_to_get``) and quotes
    PyTorch's message whole. ``example`` names an official file in the directory message."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file not found. Get the official weights with {how_to_get}.")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; pass the checkpoint file (e.g. {example}).")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file (0 bytes), not a checkpoint. Download it again with {how_to_get}.")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, AttributeError, ImportError,
            IndexError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{p}: cannot be read as a PyTorch checkpoint; the file is corrupted, truncated or not a checkpoint. "
            f"Download it again with {how_to_get}. PyTorch said: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:  # pickle.UnpicklingError and friends from weights_only loading
        raise CheckpointError(
            f"{p}: not a loadable weights-only checkpoint. Use the official file or re-save it as a plain "
            f"state_dict. PyTorch said: {type(exc).__name__}: {exc}"
        ) from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file's state_dict on CPU with ``weights_only=True``; clear errors otherwise."""
    p = Path(path)
    obj = load_checkpoint_file(p, "`imseg weights download sam-vit-b` (or mobile-sam, sam-vit-l, sam-vit-h) or "
                                  "pass --checkpoint PATH to an existing file", "sam_vit_b_01ec64.pth")
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):  # common wrappers around a state_dict
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: contains a {type(obj).__name__}, not a state_dict of tensors; it is not a "
                              f"SAM checkpoint.")
    return strip_wrapper_prefix(obj)


#: top-level names of a SAM state_dict; a first key component shared by every key that is not one of these is
#: a wrapper's prefix ("module." from DistributedDataParallel/DataParallel, "_orig_mod." from torch.compile)
_SAM_TOP_LEVEL = {"image_encoder", "prompt_encoder", "mask_decoder", "pixel_mean", "pixel_std"}


def strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a prefix that every key carries (``module.``, ``_orig_mod.``, nested ones too) when what is left is
    SAM's layout; a prefix on only some keys is ambiguous and is left for :func:`load_into` to report."""
    stripped = state_dict
    while all("." in key for key in stripped):
        heads = {key.split(".", 1)[0] for key in stripped}
        if len(heads) != 1 or heads & _SAM_TOP_LEVEL:
            break
        stripped = {key.split(".", 1)[1]: value for key, value in stripped.items()}
    if stripped is not state_dict and {key.split(".", 1)[0] for key in stripped} & _SAM_TOP_LEVEL:
        return stripped
    return state_dict


def _prefix_hint(state_dict: dict[str, torch.Tensor]) -> str:
    """How to fix keys of which only some carry a wrapper prefix (``module.image_encoder...`` next to
    ``image_encoder...``); empty when that is not the case."""
    wrapped = sorted({key.split(".", 1)[0] + "." for key in state_dict
                      if key.split(".", 1)[0] not in _SAM_TOP_LEVEL and "." in key
                      and key.split(".", 1)[1].split(".", 1)[0] in _SAM_TOP_LEVEL})
    if not wrapped:
        return ""
    head = wrapped[0]
    count = sum(key.startswith(head) for key in state_dict)
    return (f" {count} of its {len(state_dict)} keys carry the prefix {head!r} (a DistributedDataParallel/"
            f"DataParallel or torch.compile save) and the others do not, so which weights are meant is ambiguous; "
            f"re-save it with one layout, e.g. {{k.removeprefix({head!r}): v for k, v in sd.items()}} if the "
            f"prefixed keys are the ones to keep.")


def _describe_keys(state_dict: dict[str, torch.Tensor]) -> str:
    """'module. (300 of 310), ...': the commonest first key components, to show what the file holds."""
    from collections import Counter

    counts = Counter(key.split(".", 1)[0] + ("." if "." in key else "") for key in state_dict)
    return ", ".join(f"{head} ({n} of {len(state_dict)})" for head, n in counts.most_common(4))


def load_into(model: Sam, state_dict: dict[str, torch.Tensor], expected: str, where: str = "checkpoint") -> Sam:
    """Strictly load ``state_dict`` into ``model``; name the variant on a mismatch. A prefix on every key
    (``module.`` from DistributedDataParallel) is removed first."""
    state_dict = strip_wrapper_prefix(state_dict)
    detected = detect_variant(state_dict)
    if detected.startswith("not"):
        raise CheckpointError(
            f"{where}: not a SAM checkpoint (no image_encoder weights among its {len(state_dict)} tensors: "
            f"its keys start with {_describe_keys(state_dict)}).{_prefix_hint(state_dict)} The model being built "
            f"is {expected}. Get the official file with {_how_to_get(expected)}."
        )
    if expected in CONFIGS and detected != expected and detected in CONFIGS:
        raise CheckpointError(
            f"{where}: this checkpoint is for {detected}, but the model being built is {expected}. Pass a "
            f"{expected} checkpoint (e.g. `imseg weights download {VARIANT_MODEL_NAMES[expected]}`) or choose "
            f"the matching model (--model {VARIANT_MODEL_NAMES.get(detected, detected)})."
        )
    parts = key_mismatches(model.state_dict(), state_dict)
    if parts:
        raise CheckpointError(
            f"{where}: does not match the {expected} architecture (detected: {detected}): " + "; ".join(parts)
            + "." + (_prefix_hint(state_dict) or " Pass the official checkpoint for this model.")
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def build_sam(variant: str = "vit_b", checkpoint: str | os.PathLike | None = None, **overrides: Any) -> Sam:
    """Build ``variant`` and, if given, load an official checkpoint into it."""
    config = get_config(variant, **overrides)
    model = build_model(config)
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), config.variant, where=str(checkpoint))
    return model


def missing_weights_message(variant: str) -> str:
    return f"no checkpoint given and none in the weights cache for {variant}. Get it with {_how_to_get(variant)}."
