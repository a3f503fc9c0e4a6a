"""Planned instance training: fingerprint, rules (:mod:`.plan`), a timing probe of the planned model on this
machine, epochs from the budget, then the run itself (``imseg train --task instance --data D --time MINUTES``).

The budget split, the probe's timing discipline and the re-planning callback are the semantic planner's
(:mod:`imseg.semantic.plan`); only what differs for instance models lives here.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..semantic.plan.budget import STAGE_OVERHEAD_S, schedule
from ..semantic.plan.probe import PROBE_STEPS, ProbeResult
from ..semantic.plan.rules import Choice, Machine, choice_lines, choices_to_dict
from .plan import InstanceFingerprint, instance_fingerprint, plan_rules
from .sample import InstanceDataset

#: options the plan sets unless given, per model
PLANNED = {"unet-watershed": ("encoder", "native", "imgsz", "batch", "lr", "augment", "normalize", "tta", "min_area",
                              "amp", "epochs"),
           "maskrcnn": ("backbone", "imgsz", "batch", "lr", "detections", "proposals", "epochs")}


@dataclass
class InstancePlan:
    minutes: float
    fingerprint: InstanceFingerprint
    choices: dict[str, Choice]
    probe: ProbeResult | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() when planning began: the budget's start

    def options(self) -> dict[str, Any]:
        """The training options of the planned model."""
        return {k: self.choices[k].value for k in PLANNED[self.choices["model"].value] if k in self.choices}

    def to_dict(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "fingerprint": self.fingerprint.to_dict(),
                "choices": choices_to_dict(self.choices),
                "probe": self.probe.to_dict() if self.probe else None, "schedule": self.schedule}

    def format(self) -> str:
        fp = self.fingerprint
        lines = [f"plan for {self.minutes:g} min (instance)",
                 f"  data: {fp.num_train} train / {fp.num_val} val images, classes {fp.class_names}, median "
                 f"{fp.median_size[1]}x{fp.median_size[0]} px (largest side {fp.max_side}), "
                 f"{'grayscale' if fp.grayscale else 'colour'}, {fp.bright_background:.0%} with bright backgrounds",
                 f"  objects: {fp.objects_median:g} an image (max {fp.objects_max}), small ones {fp.small_px:.1f} px "
                 f"across ({fp.small_extent:.3f} of the image side), {fp.touching:.0%} touching another"]
        lines += choice_lines(self.choices)
        if self.probe:
            lines.append(self.probe.line())
        if self.schedule:
            s = self.schedule
            lines.append(f"  schedule: planning {s['planning_s']:.0f} s, {s['stage1']['epochs']} epochs "
                         f"(~{s['stage1']['seconds']:.0f} s); {s['planned_s']:.0f} of {s['budget_s']:.0f} s")
        return "\n".join(lines)


def plan_epochs(budget_s: float, elapsed_s: float, probe: ProbeResult) -> dict[str, Any]:
    """The budget split of one training stage (no test-time choice): epochs that fit what is left."""
    return schedule(budget_s, elapsed_s, probe.epoch_s, 0.0, None, 1.0)


def _subset(dataset: InstanceDataset, count: int) -> InstanceDataset:
    picks = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(len(dataset), count))})
    return InstanceDataset(dataset.categories, [dataset.samples[i] for i in picks])


def probe_unet(choices: dict[str, Choice], train: InstanceDataset, val: InstanceDataset, seed: int) -> ProbeResult:
    """Time the planned U-Net on a few of the images' pixel targets (written as training writes them); the epoch
    is the full training set's steps and validation images."""
    from ..semantic.data import build_datasets
    from ..semantic.plan.probe import probe
    from ..semantic.train import TrainConfig
    from .unet import DEFAULTS, native_augment, write_pixel_data

    batch, imgsz, augment = (choices[k].value for k in ("batch", "imgsz", "augment"))
    native = bool(choices["native"].value) if "native" in choices else False
    augment = native_augment(augment) if native else augment
    with tempfile.TemporaryDirectory(prefix="imseg-probe-") as tmp:
        normalize = choices["normalize"].value if "normalize" in choices else "none"
        data = write_pixel_data(_subset(train, (PROBE_STEPS + 2) * batch), _subset(val, 3 * batch), Path(tmp),
                                normalize=normalize)
        cfg = TrainConfig(data=data, model="unet", encoder=choices["encoder"].value, imgsz=imgsz, batch=batch,
                          lr=choices["lr"].value, loss="ce+dice", augment=augment, seed=seed, epochs=1,
                          amp=bool(choices["amp"].value) if "amp" in choices else False,
                          model_kwargs={"decoder_channels": list(DEFAULTS["decoder_channels"])})
        cfg.validate()
        # the pipeline training will run: native crops and centre-crop validation, or letterboxed whole images
        sets = build_datasets(data, imgsz=imgsz, augment=augment, seed=seed, validate=False)
        result = probe(cfg, sets, 3, 255)
    return replace(result, steps_per_epoch=max(1, len(train) // batch), val_images=len(val))


def probe_maskrcnn(choices: dict[str, Choice], train: InstanceDataset, val: InstanceDataset,
                   seed: int) -> ProbeResult:
    """Time a few training steps and validation images of the planned Mask R-CNN."""
    import torch

    from .model import build_maskrcnn, model_config
    from .train import InstanceTorchDataset, collate

    torch.manual_seed(seed)
    batch, names = choices["batch"].value, list(train.categories)
    arch = model_config(choices["backbone"].value, len(names), choices["imgsz"].value,
                        proposals=choices["proposals"].value, detections=choices["detections"].value)
    model = build_maskrcnn(arch).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=choices["lr"].value)
    loader = torch.utils.data.DataLoader(InstanceTorchDataset(_subset(train, (PROBE_STEPS + 1) * batch), names,
                                                              flips=True), batch_size=batch, collate_fn=collate)
    times = []
    for images, targets in loader:
        start = time.perf_counter()
        loss = sum(model(list(images), list(targets)).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[1:] or times))  # the first step allocates
    model.eval()
    seen = InstanceTorchDataset(_subset(val, 3), names)
    timed = list(range(1, len(seen))) or [0]  # after a warm-up pass on the first image
    with torch.no_grad():
        model([seen[0][0]])
        start = time.perf_counter()
        for i in timed:
            model([seen[i][0]])
    val_image_s = (time.perf_counter() - start) / len(timed)
    return ProbeResult(step_s=step_s, val_image_s=val_image_s, steps_per_epoch=math.ceil(len(train) / batch),
                       val_images=len(val))


def make_instance_plan(data: str, minutes: float, given: dict[str, Any], fixed: dict[str, Any],
                       run_probe: bool = True) -> InstancePlan:
    """The plan for ``data`` in ``minutes`` (``given``: explicit options, which win; ``fixed``: val_fraction, seed,
    accelerator, ...)."""
    from .train import _read, split_dataset

    model = given.get("model")
    if model is not None and model not in PLANNED:
        raise ConfigError(f"--model {model!r} is not an instance model; use {' or '.join(PLANNED)}.")
    started = time.monotonic()
    dataset = _read(data, "data")
    if fixed.get("val") is not None:
        train, val = dataset, _read(fixed["val"], "val")
    else:
        train, val = split_dataset(dataset, float(fixed.get("val_fraction", 0.2)), int(fixed.get("seed", 0)))
    fp = instance_fingerprint(train, len(val))
    plan = InstancePlan(minutes, fp, plan_rules(fp, Machine.here(fixed.get("accelerator", "auto")), given),
                        started=started)
    model = plan.choices["model"].value
    foreign = sorted(k for k in given if k not in (*PLANNED[model], "model"))
    if foreign:
        raise ConfigError(f"{', '.join('--' + k for k in foreign)} do not apply to {model}, the model planned for "
                          f"this data ({plan.choices['model'].reason}); drop them or give --model.")
    if run_probe:
        run = probe_maskrcnn if plan.choices["model"].value == "maskrcnn" else probe_unet
        plan.probe = run(plan.choices, train, val, int(fixed.get("seed", 0)))
        plan.schedule = plan_epochs(minutes * 60, time.monotonic() - started, plan.probe)
        if "epochs" not in given:
            epochs = plan.schedule["stage1"]["epochs"]
            plan.choices["epochs"] = Choice(epochs, f"{plan.probe.epoch_s:.1f} s an epoch measured here: {epochs} "
                                                    f"epochs fill {minutes:g} min, so the schedule anneals")
    return plan


def train_instance_plan(plan: InstancePlan, data: str, fixed: dict[str, Any]) -> Path:
    """Train ``plan`` within what is left of its budget (epochs re-fitted as the machine's speed changes); the plan
    goes to the run's config.yaml."""
    import yaml

    from ..semantic.plan.replan import make_replan_callback
    from ..semantic.run import write_yaml
    from .train import train_instance
    from .unet import train_unet_instance

    end = plan.started + plan.minutes * 60 * 0.98 - STAGE_OVERHEAD_S
    options = {**plan.options(), **fixed, "data": data, "max_time": max(end - time.monotonic(), 1.0)}
    replan = make_replan_callback(end)
    callbacks = [replan]
    if plan.choices["model"].value == "maskrcnn":
        run_dir = train_instance({**options, "model": "maskrcnn"}, callbacks=callbacks)
    else:
        run_dir = train_unet_instance(options, callbacks=callbacks)
    path = Path(run_dir) / "config.yaml"
    saved = yaml.safe_load(path.read_text()) or {}
    plan.schedule["replanned"] = [{"after_epoch": c["after_epoch"], "epochs": c["to"]} for c in replan.changes]
    saved["plan"] = plan.to_dict()
    write_yaml(path, saved)
    return Path(run_dir)


def plan_and_train_instance(data: str, minutes: float, given: dict[str, Any], fixed: dict[str, Any],
                            plan_only: bool = False, echo: Callable[[str], None] = print) -> Path | None:
    """``imseg train --task instance --time``: plan, print the plan, and (unless ``plan_only``) train it."""
    plan = make_instance_plan(data, minutes, given, fixed)
    echo(plan.format())
    return None if plan_only else train_instance_plan(plan, data, fixed)
