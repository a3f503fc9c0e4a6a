"""The planning rules of instance training for a time budget (``imseg train --task instance --time MINUTES``).

Each rule is a function of the data's fingerprint (image sizes, object sizes and counts, touching objects) and the
machine, never of a data set's name, and says why in one sentence; the reasons are printed with the plan and
stored in the run's ``config.yaml``. Epochs are not chosen here: the timing probe and the budget split of the
semantic planner (:mod:`imseg.semantic.plan`) turn the measured seconds per epoch into them
(:mod:`imseg.instance.planner`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..semantic.plan.fingerprint import CANDIDATE_SIZES
from ..semantic.plan.rules import Choice, Machine, choose_amp
from .sample import InstanceDataset
from .unet import background_level

#: the small objects (10th percentile of sqrt(area)) keep this many pixels across at the input size: the U-Net's
#: core (the pixels deeper than half the object's depth) inside a rim on each side
MIN_OBJECT_PX = 6
#: ... and this many where objects touch: the gap between their cores is all that separates them
MIN_TOUCHING_PX = 8
#: Mask R-CNN's smallest anchor is 16 px: smaller objects match no anchor well
MIN_MASKRCNN_PX = 16
#: share of objects touching another from which the data counts as touching
TOUCHING = 0.1
#: the largest input a CPU step affords (a GPU's is the largest candidate size)
CPU_MAX_SIZE = 512
#: native-resolution crops of a CPU step (twice this on a GPU)
NATIVE_CROP = 256
#: objects per image (median) from which images are dense scenes (cells, grains) with no up or down
DENSE = 10
#: an image's background is clear when its median pixel lies this far from the middle of its stretched range
CLEAR_BACKGROUND = 0.2
#: the share of images with unclear backgrounds up to which a mix of dark and bright ones is still inverted
UNCLEAR_SHARE = 0.1


@dataclass
class InstanceFingerprint:
    """Measured properties of an instance training set (sizes in the images' own pixels)."""

    num_train: int
    num_val: int
    class_names: list[str]
    median_size: tuple[int, int]  # (height, width)
    max_side: int
    grayscale: bool  # every sampled image has R == G == B
    objects_median: float  # objects per image
    objects_max: int
    small_extent: float  # 10th percentile over objects of sqrt(area) / the image's longer side
    small_px: float  # 10th percentile of sqrt(area) in pixels
    small_area: float  # 10th percentile of the area in pixels
    touching: float  # share of objects that touch another object
    bright_background: float = 0.0  # share of images whose median pixel is in the upper half of their range
    unclear_background: float = 0.0  # share whose median pixel is within CLEAR_BACKGROUND of that middle
    sampled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}


def touching_objects(ids: np.ndarray) -> set[int]:
    """Ids of an (H, W) instance id map (0 = none) whose pixels are 4-adjacent to another object's."""
    found: set[int] = set()
    for a, b in ((ids[1:], ids[:-1]), (ids[:, 1:], ids[:, :-1])):
        meet = (a > 0) & (b > 0) & (a != b)
        found.update(np.unique(a[meet]).tolist())
        found.update(np.unique(b[meet]).tolist())
    return found


def instance_fingerprint(train: InstanceDataset, num_val: int, sample: int = 32) -> InstanceFingerprint:
    """Fingerprint of ``train`` from ``sample`` evenly spaced images (object counts from every image)."""
    from ..io import read_image

    counts = [sum(not o.iscrowd for o in s.objects) for s in train.samples]
    picks = sorted({int(i) for i in np.linspace(0, len(train) - 1, min(len(train), sample))})
    sizes, extents, roots, areas, touching, total, gray, levels = [], [], [], [], 0, 0, True, []
    for i in picks:
        s = train.samples[i]
        sizes.append((s.height, s.width))
        rgb = read_image(s.image_path)
        gray = gray and bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        levels.append(background_level(rgb))
        ids = np.zeros((s.height, s.width), np.int32)
        for k, obj in enumerate((o for o in s.objects if not o.iscrowd), start=1):
            mask = obj.mask.decode()
            ids[mask] = k
            area = int(mask.sum())
            if area:
                areas.append(area)
                roots.append(math.sqrt(area))
                extents.append(math.sqrt(area) / max(s.height, s.width))
                total += 1
        touching += len(touching_objects(ids))
    pct = lambda v: float(np.percentile(v, 10)) if v else 0.0  # noqa: E731
    return InstanceFingerprint(
        num_train=len(train), num_val=num_val, class_names=list(train.categories),
        median_size=(int(np.median([h for h, _ in sizes])), int(np.median([w for _, w in sizes]))),
        max_side=int(max(max(s) for s in sizes)), grayscale=gray, objects_median=float(np.median(counts)),
        objects_max=int(max(counts)), small_extent=pct(extents), small_px=pct(roots), small_area=pct(areas),
        touching=touching / max(total, 1), bright_background=float(np.mean(np.asarray(levels) > 0.5)),
        unclear_background=float(np.mean(np.abs(np.asarray(levels) - 0.5) < CLEAR_BACKGROUND)), sampled=len(picks))


def choose_model(fp: InstanceFingerprint) -> Choice:
    if len(fp.class_names) > 1:
        return Choice("maskrcnn", f"{len(fp.class_names)} classes: Mask R-CNN classifies each object")
    return Choice("unet-watershed", "one class: the contour-aware U-Net (one dense pass, no proposals) splits "
                                    "touching objects between their cores; the cheapest on a CPU")


def choose_network(model: str, machine: Machine) -> dict[str, Choice]:
    """Mask R-CNN's ``backbone`` or the U-Net's ``encoder``."""
    name = "resnet34" if machine.gpu else "resnet18"
    reason = "resnet34 on a GPU" if machine.gpu else "resnet18: on a CPU budget more epochs beat a larger network"
    return {"backbone" if model == "maskrcnn" else "encoder": Choice(name, reason)}


def _need(fp: InstanceFingerprint, model: str) -> tuple[int, str]:
    """Pixels the small objects must keep across at the input size, and why."""
    if model == "maskrcnn":
        return MIN_MASKRCNN_PX, f"Mask R-CNN's smallest anchor ({MIN_MASKRCNN_PX} px)"
    if fp.touching >= TOUCHING:
        return MIN_TOUCHING_PX, (f"{fp.touching:.0%} of the objects touch: cores apart inside them need "
                                 f"{MIN_TOUCHING_PX} px objects")
    return MIN_OBJECT_PX, f"a core inside a rim each side needs {MIN_OBJECT_PX} px objects"


def _letterbox_cap(fp: InstanceFingerprint, machine: Machine) -> tuple[int, int]:
    """(the largest affordable letterbox size, the typical image's size rounded up to 32)."""
    native = 32 * math.ceil(max(fp.median_size) / 32)  # no upsampling past the typical image
    return min(native, CANDIDATE_SIZES[-1] if machine.gpu else CPU_MAX_SIZE), native


def choose_native(fp: InstanceFingerprint, machine: Machine) -> Choice:
    """The U-Net's input: whole images letterboxed (False), or native-resolution crops and sliding-tile prediction
    (True) where every affordable letterbox would shrink the small objects below the pixels they need."""
    need, why = _need(fp, "unet-watershed")
    cap, _ = _letterbox_cap(fp, machine)
    shrunk = fp.small_extent * cap
    if shrunk >= need or fp.max_side <= cap:
        return Choice(False, "whole images, letterboxed: " + (
            f"at {cap} px or less the small objects keep >= {need} px" if shrunk >= need else
            f"no image is larger than {cap} px, so the letterbox does not shrink them"))
    return Choice(True, f"letterboxed to {cap} px the small objects come out {shrunk:.1f} px across ({why}) while "
                        f"images run up to {fp.max_side} px: train on native-resolution crops (small objects "
                        f"{fp.small_px:.1f} px across), validate on centre crops, predict with sliding tiles")


def choose_crop(fp: InstanceFingerprint, machine: Machine) -> Choice:
    """The side of the native-resolution crops: what a step affords, within the typical image."""
    step = 2 * NATIVE_CROP if machine.gpu else NATIVE_CROP
    typical = max(64, 32 * (min(fp.median_size) // 32))
    crop = min(step, typical)
    limit = (f"the typical image's shorter side ({min(fp.median_size)} px)" if crop < step else
             f"what a {'GPU' if machine.gpu else 'CPU'} step affords")
    return Choice(crop, f"native crops of {crop} px: {limit}")


def choose_size(fp: InstanceFingerprint, model: str, machine: Machine) -> Choice:
    """The smallest letterbox size at which the small objects keep the pixels the model needs."""
    need, why = _need(fp, model)
    wanted = need / max(fp.small_extent, 1e-6)
    cap, native = _letterbox_cap(fp, machine)
    size = next((s for s in CANDIDATE_SIZES if s >= wanted), CANDIDATE_SIZES[-1])
    if size <= cap:
        return Choice(size, f"small objects are {fp.small_extent:.3f} of the image side: at {size} px they stay "
                            f">= {need} px across ({why})")
    limit = (f"the typical image ({max(fp.median_size)} px)" if cap == native else
             f"the largest input a CPU step affords ({CPU_MAX_SIZE} px)")
    return Choice(cap, f"{cap} px, {limit}: small objects come out {fp.small_extent * cap:.1f} px across "
                       f"({why}; {size} px would be needed)")


def choose_optimisation(fp: InstanceFingerprint, model: str, imgsz: int) -> dict[str, Choice]:
    if model == "maskrcnn":
        batch = max(1, min(4 if imgsz <= 320 else 2, fp.num_train // 2))
        lr = round(3e-4 * math.sqrt(batch / 2), 6)
        return {"batch": Choice(batch, f"{batch} images of {imgsz} px a step (Mask R-CNN's heads cost per object)"),
                "lr": Choice(lr, "AdamW 3e-4 at batch 2, x sqrt(batch / 2) (square-root scaling)")}
    batch = max(2, min(8 if imgsz <= 160 else 4 if imgsz <= 320 else 2, fp.num_train // 2))
    reason = f"{batch} images of {imgsz} px a step (larger inputs, smaller batches)"
    if fp.num_train // 2 < 4:
        reason += f"; {fp.num_train} training images: at least 2 steps an epoch"
    return {"batch": Choice(batch, reason),
            "lr": Choice(round(1e-3 * math.sqrt(batch), 6), f"AdamW 1e-3 x sqrt(batch {batch}) (square-root scaling)")}


def choose_augment(fp: InstanceFingerprint) -> Choice:
    """The U-Net's augmentation: mild scaling (small objects' cores must survive resampling), flips by scene
    type."""
    aug: dict[str, Any] = {"scale": [0.75, 1.33], "hflip": 0.5, "color_jitter": 0.2}
    if fp.objects_median >= DENSE:
        aug.update(vflip=0.5, rotate90=0.5)
        reason = (f"{fp.objects_median:g} objects an image: dense scenes with no up or down, flips both ways and "
                  "90-degree turns")
    else:
        aug.update(vflip=0.0, rotate90=0.0)
        reason = f"{fp.objects_median:g} objects an image: scenes keep their upright view, horizontal flips only"
    reason += "; zoom 0.75-1.33 only (small objects keep the pixels their cores need)"
    if fp.grayscale:  # saturation and hue mean nothing without colour
        aug["color_jitter"] = {"brightness": 0.2, "contrast": 0.2}
        reason += "; grayscale: brightness and contrast jitter only"
    return Choice(aug, reason)


def choose_normalize(fp: InstanceFingerprint) -> Choice:
    """The U-Net's per-image normalisation (:func:`imseg.instance.unet.normalize_image`): every image stretched to
    its own intensity range; bright backgrounds inverted too where the data mixes dark and bright ones clearly."""
    bright, unclear = fp.bright_background, fp.unclear_background
    if 0.0 < bright < 1.0 and unclear <= UNCLEAR_SHARE:
        return Choice("stretch-dark", f"{bright:.0%} of the images have bright backgrounds, the rest dark: each "
                                      "image stretched to its own range and the bright ones inverted, so objects "
                                      "are lighter than the background in every image")
    why = (f"{unclear:.0%} of the images have backgrounds neither dark nor bright, so none is inverted"
           if unclear > UNCLEAR_SHARE else
           f"every image's background is {'bright' if bright else 'dark'}")
    return Choice("stretch", f"each image stretched to its own intensity range (exposures differ); {why}")


def choose_post(fp: InstanceFingerprint, model: str) -> dict[str, Choice]:
    if model == "maskrcnn":
        detections = max(100, 50 * math.ceil(1.25 * fp.objects_max / 50))
        return {"detections": Choice(detections, f"up to {fp.objects_max} objects an image: keep {detections} "
                                                 "detections (a quarter more, at least 100)"),
                "proposals": Choice(max(1000, 4 * detections), "RPN proposals: 4 per kept detection, at least 1000")}
    area = int(min(64, max(4, round(0.25 * fp.small_area))))
    return {"min_area": Choice(area, f"fragments under a quarter of the small objects' area ({fp.small_area:.0f} px) "
                                     "are noise")}


def plan_rules(fp: InstanceFingerprint, machine: Machine, given: dict[str, Any] | None = None) -> dict[str, Choice]:
    """Every planned option -> its value and reason; ``given`` options (set explicitly) win and later rules see
    them (a given ``--model`` picks that model's rules, a given ``--imgsz`` its batch)."""
    given = dict(given or {})
    choices = {"model": Choice(given["model"], "given") if "model" in given else choose_model(fp)}
    model = choices["model"].value
    choices.update(choose_network(model, machine))
    native = False
    if model != "maskrcnn":
        choices["native"] = Choice(given["native"], "given") if "native" in given else choose_native(fp, machine)
        native = bool(choices["native"].value)
    choices["imgsz"] = (Choice(given["imgsz"], "given") if "imgsz" in given else
                        choose_crop(fp, machine) if native else choose_size(fp, model, machine))
    choices.update(choose_optimisation(fp, model, choices["imgsz"].value))
    if model != "maskrcnn":
        choices["augment"] = choose_augment(fp)
        choices["normalize"] = choose_normalize(fp)
        choices["tta"] = Choice(True, "prediction averages the flips the network trained with: one U-Net pass "
                                      "is cheap, and the views' mean steadies the cores that split objects")
        choices["amp"] = choose_amp(machine)  # torchvision's Mask R-CNN trains in fp32
    choices.update(choose_post(fp, model))
    for key in given:
        if key not in ("model", "imgsz", "native"):
            choices[key] = Choice(given[key], "given")
    return choices
