"""Knowledge distillation for semantic training: a frozen teacher run's logits guide a (smaller) student.

Two losses, each added to the usual loss with a weight (``imseg train --teacher RUN --distill kd|cwd``):

- ``kd``: pixel-wise KD (Hinton et al. 2015): at every pixel, KL(teacher || student) between the class
  distributions softened by a temperature ``T``; averaged over pixels, times ``T**2`` so the gradients keep
  their scale whatever ``T``.
- ``cwd``: channel-wise distillation (Shu et al. 2021): each class channel's map is turned into a
  distribution over the pixels (softmax over H*W at ``T``); KL(teacher || student) per channel, averaged over
  channels and images, times ``T**2``.

The teacher sees the same augmented batch as the student (rescaled to the teacher's own training size when
it differs) and its logits are resized to the student's; it is frozen, in eval mode, under ``no_grad``, and
is not part of the student's checkpoints: a resumed run reloads it from the path its config.yaml records.

With ``distill_cache`` the teacher runs once, before training, on ``distill_views`` augmented views of every
training image: the views the seeded dataset makes in epochs 0 .. views - 1. Epoch e then trains on the views of
epoch e mod views, and each item carries the teacher's answer on exactly that input (:class:`TeacherTargets`):
the teacher runs views / epochs as often as on every batch, and the student sees ``views`` augmentations of each
image instead of one an epoch. The answer is the teacher's on the student's very input: its answer on the clean
image, moved with each sample's augmentation instead, lowered the student on the Weizmann horses (test IoU 0.775
against 0.787 without a teacher, mean of 3 seeds) where 8 cached views did not (0.788).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError
from .checkpoints import find_checkpoint, load_checkpoint, model_from_checkpoint
from .models import input_multiple

DISTILL_METHODS = ("kd", "cwd")


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.ndim != 4:
        raise ValueError(f"student and teacher logits must both be (N, C, H, W) of one shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise KD: mean over pixels of KL(softmax(t/T) || softmax(s/T)) over the class axis, times T**2.

    Args:
        student_logits, teacher_logits: (N, C, H, W); the teacher's are detached (no gradient reaches it).
    Returns:
        a scalar; 0 when the two agree.
    """
    _check_logits(student_logits, teacher_logits)
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    per_pixel = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)  # (N, H, W)
    return per_pixel.mean() * t * t


def cwd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Channel-wise distillation: each channel's (H, W) map is a distribution over pixels (softmax of map/T);
    mean over (image, channel) of KL(teacher || student), times T**2.

    Args:
        student_logits, teacher_logits: (N, C, H, W); the teacher's are detached (no gradient reaches it).
    Returns:
        a scalar; 0 when the two agree.
    """
    _check_logits(student_logits, teacher_logits)
    t = float(temperature)
    n, c = student_logits.shape[:2]
    log_q_student = F.log_softmax(student_logits.float().reshape(n * c, -1) / t, dim=1)
    log_q_teacher = F.log_softmax(teacher_logits.detach().float().reshape(n * c, -1) / t, dim=1)
    per_channel = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(dim=1)  # (N*C,)
    return per_channel.mean() * t * t


LOSSES = {"kd": kd_loss, "cwd": cwd_loss}


def check_distill_options(teacher: Any, method: str, weight: float, temperature: float) -> None:
    """ConfigError for a bad ``distill``/``distill_weight``/``distill_temperature`` or a missing teacher run."""
    if method not in DISTILL_METHODS:
        raise ConfigError(f"distill must be one of {', '.join(DISTILL_METHODS)} (pixel-wise KD or channel-wise "
                          f"distillation), got {method!r}")
    if not weight >= 0:
        raise ConfigError(f"distill_weight must be >= 0, got {weight}")
    if not temperature > 0:
        raise ConfigError(f"distill_temperature must be > 0, got {temperature}")
    if teacher is not None:
        try:
            find_checkpoint(teacher)
        except CheckpointError as exc:
            raise ConfigError(f"--teacher: {exc} Pass a run directory written by `imseg train` (or its "
                              "weights/best.pt).") from None


def check_views(views: int) -> int:
    """``views`` (augmented views per image of a cached teacher), or a ConfigError when it is below 1."""
    if int(views) < 1:
        raise ConfigError(f"distill_views must be >= 1 (augmented views of each image), got {views}")
    return int(views)


class Teacher:
    """A frozen semantic model (eval mode, no gradients) answering ``logits(images, size)``.

    Deliberately not a ``torch.nn.Module`` attribute of the LightningModule: its weights stay out of the
    student's state_dict, last.ckpt, optimizer and DDP; it follows the batch's device itself.
    """

    def __init__(self, model: torch.nn.Module, imgsz: int | None, multiple: int, source: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.imgsz, self.multiple, self.source = imgsz, multiple, source
        self._device: torch.device | None = None

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """The batch at the teacher's training scale: the student's size times imgsz_teacher / imgsz_student."""
        height, width = images.shape[-2:]
        if not self.imgsz or self.imgsz == max(height, width):
            return images
        scale = self.imgsz / max(height, width)
        size = [max(self.multiple, round(side * scale / self.multiple) * self.multiple) for side in (height, width)]
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """(N, C, *size) float32 logits of ``images`` (N, 3, H, W), normalised as the student's input."""
        if self._device != images.device:
            self.model.to(images.device)
            self._device = images.device
        self.model.eval()
        return resize_logits(self.model(self._input(images)).float(), size)


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) logits at ``size``. Shrunk, each output pixel gets the log of the class probabilities averaged
    over its footprint (area), so a pixel a boundary crosses carries the share of it each class covers at the
    larger scale (softmax gives those shares back); otherwise bilinear."""
    height, width = logits.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (height, width) == size:
        return logits
    if height >= size[0] and width >= size[1]:
        shares = F.interpolate(logits.softmax(dim=1), size=size, mode="area")
        return shares.clamp_min(torch.finfo(shares.dtype).tiny).log()
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def load_teacher(run: str | os.PathLike, class_names: Sequence[str], mean: Sequence[float],
                 std: Sequence[float]) -> Teacher:
    """The teacher of a run directory (its best.pt) or checkpoint file, checked against the student's classes
    and input normalisation."""
    path = find_checkpoint(run)
    payload = load_checkpoint(path)
    theirs = list(payload.get("class_names") or [])
    if theirs != list(class_names):
        raise ConfigError(f"--teacher {path}: the teacher predicts the classes {theirs}, this run trains "
                          f"{list(class_names)}; distil from a run trained on the same classes (in that order).")
    for key, ours in (("mean", mean), ("std", std)):
        value = payload.get(key)
        if value is not None and [round(float(v), 6) for v in value] != [round(float(v), 6) for v in ours]:
            raise ConfigError(f"--teacher {path}: the teacher normalises its input with {key} {list(value)}, this "
                              f"run with {list(ours)}; both must see the same input.")
    model_meta = payload["model"]
    multiple = input_multiple(model_meta.get("name", ""), model_meta.get("kwargs") or {})
    return Teacher(model_from_checkpoint(payload), payload.get("imgsz"), multiple, str(path))


class Distiller:
    """``distiller(images, student_logits)`` -> the weighted distillation loss (a scalar)."""

    def __init__(self, teacher: Teacher, method: str = "kd", weight: float = 1.0, temperature: float = 1.0) -> None:
        check_distill_options(None, method, weight, temperature)
        self.teacher, self.method, self.weight, self.temperature = teacher, method, float(weight), float(temperature)
        self.loss = LOSSES[method]

    def __call__(self, images: torch.Tensor, student_logits: torch.Tensor,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
        """The loss against the teacher's answer on ``images``, or against ``targets`` when given: the batch of
        cached answers that :class:`TeacherTargets` items carry ((N, C, H, W), the teacher's logits on ``images``)."""
        if targets is None:
            targets = self.teacher.logits(images, student_logits.shape[-2:])
        return self.weight * self.loss(student_logits, targets.to(student_logits.device, torch.float32),
                                       self.temperature)


class TeacherTargets(torch.utils.data.Dataset):
    """A training set whose items carry the teacher's answer on that very item: ``(image, mask, targets)``.

    The teacher runs once, here, on ``views`` augmented views of every image: the items ``dataset`` gives in epochs
    0 .. views - 1 (its augmentation is seeded per epoch and item, so an item is the same view whenever it is made
    again). :meth:`set_epoch` then points epoch e at the views of epoch e mod views. ``targets`` is the teacher's
    (C, H, W) float32 logits, kept in float16.

    A teacher trained at k times the student's ``imgsz`` (k an integer) answers on the same views made at its own
    size (``dataset.at_size``: from one seed, exactly the student's view at k times the pixels), its answer shrunk
    to the student's pixels as class shares by :func:`resize_logits`: detail the student's input lacks. Where the
    dataset has no such twin (another ratio, rotations, elastic warps, blur, native-resolution crops, a dataset not built
    by imseg) the teacher sees the student's view rescaled to its size, as on every batch without the cache.

    Args:
        dataset: a seeded dataset of ``(image, mask)`` items with ``set_epoch`` (``build_datasets(..., seed=S)``).
        views: augmented views per image (epochs before the views repeat).
        memory_limit: refuse (ConfigError) when the cache would take more bytes than this.
    """

    def __init__(self, dataset: Any, teacher: Teacher, views: int = 8, device: str | torch.device = "cpu",
                 batch: int = 8, memory_limit: int | None = None) -> None:
        if not hasattr(dataset, "set_epoch") or getattr(dataset, "seed", None) is None:
            raise ConfigError(f"distill_cache needs a dataset whose augmentation is seeded per epoch and item "
                              f"(set_epoch and a seed; imseg train builds one), got {type(dataset).__name__}; "
                              "train without distill_cache (the teacher then runs on each batch).")
        self.dataset, self.views, self.epoch = dataset, check_views(views), 0
        size = tuple(dataset[0][0].shape[-2:]) if len(dataset) else None  # the student's (H, W)
        self.teacher_views = self._teacher_views(dataset, teacher, size)
        self.logits = self._compute(teacher, size, torch.device(device), max(1, batch), memory_limit)
        self.set_epoch(0)

    @staticmethod
    def _teacher_views(dataset: Any, teacher: Teacher, size: tuple[int, ...] | None) -> Any:
        """The dataset the teacher answers on: ``dataset`` made at the teacher's size where it differs from the
        student's ``size`` and a twin exists, else ``dataset`` itself."""
        if not teacher.imgsz or size is None or max(size) == teacher.imgsz or not hasattr(dataset, "at_size"):
            return dataset
        return dataset.at_size(teacher.imgsz) or dataset

    def _compute(self, teacher: Teacher, size: tuple[int, ...] | None, device: torch.device, batch: int,
                 memory_limit: int | None) -> list[list[torch.Tensor]]:
        count = len(self.dataset)
        cached: list[list[torch.Tensor]] = []
        for view in range(self.views):
            self.teacher_views.set_epoch(view)  # the student's dataset itself, or its twin
            answers: list[torch.Tensor] = []
            for start in range(0, count, batch):
                images = torch.stack([self.teacher_views[i][0] for i in range(start, min(count, start + batch))])
                out = teacher.logits(images.to(device), size).to("cpu", torch.float16)
                answers.extend(out.unbind(0))
                if view == 0 and start == 0 and memory_limit is not None:
                    needed = out[0].numel() * out.element_size() * count * self.views
                    if needed > memory_limit:
                        raise ConfigError(
                            f"distill_cache: the teacher's logits on {self.views} views of {count} images would "
                            f"take about {needed / 2**30:.1f} GiB, over the {memory_limit / 2**30:.1f} GiB allowed; "
                            "give fewer views (distill_views), a smaller imgsz, or train without distill_cache "
                            "(the teacher then runs on each batch).")
            cached.append(answers)
        return cached

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(self.epoch % self.views)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        return image, mask, self.logits[self.epoch % self.views][index % len(self)].float()


def build_distiller(cfg: Mapping[str, Any], class_names: Sequence[str], mean: Sequence[float],
                    std: Sequence[float]) -> Distiller | None:
    """The distiller a training config asks for (``teacher``, ``distill``, ``distill_weight``,
    ``distill_temperature``), or None without a teacher."""
    if not cfg.get("teacher"):
        return None
    teacher = load_teacher(Path(cfg["teacher"]), class_names, mean, std)
    return Distiller(teacher, cfg.get("distill", "kd"), cfg.get("distill_weight", 1.0),
                     cfg.get("distill_temperature", 1.0))
