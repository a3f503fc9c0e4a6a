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

With ``distill_cache`` the teacher runs once, before training, on every training image (letterboxed to its
own training size, as ``imseg predict`` runs it); its logits are kept in memory (float16) and each sample's
augmentation moves them with the image and the mask (:class:`TeacherTargets`), so a distilled epoch costs what
an undistilled one does. Colour augmentation does not reach the cached logits: the student learns the
teacher's answer on the clean image. Pixels that padding or rotation create are left out of both losses.
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


def _check_valid(student: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor | None:
    if valid is None:
        return None
    if valid.shape != (student.shape[0], *student.shape[2:]):
        raise ValueError(f"valid must be (N, H, W) {(student.shape[0], *student.shape[2:])} like the logits, "
                         f"got {tuple(valid.shape)}")
    return valid.to(device=student.device, dtype=torch.bool)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise KD: mean over pixels of KL(softmax(t/T) || softmax(s/T)) over the class axis, times T**2.

    Args:
        student_logits, teacher_logits: (N, C, H, W); the teacher's are detached (no gradient reaches it).
        valid: optional (N, H, W) bool: the pixels to average over (others count for nothing).
    Returns:
        a scalar; 0 when the two agree.
    """
    _check_logits(student_logits, teacher_logits)
    valid = _check_valid(student_logits, valid)
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    per_pixel = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)  # (N, H, W)
    if valid is None:
        return per_pixel.mean() * t * t
    per_pixel = torch.where(valid, per_pixel, per_pixel.new_zeros(()))
    return per_pixel.sum() / valid.sum().clamp(min=1) * t * t


def cwd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise distillation: each channel's (H, W) map is a distribution over pixels (softmax of map/T);
    mean over (image, channel) of KL(teacher || student), times T**2.

    Args:
        student_logits, teacher_logits: (N, C, H, W); the teacher's are detached (no gradient reaches it).
        valid: optional (N, H, W) bool: the distributions are over these pixels only.
    Returns:
        a scalar; 0 when the two agree.
    """
    _check_logits(student_logits, teacher_logits)
    valid = _check_valid(student_logits, valid)
    t = float(temperature)
    n, c = student_logits.shape[:2]
    student, teacher = student_logits.float() / t, teacher_logits.detach().float() / t
    keep = None
    if valid is not None:  # pixels outside take no probability in either distribution
        keep = valid[:, None].expand(n, c, *valid.shape[1:]).reshape(n * c, -1)
        lowest = torch.finfo(torch.float32).min
        student = student.reshape(n * c, -1).masked_fill(~keep, lowest)
        teacher = teacher.reshape(n * c, -1).masked_fill(~keep, lowest)
    log_q_student = F.log_softmax(student.reshape(n * c, -1), dim=1)
    log_q_teacher = F.log_softmax(teacher.reshape(n * c, -1), dim=1)
    terms = log_q_teacher.exp() * (log_q_teacher - log_q_student)
    if keep is not None:
        terms = torch.where(keep, terms, terms.new_zeros(()))
    per_channel = terms.sum(dim=1)  # (N*C,)
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
        out = self.model(self._input(images)).float()
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out


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
        cached logits that :class:`TeacherTargets` items carry ((N, C + 1, H, W), the last channel 1 where
        the pixel is the image's and 0 where augmentation padded)."""
        if targets is None:
            teacher_logits = self.teacher.logits(images, student_logits.shape[-2:])
            return self.weight * self.loss(student_logits, teacher_logits, self.temperature)
        targets = targets.to(student_logits.device, torch.float32)
        if tuple(targets.shape[-2:]) != tuple(student_logits.shape[-2:]):
            targets = F.interpolate(targets, size=tuple(student_logits.shape[-2:]), mode="nearest")
        return self.weight * self.loss(student_logits, targets[:, :-1], self.temperature, valid=targets[:, -1] > 0.5)


class TeacherTargets(torch.utils.data.Dataset):
    """A training set whose items carry the teacher's logits: ``(image, mask, targets)``.

    The teacher runs once, here, on every image of ``dataset`` letterboxed to ``imgsz`` (its own training size;
    ``imgsz`` when it has none); the logits of the image's area are kept in float16. An item's logits are scaled
    to the image's native size and go through the sample's augmentation with its mask; ``targets`` is
    (C + 1, h, w) float32: the C logits, then 1 where the pixel is the image's and 0 where augmentation padded.

    Args:
        dataset: a :class:`~imseg.semantic.data.SegmentationDataset` (``read_raw`` and ``item``).
        memory_limit: refuse (ConfigError) when the cache would take more bytes than this.
    """

    def __init__(self, dataset: Any, teacher: Teacher, imgsz: int | None, device: str | torch.device = "cpu",
                 batch: int = 8, memory_limit: int | None = None) -> None:
        if not all(hasattr(dataset, name) for name in ("read_raw", "item")):
            raise ConfigError(f"distill_cache needs a dataset built by imseg (read_raw and item), got "
                              f"{type(dataset).__name__}; train without distill_cache (the teacher then runs on "
                              "each batch).")
        size = teacher.imgsz or imgsz
        if not size:
            raise ConfigError("distill_cache needs an imgsz to run the teacher at: the teacher run records none; "
                              "set this run's imgsz.")
        self.dataset = dataset
        ignore = getattr(dataset, "ignore_index", None)
        ignore = 255 if ignore is None else int(ignore)
        self.marker = float(ignore) + 1.0  # never the value padding writes (ignore_index)
        self.logits, self.sizes = self._compute(teacher, int(size), torch.device(device), max(1, batch),
                                                memory_limit, ignore)

    def _compute(self, teacher: Teacher, size: int, device: torch.device, batch: int, memory_limit: int | None,
                 ignore: int) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        from .transforms import build_transforms, letterbox_params

        letterbox = build_transforms(size, "none", train=False, ignore_index=ignore)
        logits: list[torch.Tensor] = []
        sizes: list[tuple[int, int]] = []
        count = len(self.dataset)
        for start in range(0, count, batch):
            images, areas = [], []
            for index in range(start, min(count, start + batch)):
                rgb, mask = self.dataset.read_raw(index)
                height, width = rgb.shape[:2]
                sizes.append((height, width))
                areas.append(letterbox_params(height, width, size)[1:])
                images.append(letterbox(rgb, mask)[0])
            stack = torch.stack(images).to(device)
            out = teacher.logits(stack, stack.shape[-2:]).to("cpu", torch.float16)
            logits.extend(o[:, :h, :w].clone() for o, (h, w) in zip(out, areas, strict=True))
            if start == 0 and memory_limit is not None:
                needed = out[0].numel() * out.element_size() * count
                if needed > memory_limit:
                    raise ConfigError(f"distill_cache: the teacher's logits of {count} images would take about "
                                      f"{needed / 2**30:.1f} GiB, over the {memory_limit / 2**30:.1f} GiB allowed; "
                                      "train without distill_cache (the teacher then runs on each batch) or at a "
                                      "smaller imgsz.")
        return logits, sizes

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def soft_map(self, index: int) -> torch.Tensor:
        """(C + 1, H, W) float32 at the image's native size: the logits, then the marker channel."""
        height, width = self.sizes[index]
        logits = self.logits[index].float()[None]
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return torch.cat([logits[0], torch.full((1, height, width), self.marker)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask, soft = self.dataset.item(index, self.soft_map(index % len(self)))
        valid = (soft[-1:] == self.marker).to(soft.dtype)
        return image, mask, torch.cat([soft[:-1], valid])


def build_distiller(cfg: Mapping[str, Any], class_names: Sequence[str], mean: Sequence[float],
                    std: Sequence[float]) -> Distiller | None:
    """The distiller a training config asks for (``teacher``, ``distill``, ``distill_weight``,
    ``distill_temperature``), or None without a teacher."""
    if not cfg.get("teacher"):
        return None
    teacher = load_teacher(Path(cfg["teacher"]), class_names, mean, std)
    return Distiller(teacher, cfg.get("distill", "kd"), cfg.get("distill_weight", 1.0),
                     cfg.get("distill_temperature", 1.0))
