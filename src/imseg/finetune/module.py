"""The LightningModule of SAM fine-tuning: which weights train, the optimizer (AdamW, warm-up + cosine,
layer-wise decay of the encoder's learning rate), the train step (:mod:`.recipe`) and box-prompt validation."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .recipe import Recipe

TRAIN_MODES = ("decoder", "decoder+prompt", "lora", "all")

__all__ = ["TRAIN_MODES", "box_iou_of_image", "box_prompt_masks", "make_module", "sam_box_ious", "sam_box_masks",
           "sam_embed", "sam_embed_batch", "set_trainable", "trains_encoder_norms"]


def set_trainable(model: torch.nn.Module, train: str, lora_rank: int = 8) -> bool:
    """Freeze what ``train`` leaves alone; True when the image encoder is frozen (its outputs can be cached).
    ``lora`` adds rank-``lora_rank`` adapters to the encoder's attention projections (only they train there)."""
    if train not in TRAIN_MODES:
        raise ConfigError(f"--train must be one of {', '.join(TRAIN_MODES)}; got {train!r}.")
    from .families import family_of

    return family_of(model).set_trainable(model, train, lora_rank)


def train_heads(model: torch.nn.Module, train: str, lora_rank: int, decoder: torch.nn.Module,
                prompt_encoder: torch.nn.Module) -> bool:
    """What every family's ``train`` mode shares: LoRA adapters (``lora``) or the whole model (``all``) or nothing
    trains, and then the mask ``decoder`` and (unless ``decoder``) the ``prompt_encoder`` do. True when the image
    encoder is frozen."""
    if train == "lora":
        from ..sam.lora import apply_lora

        apply_lora(model, rank=lora_rank)  # freezes everything but the adapters
    else:
        model.requires_grad_(train == "all")
    decoder.requires_grad_(True)
    if train != "decoder":
        prompt_encoder.requires_grad_(True)
    return train in ("decoder", "decoder+prompt")


def set_trainable_sam(model: torch.nn.Module, train: str, lora_rank: int = 8) -> bool:
    """:func:`set_trainable` for SAM and MobileSAM."""
    return train_heads(model, train, lora_rank, model.mask_decoder, model.prompt_encoder)


def _encoder_depth(name: str) -> tuple[int, int] | None:
    """(layer index, layer count) position of an image-encoder parameter for layer-wise decay."""
    m = re.match(r"image_encoder\.(?:trunk\.)?(?:blocks|layers)\.(\d+)\.", name)
    return (int(m.group(1)) + 1, 0) if m else None


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: decoder and prompt encoder at ``lr``; encoder layer i of n at ``lr * layer_decay**(n + 1 - i)``
    (the patch embedding deepest in decay, the neck at ``lr``); no weight decay on biases and norms."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths = [d[0] for n, _ in named if (d := _encoder_depth(n))]
    n_layers = max(depths, default=0)
    groups: dict[tuple[float, float], list] = {}
    for name, param in named:
        scale = 1.0
        if name.startswith("image_encoder."):
            d = _encoder_depth(name)
            layer = d[0] if d else (0 if ("patch_embed" in name or "pos_embed" in name) else n_layers + 1)
            scale = layer_decay ** (n_layers + 1 - layer)
        decay = 0.0 if param.ndim <= 1 or name.endswith(".bias") else weight_decay
        groups.setdefault((scale, decay), []).append(param)
    return [{"params": ps, "lr": lr * s, "weight_decay": wd, "lr_scale": s} for (s, wd), ps in groups.items()]


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


@torch.no_grad()
def box_prompt_masks(model: Any, embedding: torch.Tensor, item: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each object's mask predicted from its tight box (one output): ((K, H, W) bool at the original image size,
    (K, 4) boxes x0, y0, x1, y1 at the input geometry)."""
    from ..sam.clicks import mask_to_box

    boxes = mask_to_box(item["masks"][:, None] > 0.5)[:, 0].float().to(embedding.device)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    low, _ = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, False)
    masks = model.postprocess_masks(low.float(), item["input_size"], item["original_size"])[:, 0] > 0
    return masks.cpu().numpy(), boxes.cpu().numpy()


def box_iou_of_image(model: Any, embedding: torch.Tensor, item: dict) -> list[float]:
    """IoU of each object's mask from its tight box (one output), at the original image size."""
    full = item["full_masks"]
    if not len(full):
        return []
    masks, _ = box_prompt_masks(model, embedding, item)
    return [_iou(m, g) for m, g in zip(masks, full, strict=True)]


def sam_box_masks(model: Any, embedding: torch.Tensor, item: dict) -> tuple[np.ndarray, np.ndarray]:
    """Box-prompt masks at the original size and their boxes in image pixels (for overlays)."""
    masks, boxes = box_prompt_masks(model, embedding.float(), item)
    return masks, boxes * (max(item["original_size"]) / max(item["input_size"]))


def sam_box_ious(model: Any, embedding: torch.Tensor, item: dict) -> list[float]:
    return box_iou_of_image(model, embedding.float(), item)


def trains_encoder_norms(train: str, start: str) -> bool:
    """Whether the image encoder's BatchNorm layers train (batch statistics) rather than stay in eval mode.

    A pretrained encoder keeps its learned statistics (eval mode: a step's few images would only add noise to
    them). A random encoder trained whole has no statistics worth keeping: in eval mode its BatchNorm layers
    (TinyViT's convolutions) would normalise with the initial mean 0 / variance 1 and leave the activations
    unnormalised, and such a network barely learns (box-prompt IoU flat near the filled box's on horses)."""
    return train == "all" and start == "random initialisation"


def sam_embed_batch(module: Any, items: list[dict]) -> list[torch.Tensor]:
    """Each item's (1, C, g, g) embedding from one pass of the (trained, so uncached) encoder over the stacked
    images."""
    if not items:
        return []
    model = module.model
    module.encoder_calls += len(items)
    x = torch.cat([model.preprocess(item["image"][None].to(module.device)) for item in items])
    return list(model.image_encoder(x).split(1))


def sam_embed(module: Any, item: dict) -> torch.Tensor:
    """(1, C, g, g): the cached embedding, else the encoder's (cached when the encoder is frozen)."""
    if "embedding" in item:
        return item["embedding"][None].to(module.device)
    module.encoder_calls += 1
    model = module.model
    x = model.preprocess(item["image"][None].to(module.device))
    if not module.frozen:
        return model.image_encoder(x)
    with torch.no_grad():
        emb = model.image_encoder(x)
    if module.cache is not None:
        module.cache.put(item["key"], emb[0], item["input_size"], item["original_size"])
    return emb


def _gathered_iou_sum(module: Any) -> tuple[float, int]:
    """(sum of IoUs, object count) over the whole validation set under DDP: each rank validated a shard, and the
    distributed sampler repeats images to even the shards out, so per-image results are gathered by index and an
    image seen by several ranks counts once (the weights are the same on every rank, so are its IoUs)."""
    n = len(module.trainer.val_dataloaders.dataset)
    local = torch.zeros(3, n, dtype=torch.float64, device=module.device)  # IoU sum, objects, seen
    for index, ious in module.val_images.items():
        local[:, index] = torch.tensor([float(np.sum(ious)), len(ious), 1.0], dtype=torch.float64)
    every = module.all_gather(local)  # (world, 3, n)
    seen = every[:, 2].sum(0).clamp(min=1.0)
    total, objects = (every[:, :2].sum(0) / seen).sum(1).tolist()
    return float(total), int(round(objects))


def make_module(L: Any):
    """The LightningModule class (built lazily: Lightning is imported only when training)."""

    class FinetuneModule(L.LightningModule):
        def __init__(self, model: torch.nn.Module, cfg: dict, cache: Any = None, frozen: bool = True,
                     encoder_norms: bool = False) -> None:
            super().__init__()
            from .families import family_of

            self.model, self.cfg, self.cache, self.frozen = model, cfg, cache, frozen
            self.encoder_norms = encoder_norms  # see trains_encoder_norms
            self.family = family_of(model)
            self.recipe = Recipe(prompts=tuple(cfg["prompts"]), clicks=cfg["clicks"], max_objects=cfg["max_objects"],
                                 loss=cfg["loss"])
            self.encoder_calls = 0
            self.validated_at = -1  # global step of the last validation
            self.val_ious: list[float] = []
            self.val_images: dict[int, list[float]] = {}
            self.val_metrics: dict[str, float] = {}

        def on_train_epoch_start(self) -> None:
            # a pretrained encoder stays in eval mode (its BatchNorm statistics are kept); see trains_encoder_norms
            self.model.train()
            self.model.image_encoder.train(self.encoder_norms)

        def embed(self, item: dict) -> Any:
            """The decoder's image features of ``item`` (SAM: the (1, C, g, g) embedding), cached ones if any."""
            return self.family.embed(self, item)

        def embed_all(self, items: list[dict]) -> list[Any]:
            """Features of every item: a trained encoder runs once on the stacked images where the family can."""
            if self.frozen or self.family.embed_batch is None:
                return [self.embed(item) for item in items]
            return self.family.embed_batch(self, items)

        def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
            gen = torch.Generator().manual_seed(self.cfg["seed"] * 1_000_003 + int(self.global_step))
            losses, stats = [], []
            batch = [item for item in batch if len(item["masks"])]  # an image without objects gives no prompt
            for item, features in zip(batch, self.embed_all(batch), strict=True):
                gt = item["masks"]
                if len(gt) > self.recipe.max_objects:
                    gt = gt[torch.randperm(len(gt), generator=gen)[: self.recipe.max_objects]]
                loss, stat = self.family.rounds(self.model, features, gt.to(self.device), self.recipe, gen)
                losses.append(loss)
                stats.append(stat)
            if not losses:  # every image of this batch is empty: a zero loss that still touches the weights
                decoder = getattr(self.model, self.family.decoder)
                return sum(p.sum() * 0.0 for p in decoder.parameters())
            loss = torch.stack(losses).mean()
            # sync_dist: the epoch values are means over every rank's steps
            self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(losses),
                     sync_dist=True)
            self.log("train/iou", float(np.mean([s["iou_round0"] for s in stats])), on_step=False, on_epoch=True,
                     batch_size=len(losses), sync_dist=True)
            return loss

        def on_validation_epoch_start(self) -> None:
            self.val_ious = []
            self.val_images: dict[int, list[float]] = {}  # validation-set index -> its objects' IoUs

        def validation_step(self, batch: list[dict], batch_idx: int) -> None:
            for item in batch:
                if len(item["full_masks"]):
                    features = self.embed(item)
                    with torch.autocast(self.device.type, enabled=False):
                        ious = self.family.box_ious(self.model, features, item)
                    self.val_ious += ious
                    self.val_images[int(item["index"])] = ious

        def on_validation_epoch_end(self) -> None:
            total, objects = _gathered_iou_sum(self) if self.trainer.world_size > 1 else (
                float(np.sum(self.val_ious)), len(self.val_ious))
            miou = total / objects if objects else float("nan")
            self.val_metrics = {"box_miou": miou, "objects": objects}
            self.validated_at = int(self.global_step)
            self.log("val/box_miou", miou, prog_bar=True, sync_dist=True)  # the same on every rank

        def configure_optimizers(self):
            cfg = self.cfg
            groups = param_groups(self.model, cfg["lr"], cfg["weight_decay"], cfg["layer_decay"])
            opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.999))
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            per_epoch = max(total // max(int(self.trainer.max_epochs or 1), 1), 1)
            warmup = int(round(cfg["warmup"] * per_epoch))

            def factor(step: int) -> float:
                if warmup and step < warmup:
                    return (step + 1) / warmup
                progress = min((step - warmup) / max(total - warmup, 1), 1.0)
                return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

            return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}]

    return FinetuneModule
