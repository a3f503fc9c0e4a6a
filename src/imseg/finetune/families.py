"""What differs between fine-tuning SAM (and MobileSAM) and SAM 2.1, behind one interface chosen from the model:
how an item becomes decoder features, the train-time rounds, box-prompt validation, which weights train, the data
set's geometry, the mask decoder, and which weights the cached features depend on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Family", "family_of"]


@dataclass(frozen=True)
class Family:
    name: str
    embed: Callable[..., Any]  # (module, item) -> features; cached when the encoder is frozen
    rounds: Callable[..., Any]  # (model, features, gt, recipe, generator) -> (loss, stats)
    box_ious: Callable[..., list]  # (model, features, item) -> IoU per object from its tight box
    box_masks: Callable[..., Any]  # (model, features, item) -> (masks at the original size, boxes in image pixels)
    set_trainable: Callable[..., bool]  # (model, train, lora_rank) -> encoder frozen
    dataset: type
    decoder: str  # attribute of the mask decoder
    cache_tag: str  # prefix of the embedding-cache key
    cached_weights: Callable[[Any], dict]  # (model) -> the tensors the cached features depend on
    embed_batch: Callable[..., list] | None = None  # (module, items) -> features of each, one encoder pass


def family_of(model: Any) -> Family:
    if hasattr(model, "sam_mask_decoder"):
        from . import sam2_recipe, sam2_run

        return Family("sam2", sam2_recipe.sam2_embed, sam2_recipe.sam2_rounds, sam2_recipe.sam2_box_ious,
                      sam2_recipe.sam2_box_masks, sam2_run.set_trainable_sam2, sam2_recipe.Sam2FinetuneDataset,
                      "sam_mask_decoder", "sam2-", sam2_recipe.encoder_side_state)
    from . import module, recipe
    from .dataset import FinetuneDataset

    return Family("sam", module.sam_embed, recipe.interactive_rounds, module.sam_box_ious, module.sam_box_masks,
                  module.set_trainable_sam, FinetuneDataset, "mask_decoder", "", lambda m: m.image_encoder.state_dict(),
                  module.sam_embed_batch)
