"""Decoupled distillation of SAM's image encoder into TinyViT (MobileSAM's recipe).

The student (a TinyViT image encoder) learns to reproduce the teacher's image embeddings with a mean
squared error; the prompt encoder and mask decoder are the teacher's, unchanged. Teacher embeddings are
computed once per image and cached on disk, keyed by the image content, the input size and the
teacher's weights (sha256 of its checkpoint file, else of its tensors), so later runs with the same
teacher and images skip the teacher entirely. The result is a checkpoint in MobileSAM's official
layout (a plain state_dict: student ``image_encoder.*`` + teacher ``prompt_encoder.*``/``mask_decoder.*``),
which ``imseg.load("mobile-sam", checkpoint=...)`` and ``mobile_sam.sam_model_registry["vit_t"]`` load.

The input size (``img_size``, default the teacher's) sets the embedding grid (``img_size / 16``); the
encoder weights do not depend on it, so a student distilled at a reduced size loads at 1024.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, ConfigError, InputError

CHECKPOINT_NAME = "mobile_sam.pt"


@dataclass
class DistillResult:
    """What :func:`distill_sam_encoder` produced: the checkpoint path and per-epoch mean squared errors."""

    checkpoint: Path
    train_mse: list[float] = field(default_factory=list)
    val_mse: list[float] = field(default_factory=list)  # val_mse[0]: before training, then one per epoch
    teacher_computed: int = 0  # embeddings the teacher computed (the rest came from the cache)


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict's names, shapes, dtypes and values (order-independent)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_key(rgb: np.ndarray, img_size: int) -> str:
    """Cache key of one image at one input size: sha256 of its decoded RGB pixels and shape."""
    digest = hashlib.sha256(f"{rgb.shape}:{img_size};".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def encoder_input(rgb: np.ndarray, img_size: int, sam) -> torch.Tensor:
    """SAM's preprocessing of an RGB uint8 image: (1, 3, img_size, img_size), longest side resized, normalised,
    zero-padded (as ``SamPredictor.set_image``)."""
    from .sam.transforms import ResizeLongestSide

    resized = np.array(ResizeLongestSide(img_size).apply_image(rgb))
    x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    x = (x - sam.pixel_mean.cpu()) / sam.pixel_std.cpu()
    return torch.nn.functional.pad(x, (0, img_size - x.shape[3], 0, img_size - x.shape[2]))


class TeacherCache:
    """Teacher embeddings on disk: ``root/<teacher hash[:16]>/<image key>.pt`` ((C, g, g) float32 tensors)."""

    def __init__(self, root: str | os.PathLike, teacher, teacher_hash: str, img_size: int, device: torch.device) -> None:
        self.dir = Path(root) / teacher_hash[:16]
        self.teacher, self.img_size, self.device = teacher, int(img_size), device
        self.computed = 0

    def embedding(self, rgb: np.ndarray) -> torch.Tensor:
        from .io import atomic_path

        path = self.dir / f"{image_key(rgb, self.img_size)}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a torn or foreign cache file is recomputed, never trusted
                path.unlink(missing_ok=True)
        with torch.no_grad():
            x = encoder_input(rgb, self.img_size, self.teacher).to(self.device)
            emb = self.teacher.image_encoder(x)[0].float().cpu().contiguous()
        with atomic_path(path) as tmp:
            torch.save(emb, tmp)
        self.computed += 1
        return emb


def _check_sam(model, name: str) -> None:
    if not all(hasattr(model, a) for a in ("image_encoder", "prompt_encoder", "mask_decoder")):
        raise ConfigError(f"{name} must be a SAM model (imseg.sam Sam, e.g. build_sam('vit_b', checkpoint)), "
                          f"got {type(model).__name__}.")


def _check_student(student) -> None:
    from .sam.tiny_vit import TinyViT

    _check_sam(student, "student")
    if not isinstance(student.image_encoder, TinyViT):
        raise ConfigError(f"the student's image encoder must be TinyViT (MobileSAM, variant vit_t), got "
                          f"{type(student.image_encoder).__name__}.")


def build_student(teacher, img_size: int, checkpoint: str | os.PathLike | None = None):
    """A MobileSAM (vit_t) at ``img_size``: its encoder from ``checkpoint`` (else random), the prompt encoder
    and mask decoder the teacher's."""
    from .sam.checkpoint import build_model, get_config, load_into, read_state_dict

    student = build_model(get_config("vit_t", img_size=int(img_size)))
    if checkpoint is not None:
        load_into(student, read_state_dict(checkpoint), "vit_t", where=str(checkpoint))
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    return student


def official_state_dict(teacher, student) -> dict[str, torch.Tensor]:
    """MobileSAM's layout: ``image_encoder.*`` from the student, ``prompt_encoder.*``/``mask_decoder.*`` from
    the teacher (plain CPU tensors)."""
    out = {f"image_encoder.{k}": v for k, v in student.image_encoder.state_dict().items()}
    out.update({f"prompt_encoder.{k}": v for k, v in teacher.prompt_encoder.state_dict().items()})
    out.update({f"mask_decoder.{k}": v for k, v in teacher.mask_decoder.state_dict().items()})
    return {k: v.detach().cpu().clone() for k, v in out.items()}


def _image_paths(images: Any, what: str) -> list[Path]:
    """The image files of ``images``; they are read when used, so large sets need no memory."""
    from .io import list_images

    paths = list_images(images)
    if not paths:
        raise InputError(f"{what}: no images found in {images!r}; pass a folder, a glob or a list of image files.")
    return paths


def embedding_mse(student, cache: TeacherCache, images: list[Path], device: torch.device) -> float:
    """Mean squared error between the student's and the (cached) teacher's embeddings over ``images``."""
    from .io import read_image

    student.image_encoder.eval()
    total = 0.0
    with torch.no_grad():
        for path in images:
            rgb = read_image(path)
            pred = student.image_encoder(encoder_input(rgb, cache.img_size, student).to(device))[0]
            total += float(torch.nn.functional.mse_loss(pred.float().cpu(), cache.embedding(rgb)))
    return total / len(images)


def distill_sam_encoder(teacher, student, images: Any, epochs: int, out_dir: str | os.PathLike, *,
                        val_images: Any = None, lr: float = 1e-3, batch_size: int = 1, img_size: int | None = None,
                        teacher_checkpoint: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                        device: str = "auto", seed: int = 0, log=None) -> DistillResult:
    """Train ``student``'s TinyViT encoder to reproduce ``teacher``'s image embeddings (MSE), save MobileSAM.

    Args:
        teacher: a SAM model (any variant) whose ``image_encoder`` gives (B, 256, g, g) embeddings.
        student: a vit_t SAM model, or None for a random TinyViT (:func:`build_student`).
        images: training images (folder, glob or list of files). ``val_images``: held-out images whose MSE is
            reported before training and after each epoch.
        epochs: passes over ``images``; AdamW at ``lr`` with a cosine schedule, ``batch_size`` images a step.
        out_dir: gets ``mobile_sam.pt`` (official layout) and ``metrics.csv``.
        img_size: encoder input size (default the teacher's); a multiple of 64 keeps TinyViT's grid exact.
        teacher_checkpoint: the teacher's file, hashed for the cache key (else its tensors are hashed).
        cache_dir: teacher embedding cache root (default ``<imseg cache>/distill``).
    """
    from .io import atomic_path, read_image
    from .registry import cache_dir as imseg_cache
    from .registry import sha256_file
    from .sam.segmenter import resolve_device

    if int(epochs) < 1 or int(batch_size) < 1 or not lr > 0:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0; got epochs={epochs}, "
                          f"batch_size={batch_size}, lr={lr}.")
    _check_sam(teacher, "teacher")
    dev = resolve_device(device)
    img_size = int(img_size or teacher.image_encoder.img_size)
    if img_size % 64:
        raise ConfigError(f"img_size must be a multiple of 64 (TinyViT's stages halve it to 1/16), got {img_size}.")
    teacher = teacher.eval().to(dev)
    if img_size != teacher.image_encoder.img_size:
        raise ConfigError(f"img_size {img_size} differs from the teacher's input size {teacher.image_encoder.img_size}; "
                          "build the teacher at that size (get_config(variant, img_size=...)).")
    student = build_student(teacher, img_size) if student is None else student
    _check_student(student)
    if student.image_encoder.img_size != img_size:
        raise ConfigError(f"the student takes {student.image_encoder.img_size}-pixel inputs, the teacher {img_size}; "
                          "build both at the same size.")
    student = student.to(dev)
    digest = sha256_file(teacher_checkpoint) if teacher_checkpoint else tensors_sha256(teacher.state_dict())
    cache = TeacherCache(cache_dir or imseg_cache() / "distill", teacher, digest, img_size, dev)
    train = _image_paths(images, "images")
    val = _image_paths(val_images, "val_images") if val_images is not None else []
    _check_grid(student, cache, read_image(train[0]), dev)
    result = DistillResult(Path(out_dir) / CHECKPOINT_NAME)
    if val:
        result.val_mse.append(embedding_mse(student, cache, val, dev))
    _train(student, cache, train, val, int(epochs), float(lr), int(batch_size), dev, seed, result, log)
    with atomic_path(result.checkpoint) as tmp:
        torch.save(official_state_dict(teacher, student), tmp)
    _write_metrics(Path(out_dir) / "metrics.csv", result)
    result.teacher_computed = cache.computed
    return result


def _check_grid(student, cache: TeacherCache, rgb: np.ndarray, dev: torch.device) -> None:
    target = cache.embedding(rgb)
    with torch.no_grad():
        pred = student.image_encoder.eval()(encoder_input(rgb, cache.img_size, student).to(dev))[0]
    if tuple(pred.shape) != tuple(target.shape):
        raise CheckpointError(f"the teacher's embeddings are {tuple(target.shape)} but the student's "
                              f"{tuple(pred.shape)}; the student must produce the teacher's embedding grid.")


def _train(student, cache: TeacherCache, train: list[Path], val: list[Path], epochs: int, lr: float,
           batch_size: int, dev: torch.device, seed: int, result: DistillResult, log) -> None:
    from .io import read_image

    encoder = student.image_encoder
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    order = np.random.default_rng(seed)
    for epoch in range(epochs):
        encoder.train()
        losses = []
        perm = order.permutation(len(train))
        for start in range(0, len(train), batch_size):
            chunk = [read_image(train[i]) for i in perm[start : start + batch_size]]
            x = torch.cat([encoder_input(rgb, cache.img_size, student) for rgb in chunk]).to(dev)
            target = torch.stack([cache.embedding(rgb) for rgb in chunk]).to(dev)
            loss = torch.nn.functional.mse_loss(encoder(x).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        result.train_mse.append(float(np.mean(losses)))
        if val:
            result.val_mse.append(embedding_mse(student, cache, val, dev))
        if log is not None:
            shown = f", val mse {result.val_mse[-1]:.5f}" if val else ""
            log(f"epoch {epoch + 1}/{epochs}: train mse {result.train_mse[-1]:.5f}{shown}")
    encoder.eval()


def _write_metrics(path: Path, result: DistillResult) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "train_mse", "val_mse"])
        for epoch in range(len(result.train_mse) + 1):
            train = "" if epoch == 0 else f"{result.train_mse[epoch - 1]:.6g}"
            val = f"{result.val_mse[epoch]:.6g}" if epoch < len(result.val_mse) else ""
            writer.writerow([epoch, train, val])
