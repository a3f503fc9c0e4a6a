"""Segmentation losses and weighted combinations parsed from strings (``"ce+dice"``, ``"0.5*ce+1.0*dice"``).

Every loss takes ``logits`` (B, C, H, W) and ``target`` (B, H, W) int64 class ids. With C == 1 the
losses work in binary mode (sigmoid, target in {0, 1}); with C >= 2 in multiclass mode (softmax).
Pixels equal to ``ignore_index`` contribute nothing. Terms come from ``segmentation_models_pytorch.losses``
except cross-entropy (``torch.nn.functional.cross_entropy``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, DatasetError

LOSS_NAMES = ("ce", "bce", "dice", "focal", "lovasz", "tversky", "jaccard")
_ALIASES = {"cross_entropy": "ce", "crossentropy": "ce", "iou": "jaccard", "lovasz_softmax": "lovasz"}
_TERM = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z_]+)\s*$")


def parse_loss(spec: str | Mapping[str, float]) -> list[tuple[float, str]]:
    """``"0.5*ce+dice"`` -> ``[(0.5, "ce"), (1.0, "dice")]``; a mapping ``{"ce": 0.5}`` also works."""
    if isinstance(spec, Mapping):
        items = [(float(w), str(n).lower()) for n, w in spec.items()]
    else:
        items = []
        for part in str(spec).lower().split("+"):
            match = _TERM.match(part)
            if not match:
                raise ConfigError(
                    f"cannot parse loss term {part.strip()!r} in {spec!r}; write terms like 'ce+dice' or "
                    f"'0.5*ce+1.0*dice' using {', '.join(LOSS_NAMES)}."
                )
            items.append((float(match["weight"] or 1.0), match["name"]))
    out = []
    for weight, name in items:
        name = _ALIASES.get(name, name)
        if name not in LOSS_NAMES:
            raise ConfigError(f"unknown loss {name!r} in {spec!r}; choose from {', '.join(LOSS_NAMES)}.")
        if weight < 0:
            raise ConfigError(f"loss weight must be >= 0, got {weight} for {name!r}")
        out.append((weight, name))
    if not out:
        raise ConfigError(f"empty loss specification {spec!r}")
    return out


class CrossEntropy(nn.Module):
    """Softmax CE (multiclass) or BCE-with-logits (binary), ignoring ``ignore_index`` pixels."""

    def __init__(self, binary: bool, ignore_index: int | None, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.binary = binary
        self.ignore_index = ignore_index
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.binary:
            ignore = -100 if self.ignore_index is None else self.ignore_index
            return nn.functional.cross_entropy(logits, target, weight=self.weight, ignore_index=ignore)
        logits = logits[:, 0]
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        if self.weight is not None:  # (w_background, w_foreground) -> per-pixel weights
            pixel_w = torch.where(target == 1, self.weight[-1], self.weight[0])
        else:
            pixel_w = torch.ones_like(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits, (target == 1).to(logits.dtype), weight=pixel_w * valid, reduction="sum"
        )
        return loss / valid.sum().clamp_min(1)


def _smp_term(name: str, binary: bool, ignore_index: int | None, class_weights: Sequence[float] | None) -> nn.Module:
    from segmentation_models_pytorch import losses as L

    mode = L.BINARY_MODE if binary else L.MULTICLASS_MODE
    cw = list(class_weights) if class_weights is not None else None
    if name == "dice":
        return L.DiceLoss(mode, ignore_index=ignore_index, class_weights=cw)
    if name == "focal":
        return L.FocalLoss(mode, ignore_index=ignore_index)
    if name == "lovasz":
        return L.LovaszLoss(mode, ignore_index=ignore_index)
    if name == "tversky":
        return L.TverskyLoss(mode, ignore_index=ignore_index, alpha=0.3, beta=0.7)
    if name == "jaccard":
        return L.JaccardLoss(mode, ignore_index=ignore_index)
    raise ConfigError(f"unknown loss {name!r}")  # pragma: no cover - parse_loss filters names


class SegmentationLoss(nn.Module):
    """Weighted sum of loss terms; ``last_terms`` holds each term's (detached) value from the last call."""

    def __init__(
        self,
        spec: str | Mapping[str, float] = "ce+dice",
        num_classes: int = 2,
        ignore_index: int | None = 255,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.binary = num_classes == 1
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if class_weights is not None and len(class_weights) != max(num_classes, 2):
            raise ConfigError(
                f"class_weights has {len(class_weights)} entries, expected {max(num_classes, 2)} (one per class)"
            )
        self.weights: list[float] = []
        self.names: list[str] = []
        terms = []
        for weight, name in parse_loss(spec):
            if name == "bce" and not self.binary:
                raise ConfigError("loss 'bce' is for binary models (num_classes=1); use 'ce' for multiclass models.")
            if name in ("ce", "bce"):
                terms.append(CrossEntropy(self.binary, ignore_index, class_weights))
            else:
                terms.append(_smp_term(name, self.binary, ignore_index, class_weights))
            self.weights.append(weight)
            self.names.append(name)
        self.terms = nn.ModuleList(terms)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, C, H, W) float, target (B, H, W) int64 -> scalar loss."""
        if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
            raise DatasetError(
                f"loss expects logits (B, C, H, W) and target (B, H, W) of the same size; got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}"
            )
        target = target.long()
        valid = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        if not bool(valid.any()):
            return logits.sum() * 0.0
        top = int(target[valid].max())
        if top >= max(self.num_classes, 2) or int(target[valid].min()) < 0:
            raise DatasetError(
                f"mask contains class value {top} but the model has {self.num_classes} output classes "
                f"(ignore_index={self.ignore_index}). Check the dataset's class list or mask encoding."
            )
        total = logits.new_zeros(())
        self.last_terms = {}
        for weight, name, term in zip(self.weights, self.names, self.terms, strict=True):
            value = term(logits, target)
            self.last_terms[name] = value.detach()
            total = total + weight * value
        return total


def build_loss(
    spec: str | Mapping[str, float] = "ce+dice",
    num_classes: int = 2,
    ignore_index: int | None = 255,
    class_weights: Sequence[float] | None = None,
) -> SegmentationLoss:
    """Loss from a spec string such as ``"ce"``, ``"ce+dice"``, ``"0.5*focal+lovasz"``."""
    return SegmentationLoss(spec, num_classes, ignore_index, class_weights)
