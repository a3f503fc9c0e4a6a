"""The planning rules: every training choice as a function of the fingerprint and the machine, with its reason.

Each rule is general (measured properties, never a dataset's name) and says why in one sentence; the reasons go
to the printed plan and to the run's ``config.yaml``. Epochs are not chosen here: they come from the measured
time per epoch (:mod:`.budget`), so that the schedule anneals inside the time budget.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .fingerprint import CANDIDATE_SIZES, Fingerprint

#: the input size may cost at most this much of the masks' own IoU (scaled down to it and back up)
ROUNDTRIP_IOU = 0.9875
#: the thinnest class must stay at least this many pixels wide at the input size
MIN_WIDTH_PX = 3.0
#: native-resolution crops: big enough for a U-Net's receptive field, small enough for a CPU step
NATIVE_CROP = 256
#: the deepest feature map keeps at least this many pixels a side
MIN_DEEPEST_PX = 6
#: a class below this share of the pixels is rare: weight the cross-entropy towards it
RARE_CLASS = 0.02
#: fewer optimizer steps than this per epoch: validate a moving average of the weights
FEW_STEPS = 10
#: share of the training time given to a second stage at a larger size (FixRes): a letterboxed run's validation
#: score levels off over stage one's last quarter, while each early stage-two epoch still gains
SECOND_STAGE_SHARE = 0.3
#: a second stage only refines a first one that trained at least this many epochs
SECOND_STAGE_MIN_EPOCHS = 20


@dataclass
class Machine:
    """What the rules need to know about this computer."""

    cpus: int
    gpu: bool
    bf16: bool = False  # the CPU multiplies bfloat16 natively (AMX or AVX512-BF16)

    @classmethod
    def here(cls, accelerator: str = "auto") -> Machine:
        from ...precision import native_bf16
        from ..ddp import uses_gpu

        return cls(cpus=os.cpu_count() or 1, gpu=uses_gpu(accelerator), bf16=native_bf16())


@dataclass
class Choice:
    value: Any
    reason: str


def choices_to_dict(choices: dict[str, Choice]) -> dict[str, dict[str, Any]]:
    """A plan's choices as config.yaml records them: {option: {"value", "reason"}}."""
    return {key: {"value": c.value, "reason": c.reason} for key, c in choices.items()}


def choice_lines(choices: dict[str, Choice]) -> list[str]:
    """A plan's choices as its printout shows them: the option and value, then the reason indented."""
    return [f"  {key} = {c.value!r}\n      {c.reason}" for key, c in choices.items()]


def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


def choose_input(fp: Fingerprint) -> dict[str, Choice]:
    """Letterbox size (``resize``) or native-resolution crops (``native``)."""
    long_side = max(fp.median_size)
    if fp.max_side <= CANDIDATE_SIZES[0]:
        size = _round_to(max(fp.max_side, CANDIDATE_SIZES[0]), 32)
        return {"mode": Choice("resize", "small images: whole images, letterboxed as they are"),
                "imgsz": Choice(size, f"the largest image ({fp.max_side} px) fits {size} px, the smallest input")}
    for size in CANDIDATE_SIZES:
        if size >= long_side:
            break
        kept, width = fp.roundtrip.get(size, 0.0), fp.thinnest * size / long_side
        if kept >= ROUNDTRIP_IOU and width >= MIN_WIDTH_PX:
            return {"mode": Choice("resize", "objects survive downscaling: letterbox whole images (context, speed)"),
                    "imgsz": Choice(size, f"smallest size keeping mask IoU {kept:.3f} >= {ROUNDTRIP_IOU} after scaling "
                                          f"down and up, and the thinnest class {width:.1f} px >= {MIN_WIDTH_PX} wide")}
    crop = min(NATIVE_CROP, _round_to(min(fp.median_size) - 16, 32))
    if crop >= fp.max_side or not fp.same_size and fp.max_side <= NATIVE_CROP:
        size = _round_to(fp.max_side + 16, 32)
        return {"mode": Choice("resize", "every downscale loses detail, and images are small: whole images at "
                                         "native size"),
                "imgsz": Choice(size, f"the largest image ({fp.max_side} px) fits {size} px")}
    return {"mode": Choice("native", f"every downscale loses detail (thinnest class {fp.thinnest:.1f} px wide): "
                                     "train on native-resolution crops, predict with sliding tiles"),
            "imgsz": Choice(crop, f"{crop} px crops: wide context for the network, a short CPU step")}


def choose_model(imgsz: int, machine: Machine) -> dict[str, Choice]:
    depth = max(d for d in (3, 4, 5) if d == 3 or imgsz / 2 ** d >= MIN_DEEPEST_PX)
    widths = {3: [64, 32, 16], 4: [128, 64, 32, 16], 5: [256, 128, 64, 32, 16]}[depth]
    encoder = "resnet34" if machine.gpu else "resnet18"
    return {
        "model": Choice("unet", "U-Net: skip connections keep boundaries sharp; the standard for from-scratch "
                                "segmentation"),
        "encoder": Choice(encoder, "resnet34 on a GPU" if machine.gpu else
                          "resnet18: on a CPU budget more epochs beat a larger encoder"),
        "model_kwargs": Choice(
            {"encoder_depth": depth, "decoder_channels": widths},
            f"encoder depth {depth}: the deepest feature map is {imgsz // 2 ** depth} px at {imgsz} px (>= "
            f"{MIN_DEEPEST_PX}, a deeper stage would see almost nothing); decoder {widths}"
            + (" (light: the fine detail of small inputs needs few channels)" if depth < 5 else "")),
    }


def choose_optimisation(fp: Fingerprint, mode: str, imgsz: int) -> dict[str, Choice]:
    batch = 8 if imgsz <= 160 else 4 if imgsz <= 320 else 2
    batch = max(2, min(batch, fp.num_train // 2))
    steps = max(1, fp.num_train // batch)
    lr = round(1e-3 * math.sqrt(batch), 4)
    out = {
        "batch": Choice(batch, f"{batch} images of {imgsz} px a step (larger inputs, smaller batches), at least 2 "
                               "steps an epoch"),
        "lr": Choice(lr, f"AdamW 1e-3 x sqrt(batch {batch}) (square-root scaling with the batch)"),
        "optimizer": Choice("adamw", "AdamW: robust from scratch"),
        "weight_decay": Choice(1e-4, "mild weight decay"),
        "scheduler": Choice("cosine", "cosine to 1% of lr over the planned epochs: anneals by the end of the budget"),
        "warmup": Choice(1.0, "one epoch of linear warm-up (BatchNorm statistics settle first)"),
        "patience": Choice(0, "no early stopping: the epochs are planned to fill the budget and the schedule to "
                              "anneal; best.pt is still chosen on validation"),
        "ema": Choice(0.995 if steps < FEW_STEPS else 0.0,
                      f"{steps} steps an epoch < {FEW_STEPS}: validate a moving average of the weights (steadier)"
                      if steps < FEW_STEPS else f"{steps} steps an epoch: the trained weights themselves"),
    }
    rare = [i for i, f in enumerate(fp.class_fraction) if f < RARE_CLASS]
    if rare:
        weights = [round(min(5.0, max(0.2, math.sqrt(1.0 / fp.num_classes / max(f, 1e-6)))), 3)
                   for f in fp.class_fraction]
        out["class_weights"] = Choice(weights, f"classes {[fp.class_names[i] for i in rare]} hold < {RARE_CLASS:.0%} "
                                               "of the pixels: cross-entropy weighted by 1/sqrt(share), clipped to 0.2-5")
    else:
        out["class_weights"] = Choice(None, f"every class holds >= {RARE_CLASS:.0%} of the pixels: unweighted")
    if mode == "native":
        out["loss"] = Choice("ce", "thin structures: cross-entropy alone (region losses trade pixel accuracy on "
                                   "thin classes for their recall)")
    else:
        out["loss"] = Choice("ce+lovasz", "cross-entropy + Lovasz-softmax (a surrogate of the IoU that is scored)")
    return out


def choose_augment(fp: Fingerprint, mode: str, imgsz: int) -> Choice:
    choice = _geometry_augment(fp, mode, imgsz)
    if fp.grayscale:  # saturation and hue mean nothing without colour
        choice.value["color_jitter"] = {"brightness": 0.2, "contrast": 0.2}
        choice.reason += "; grayscale images: brightness and contrast jitter only"
    return choice


def _geometry_augment(fp: Fingerprint, mode: str, imgsz: int) -> Choice:
    if mode == "native":
        native = max(fp.median_size) / imgsz  # ScaleJitter is relative to the letterbox of the crop size
        aug = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5, "rotate": 0,
               "scale": [round(0.8 * native, 3), round(1.2 * native, 3)], "color_jitter": 0.2, "elastic": 0.3}
        return Choice(aug, "native crops have no up or down: flips both ways and 90-degree turns; scale 0.8-1.2x "
                           "native; elastic warps (tissue-like textures deform); mild colour jitter")
    aug = {"hflip": 0.5, "vflip": 0, "rotate90": 0, "rotate": 0, "scale": [0.9, 1.2], "color_jitter": 0.2}
    return Choice(aug, "whole images keep their upright view: horizontal flips only, zoom 0.9-1.2 (objects seen a "
                       "little larger, used by the second stage and test-time scales), mild colour jitter")


def choose_runtime(fp: Fingerprint, machine: Machine) -> dict[str, Choice]:
    workers = 0 if machine.cpus <= 4 else min(4, machine.cpus // 2)
    pixels = fp.num_train * fp.median_size[0] * fp.median_size[1] * 3
    return {
        "workers": Choice(workers, f"{machine.cpus} CPUs: " + ("load in the training process (workers would "
                                                               "compete with the step for cores)" if not workers
                                                               else f"{workers} loader workers")),
        "cache": Choice(pixels < 2e9, f"training images ~{pixels / 1e9:.2f} GB decoded: "
                        + ("keep in memory" if pixels < 2e9 else "read from disk")),
        "save_period": Choice(10, "resumable last.ckpt every 10 epochs (and at the end): writes cost time"),
        "amp": choose_amp(machine),
    }


def choose_amp(machine: Machine) -> Choice:
    """Mixed precision where the hardware multiplies in half precision natively, so the budget buys more epochs."""
    if machine.gpu:
        return Choice(True, "a GPU: fp16 mixed precision (Tensor Cores), fp32 master weights")
    if machine.bf16:
        return Choice(True, "this CPU multiplies bfloat16 natively (AMX or AVX512-BF16): bf16 mixed precision runs a "
                            "step in about half the time, so the budget holds about twice the epochs; fp32 master "
                            "weights, the loss in fp32")
    return Choice(False, "no native bfloat16 on this CPU (emulated bf16 is slower than fp32): fp32")


def choose_second_stage(fp: Fingerprint, mode: str, imgsz: int, multiple: int) -> Choice:
    larger = _round_to(imgsz * 4 / 3, multiple)
    if mode != "resize" or larger > max(fp.median_size):
        return Choice(None, "no second stage: " + ("native crops already see full detail" if mode != "resize"
                                                    else f"{larger} px would upsample the images"))
    return Choice({"imgsz": larger, "share": SECOND_STAGE_SHARE, "lr_factor": 0.1},
                  f"last {SECOND_STAGE_SHARE:.0%} of the time at {larger} px from stage one's weights (lr / 10, no "
                  "warm-up): a network trained with zoom-in jitter sees better above its training size (FixRes)")


def _given(choices: dict[str, Choice], given: dict[str, Any], keys: tuple[str, ...] | list[str]) -> None:
    for key in keys:
        if key in given:
            choices[key] = Choice(given[key], "given")


def plan_rules(fp: Fingerprint, machine: Machine, given: dict[str, Any] | None = None) -> dict[str, Choice]:
    """Every planned option (TrainConfig names, plus ``mode`` and ``second_stage``) -> its value and reason.

    ``given`` options (explicitly set by the user) win; later rules see them (e.g. a given ``imgsz`` sets the
    encoder depth, and a size given is kept to the end: no second stage).
    """
    given = dict(given or {})
    choices = choose_input(fp)
    _given(choices, given, ("imgsz",))
    mode, imgsz = choices["mode"].value, choices["imgsz"].value
    choices.update(choose_model(imgsz, machine))
    _given(choices, given, ("model", "encoder", "model_kwargs"))
    if choices["model"].value != "unet" and "model_kwargs" not in given:
        choices["model_kwargs"] = Choice({}, f"the planned depth and widths are U-Net's: {choices['model'].value} "
                                             "keeps its own defaults")
    choices.update(choose_optimisation(fp, mode, imgsz))
    choices["augment"] = choose_augment(fp, mode, imgsz)
    choices.update(choose_runtime(fp, machine))
    _given(choices, given, [k for k in given if k not in ("imgsz", "model", "encoder", "model_kwargs")])
    depth = (choices["model_kwargs"].value or {}).get("encoder_depth", 5)
    choices["second_stage"] = choose_second_stage(fp, mode, imgsz, 2 ** depth)
    if "imgsz" in given or "epochs" in given:
        choices["second_stage"] = Choice(None, "no second stage: --imgsz/--epochs given are kept to the end")
    return choices
