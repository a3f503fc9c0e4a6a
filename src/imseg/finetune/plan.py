"""The rules of a fine-tuning run planned for a time budget (``imseg finetune --data DATA --time MINUTES``).

The plan sets the input size, the batch, the epochs and the warm-up, each with its reason, from the data (how
many images, how large, how many are already in the embedding cache), the model (a frozen encoder whose
embeddings are reused, or the whole model trained; an encoder with a fixed input size) and times measured on
this machine (:mod:`.probe`). With a frozen encoder the first epoch also encodes every image once and later
epochs read the embeddings from the cache, so the first epoch is planned apart from the others; epochs are
chosen so the cosine schedule ends (anneals) inside the budget. Options given explicitly win. Everything here is
arithmetic on its inputs, so the decisions are tested on synthetic numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..semantic.plan.budget import SAFETY, warmup_epochs
from ..semantic.plan.rules import Choice, choice_lines, choices_to_dict

__all__ = ["PLANNED_OPTIONS", "Choice", "Facts", "FinetunePlan", "Timing", "choose_batch", "choose_imgsz",
           "epoch_choices", "plan_rules", "schedule"]

#: options the plan sets unless they are given
PLANNED_OPTIONS = ("imgsz", "batch", "epochs", "warmup")
#: input sizes the plan chooses from for an encoder of any input size (MobileSAM's TinyViT)
SIZES = (128, 192, 256, 320, 384, 512, 640, 768, 1024)
#: SAM's own input size: pretrained encoders learned their features on images scaled to it
SAM_SIZE = 1024
#: the run must have at least these many epochs for a warm-up and a cosine schedule to mean something
MIN_EPOCHS = 8
#: the encoding epoch of a frozen encoder may take at most this share of the budget
ENCODE_SHARE = 0.35
#: images a step: the recipe's learning rate was set for it
RECIPE_BATCH = 4


@dataclass
class Timing:
    """Seconds measured at input size ``size`` (or scaled from such a measurement)."""

    size: int
    encode_s: float  # one image through the image encoder, no gradient
    step_s: float  # one optimizer step of ``batch`` images as a steady epoch sees them (cached embeddings if reused)
    val_image_s: float  # one validation image as a steady epoch sees it
    write_s: float  # the per-epoch checkpoint writes (last.pt, best.pt, last.ckpt)
    batch: int

    def scaled(self, size: int) -> Timing:
        """The times at ``size``: encoder and decoder work grow with the pixels (tokens) of the input."""
        f = (size / self.size) ** 2
        return replace(self, size=size, encode_s=self.encode_s * f, step_s=self.step_s * f,
                       val_image_s=self.val_image_s * f)

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Facts:
    """What the rules know about the data, the model and the run."""

    train_images: int
    val_images: int
    to_encode: int  # images (train + val) whose embeddings are not yet cached at the planned size
    native_side: int  # median longer side of the images, pixels
    reuse: bool  # frozen encoder and embedding cache on: encoded once, then read from the cache
    pretrained: bool  # started from a checkpoint (not random weights)
    fixed_size: int | None = None  # the encoder only takes this input size (ViT position embeddings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule(budget_s: float, elapsed_s: float, setup_s: float, t: Timing, facts: Facts,
             epochs: int | None = None) -> dict[str, Any]:
    """Seconds of the first and later epochs and the epochs that fit (``epochs``: given, kept as it is).

    ``elapsed_s``: spent planning; ``setup_s``: the run's own start and end (data read, model built, plots)."""
    steps = math.ceil(facts.train_images / t.batch)
    epoch_s = steps * t.step_s + facts.val_images * t.val_image_s + t.write_s
    encode_s = facts.to_encode * t.encode_s if facts.reuse else 0.0
    first_s = epoch_s + encode_s
    train_s = budget_s * (1 - SAFETY) - elapsed_s - setup_s
    fitted = 1 + max(0, math.floor((train_s - first_s) / epoch_s))
    epochs = fitted if epochs is None else epochs
    planned = elapsed_s + setup_s + first_s + (epochs - 1) * epoch_s
    return {"budget_s": round(budget_s, 1), "planning_s": round(elapsed_s, 1), "setup_s": round(setup_s, 1),
            "steps_per_epoch": steps, "encode_s": round(encode_s, 1), "first_epoch_s": round(first_s, 1),
            "epoch_s": round(epoch_s, 2), "epochs": epochs, "epochs_that_fit": fitted, "planned_s": round(planned, 1)}


def choose_batch(facts: Facts) -> Choice:
    batch = max(1, min(RECIPE_BATCH, facts.train_images // 2))
    if batch == RECIPE_BATCH:
        return Choice(batch, f"{RECIPE_BATCH} images a step: the recipe's learning rate is set for it")
    return Choice(batch, f"{facts.train_images} training images: {batch} a step, so an epoch has at least 2 steps "
                         "for the warm-up and the schedule")


def _size_cap(facts: Facts) -> tuple[int, str]:
    if facts.pretrained:
        return SAM_SIZE, f"a pretrained encoder learned its features at {SAM_SIZE} px"
    above = [s for s in SIZES if s >= facts.native_side]
    cap = above[0] if above else SIZES[-1]
    return cap, f"random weights learn at any size: no larger than the images ({facts.native_side} px, {cap} px)"


def choose_imgsz(facts: Facts, ref: Timing, budget_s: float, elapsed_s: float, setup_s: float) -> Choice:
    """The largest size at which ``MIN_EPOCHS`` epochs fit (and, reusing embeddings, the encoding epoch takes at
    most ``ENCODE_SHARE`` of the budget); times are ``ref`` scaled by the pixels."""
    if facts.fixed_size:
        return Choice(facts.fixed_size, f"the encoder takes {facts.fixed_size} px only")
    cap, why_cap = _size_cap(facts)
    candidates = [s for s in SIZES if s <= cap]
    for size in reversed(candidates):
        t = ref.scaled(size)
        plan = schedule(budget_s, elapsed_s, setup_s, t, facts)
        share = plan["encode_s"] / budget_s
        if plan["epochs"] >= MIN_EPOCHS and share <= ENCODE_SHARE:
            encoding = f", encoding {share:.0%} of the budget" if facts.reuse else ""
            return Choice(size, f"the largest size where {plan['epochs']} >= {MIN_EPOCHS} epochs fit{encoding} "
                                f"(times measured at {ref.size} px, scaled by the pixels); {why_cap}")
    return Choice(candidates[0], f"even at {candidates[0]} px fewer than {MIN_EPOCHS} epochs fit (or encoding "
                                 f"takes over {ENCODE_SHARE:.0%} of the budget): the smallest size")


def plan_rules(facts: Facts, budget_s: float, elapsed_s: float, setup_s: float, ref: Timing | None,
               given: dict[str, Any]) -> dict[str, Choice]:
    """Batch and input size (the epochs and warm-up come from :func:`epoch_choices` once the chosen size has been
    timed). ``ref``: times at some size at the planned batch (None only when the size is given or fixed)."""
    choices = {"batch": Choice(given["batch"], "given") if "batch" in given else choose_batch(facts)}
    choices["imgsz"] = (Choice(given["imgsz"], "given") if "imgsz" in given
                        else choose_imgsz(facts, ref, budget_s, elapsed_s, setup_s))
    return choices


def epoch_choices(plan: dict[str, Any], facts: Facts, given: dict[str, Any]) -> dict[str, Choice]:
    """Epochs and warm-up from a :func:`schedule` of the chosen size."""
    if not facts.reuse:
        first = f"~{plan['epoch_s']:.1f} s an epoch (the encoder runs every step)"
    elif facts.to_encode:
        first = (f"the first epoch ~{plan['first_epoch_s']:.0f} s (it encodes {facts.to_encode} images once, "
                 f"~{plan['encode_s']:.0f} s), later epochs ~{plan['epoch_s']:.1f} s from cached embeddings")
    else:
        first = f"every embedding is cached already: ~{plan['epoch_s']:.1f} s an epoch"
    if "epochs" in given:
        epochs = Choice(given["epochs"], f"given ({plan['epochs_that_fit']} would fit: {first})")
    else:
        epochs = Choice(plan["epochs"], f"{first}: {plan['epochs']} epochs end ~{plan['planned_s']:.0f} s into the "
                                        f"{plan['budget_s']:.0f} s budget, where the cosine schedule has annealed")
    warmup = Choice(given["warmup"], "given") if "warmup" in given else Choice(
        warmup_epochs(epochs.value), "one epoch of linear warm-up, a tenth of the run when it is under 10 epochs")
    return {"epochs": epochs, "warmup": warmup}


@dataclass
class FinetunePlan:
    """A planned fine-tuning run: the facts, every choice and its reason, the timings and the time split."""

    minutes: float
    facts: Facts
    choices: dict[str, Choice]
    timing: Timing | None = None  # measured at the chosen size
    reference: Timing | None = None  # measured at a smaller size to choose the size
    schedule: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() when planning began: the budget's start

    def options(self) -> dict[str, Any]:
        return {k: c.value for k, c in self.choices.items() if k in PLANNED_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "facts": self.facts.to_dict(),
                "choices": choices_to_dict(self.choices),
                "timing": self.timing.to_dict() if self.timing else None,
                "reference_timing": self.reference.to_dict() if self.reference else None, "schedule": self.schedule}

    def format(self) -> str:
        f = self.facts
        lines = [f"plan for {self.minutes:g} min",
                 f"  data: {f.train_images} train / {f.val_images} val images, median longer side {f.native_side} "
                 f"px; {'frozen encoder, embeddings cached' if f.reuse else 'the encoder runs every step'}; "
                 f"{'pretrained' if f.pretrained else 'random'} start"]
        lines += choice_lines(self.choices)
        if self.timing:
            t = self.timing
            lines.append(f"  probe at {t.size} px: encode {t.encode_s:.3f} s an image, step {t.step_s:.3f} s "
                         f"(batch {t.batch}), validation {t.val_image_s * 1000:.1f} ms an image, writes "
                         f"{t.write_s:.2f} s an epoch")
        if self.schedule:
            s = self.schedule
            lines.append(f"  schedule: planning {s['planning_s']:.0f} s, setup {s['setup_s']:.0f} s, first epoch "
                         f"{s['first_epoch_s']:.0f} s, then {s['epochs'] - 1} x {s['epoch_s']:.1f} s; "
                         f"{s['planned_s']:.0f} of {s['budget_s']:.0f} s")
        return "\n".join(lines)
