"""The plan of a run (what, why, when) and the run that carries it out within its time budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import replan
from .budget import STAGE_OVERHEAD_S, schedule, tta_images, tta_seconds, warmup_epochs
from .fingerprint import Fingerprint, fingerprint
from .probe import ProbeResult, probe
from .replan import make_replan_callback
from .rules import SECOND_STAGE_MIN_EPOCHS, Choice, Machine, choice_lines, choices_to_dict, plan_rules
from .tta import choose_tta, cost, store_inference

#: TrainConfig options the plan sets unless they are given
PLANNED_OPTIONS = ("model", "encoder", "imgsz", "epochs", "batch", "lr", "optimizer", "weight_decay", "scheduler",
                   "warmup", "patience", "loss", "augment", "class_weights", "model_kwargs", "ema", "workers", "cache",
                   "save_period", "amp")


@dataclass
class Plan:
    """A planned run: the fingerprint, every choice with its reason, the probe and the time split."""

    minutes: float
    fingerprint: Fingerprint
    choices: dict[str, Choice]
    probe: ProbeResult | None = None
    schedule: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)  # options outside the plan (name, project, seed, ...)
    started: float = 0.0  # replan.now() when planning began: the budget's start
    timings: dict[str, float] = field(default_factory=dict)  # seconds of each part done so far

    @property
    def mode(self) -> str:
        return self.choices["mode"].value

    @property
    def second_stage(self) -> dict[str, Any] | None:
        return self.choices["second_stage"].value

    def options(self) -> dict[str, Any]:
        """TrainConfig options of stage one."""
        out = {k: self.choices[k].value for k in PLANNED_OPTIONS if k in self.choices}
        return {**out, **self.fixed, "time": self.minutes}

    def to_dict(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "fingerprint": self.fingerprint.to_dict(),
                "choices": choices_to_dict(self.choices),
                "probe": self.probe.to_dict() if self.probe else None, "schedule": self.schedule,
                **({"timings": {k: round(v, 1) for k, v in self.timings.items()}} if self.timings else {})}

    def format(self) -> str:
        fp = self.fingerprint
        lines = [f"plan for {self.minutes:g} min",
                 f"  data: {fp.num_train} train / {fp.num_val} val images, {fp.num_classes} classes "
                 f"{fp.class_names}, median {fp.median_size[1]}x{fp.median_size[0]} px (sides {fp.min_side}-"
                 f"{fp.max_side}), {'grayscale' if fp.grayscale else 'colour'}",
                 f"  class shares {[round(f, 3) for f in fp.class_fraction]}, thinnest class {fp.thinnest:.1f} px wide, "
                 f"small objects {fp.object_extent:.3f} of the image side",
                 "  mask IoU kept at size: " + ", ".join(f"{k}: {v:.3f}" for k, v in fp.roundtrip.items())]
        lines += choice_lines(self.choices)
        if self.probe:
            lines.append(self.probe.line())
        if self.schedule:
            s = self.schedule
            stages = f"stage 1: {s['stage1']['epochs']} epochs (~{s['stage1']['seconds']:.0f} s)"
            if "stage2" in s:
                stages += f", stage 2: {s['stage2']['epochs']} epochs (~{s['stage2']['seconds']:.0f} s)"
            lines.append(f"  schedule: planning {s['planning_s']:.0f} s, {stages}, test-time choice ~{s['tta_s']:.0f} "
                         f"s; {s['planned_s']:.0f} of {s['budget_s']:.0f} s")
        return "\n".join(lines)


def _datasets(config, plan_choices: dict[str, Choice], fp: Fingerprint, imgsz: int, seed: int,
              native: dict) -> dict:
    """Train/val datasets at ``imgsz``; native-crop runs validate on whole native images where they batch."""
    from ..data import build_datasets

    sets = build_datasets(config, imgsz=imgsz, augment=plan_choices["augment"].value, seed=seed,
                          cache=bool(plan_choices["cache"].value), validate=False)
    multiple = 2 ** (plan_choices["model_kwargs"].value or {}).get("encoder_depth", 5)
    if plan_choices["mode"].value == "native" and fp.same_size and all(v % multiple == 0 for v in fp.median_size):
        sets["val"] = native["val"]
    return sets


def make_plan(data: Any, minutes: float, given: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None,
              run_probe: bool = True) -> tuple[Plan, dict]:
    """The plan for training on ``data`` in ``minutes``, and the datasets it built (``{"native": ..., "train": ...}``).

    ``given``: options set explicitly (they win); ``fixed``: options outside the plan (seed, name, project, ...).
    """
    from ..data import build_datasets, load_data_config
    from ..train import TrainConfig

    started = replan.now()
    fixed = dict(fixed or {})
    config = load_data_config(data)
    native = build_datasets(config, imgsz=None, augment="none", seed=None, cache=True)
    for split in ("train", "val"):
        if split not in native or len(native[split]) == 0:
            from ...errors import DatasetError

            raise DatasetError(f"the {split!r} split is missing or empty; a planned run needs train and val images "
                               "(the test-time choice is made on val).")
    fp = fingerprint(native, list(config.names), config.ignore_index)
    machine = Machine.here(fixed.get("accelerator", "auto"))
    choices = plan_rules(fp, machine, given)
    plan = Plan(minutes=minutes, fingerprint=fp, choices=choices, started=started,
                fixed={**fixed, "data": config.to_dict()})
    seed = int(fixed.get("seed", 0))
    sets = _datasets(config, choices, fp, choices["imgsz"].value, seed, native)
    if run_probe:
        cfg = TrainConfig(**{**plan.options(), "epochs": 1})
        cfg.validate()
        plan.probe, threads, measured = _fastest_threads(cfg, sets, fp.num_classes, config.ignore_index)
        plan.choices["threads"] = Choice(threads, "the fastest step measured with " + ", ".join(
            f"{n} thread{'s' * (n > 1)} ({t:.3f} s)" for n, t in measured.items())
            + " (a CPU shared with other work can run fewer threads faster)")
        _schedule(plan, given or {})
    return plan, {"config": config, "native": native, "stage1": sets}


def _fastest_threads(cfg, sets: dict, num_classes: int, ignore_index: int | None):
    """The probe at each candidate torch thread count; the fastest count stays set for the run."""
    import torch

    default = torch.get_num_threads()
    results = {}
    for threads in sorted({1, max(1, default // 2), default}):
        torch.set_num_threads(threads)
        fastest = min((r.step_s for r in results.values()), default=float("inf"))
        results[threads] = probe(cfg, sets, num_classes, ignore_index, steps=3, give_up_s=1.2 * fastest)
    best = min(results, key=lambda n: results[n].step_s)
    torch.set_num_threads(best)
    return results[best], best, {n: r.step_s for n, r in results.items()}


def _schedule(plan: Plan, given: dict[str, Any]) -> None:
    """Epochs (unless given) and warm-up from the probe and the budget."""
    p, second = plan.probe, plan.second_stage
    native = plan.mode == "native"
    augment = plan.choices["augment"].value
    flips = "hv" if isinstance(augment, dict) and (augment.get("vflip") or augment.get("rotate90")) else "h"
    for _ in range(2):  # again without the second stage if stage one would be too short for it
        ratio = second["imgsz"] / plan.choices["imgsz"].value if second else 1.0
        args = (p.val_image_s, p.val_images, cost(not native, flips), ratio, native)
        images = tta_images(plan.minutes * 60, *args)
        tta_s = tta_seconds(args[0], images, *args[2:])
        plan.schedule = schedule(plan.minutes * 60, replan.now() - plan.started, p.epoch_s, tta_s, second, ratio)
        plan.schedule["tta_images"] = images
        epochs = plan.schedule["stage1"]["epochs"]
        if not second or epochs >= SECOND_STAGE_MIN_EPOCHS:
            break
        second = None
        plan.choices["second_stage"] = Choice(None, f"no second stage: stage one fits only {epochs} epochs here "
                                                    f"(< {SECOND_STAGE_MIN_EPOCHS}); all the time goes to it")
    if "epochs" not in given:
        plan.choices["epochs"] = Choice(epochs, f"{p.epoch_s:.1f} s an epoch measured here: {epochs} epochs fill "
                                                f"stage one's share of {plan.minutes:g} min, so the schedule anneals")
    ema = plan.choices["ema"].value
    steps = plan.choices["epochs"].value * p.steps_per_epoch
    if ema and "ema" not in given and steps < 1 / (1 - ema):
        plan.choices["ema"] = Choice(0.0, f"no weight average: its horizon ({1 / (1 - ema):.0f} steps) is longer than "
                                          f"the {steps} steps that fit the budget")
    if "warmup" not in given:
        plan.choices["warmup"] = Choice(warmup_epochs(plan.choices["epochs"].value),
                                        "linear warm-up: one epoch (a tenth of very short runs)")


def train_planned(plan: Plan, built: dict, callbacks: list | None = None, echo: Callable[[str], None] = print):
    """Train ``plan`` (stage one, then its second stage), choose test-time augmentation on val, record it all.

    Returns the final stage's :class:`~imseg.semantic.train.TrainResult`.
    """
    from ..run import increment_run_dir

    fixed = plan.fixed
    run_dir = increment_run_dir(fixed.get("project", "runs/train"), fixed.get("name", "exp"),
                                bool(fixed.get("exist_ok", False)))
    plan.timings = {"planning_s": replan.now() - plan.started}
    return carry_out(plan, built, run_dir, callbacks=callbacks, echo=echo)


def carry_out(plan: Plan, built: dict, run_dir: Path, callbacks: list | None = None,
              echo: Callable[[str], None] = print, resume: dict[str, Path] | None = None,
              overrides: dict[str, Any] | None = None):
    """The parts of ``plan`` not yet done in ``run_dir``: stage one, the second stage, the test-time choice.

    A stage is done when ``plan.timings`` holds its seconds (``stage1_s``, ``stage2_s``); ``resume`` maps an
    interrupted stage (``"stage1"``, ``"stage2"``) to the last.ckpt it continues from, with ``overrides`` (e.g. a
    larger ``epochs``); any other stage not done starts afresh. Each finished stage is noted in its config.yaml,
    so a run interrupted later resumes after it. Returns the final stage's TrainResult.
    """
    resume, overrides = dict(resume or {}), dict(overrides or {})
    inference = {"resize": plan.mode == "resize"}
    second = plan.second_stage
    stage1_dir = run_dir / "stage1" if second else run_dir
    result = None
    if "stage1_s" not in plan.timings:
        result = _stage_one(plan, built, stage1_dir, callbacks, inference, resume.get("stage1"), overrides)
        _note_progress(stage1_dir, plan)
    if second and "stage2_s" not in plan.timings:
        result = _second_stage(plan, built, stage1_dir, run_dir, callbacks, inference, echo, resume.get("stage2"),
                               overrides)
        _note_progress(run_dir, plan)
    result = result or finished_result(run_dir)
    tta_start = replan.now()
    choice = choose_tta(result.run_dir, built["native"]["val"], resize=inference["resize"],
                        images=plan.schedule.get("tta_images"))
    store_inference(result.run_dir, {**inference, "tta": choice["tta"], "scales": choice["scales"]})
    plan.timings["tta_s"] = replan.now() - tta_start
    plan.timings["total_s"] = replan.now() - plan.started
    _record(result.run_dir, choice, plan.timings, plan)
    echo(f"test-time augmentation: flips {'on' if choice['tta'] else 'off'}, scales {choice['scales']} "
         f"({choice['reason']})")
    echo(time_report(plan.timings, plan.minutes * 60))
    return result


def _minutes_left(plan: Plan) -> float:
    """Minutes of the budget left, less the test-time choice's planned share."""
    return (plan.started + plan.minutes * 60 - replan.now() - plan.schedule.get("tta_s", 0.0)) / 60


def _stage_one(plan: Plan, built: dict, stage_dir: Path, callbacks, inference: dict, ckpt: Path | None,
               overrides: dict):
    """Stage one in ``stage_dir``: continued from ``ckpt`` (its refitted epochs and schedule are in it) or started
    with the time the plan leaves it, refitted after every epoch."""
    from ..train import train

    config = built["config"]
    start, before = replan.now(), stage_seconds(ckpt) if ckpt else 0.0
    data = {"datasets": built["stage1"], "class_names": list(config.names), "ignore_index": config.ignore_index,
            "record": {"plan": plan.to_dict()}, "inference": inference}
    if ckpt is not None:
        result = train(resume=ckpt, callbacks=list(callbacks or []), **data, **overrides)
        changes = refits(ckpt)
    else:
        second = plan.second_stage
        stage1_time = _minutes_left(plan) - (plan.schedule["stage2"]["seconds"] / 60 if second else 0)
        refit = make_replan_callback(replan.now() + stage1_time * 60 - STAGE_OVERHEAD_S)
        where = {"project": str(stage_dir.parent), "name": stage_dir.name, "exist_ok": True}
        result = train({**plan.options(), **where, "time": max(stage1_time, 0.1)},
                       callbacks=[*(callbacks or []), refit], **data)
        changes = refit.changes
    plan.schedule["stage1"]["replanned"] = [{"after_epoch": c["after_epoch"], "epochs": c["to"]} for c in changes]
    plan.timings["stage1_s"] = before + replan.now() - start
    return result


def time_report(timings: dict[str, float], budget_s: float) -> str:
    """One line: the seconds the run used of its budget, and where they went."""
    names = {"planning_s": "planning", "stage1_s": "stage 1", "stage2_s": "stage 2", "tta_s": "test-time choice"}
    parts = ", ".join(f"{names[key]} {value:.0f} s" for key, value in timings.items() if key in names)
    return (f"time used: {timings['total_s']:.0f} s of the {budget_s:.0f} s budget "
            f"({100 * timings['total_s'] / budget_s:.1f}%; {parts})")


def _second_stage(plan: Plan, built: dict, stage1_dir: Path, run_dir: Path, callbacks, inference: dict,
                  echo: Callable[[str], None], ckpt: Path | None = None, overrides: dict | None = None):
    """Fine-tune stage one's last weights at the larger size for the time that is left (or continue that from
    ``ckpt``)."""
    from ..train import train

    second = plan.second_stage
    config = built["config"]
    start, before = replan.now(), stage_seconds(ckpt) if ckpt else 0.0
    sets = _datasets(config, plan.choices, plan.fingerprint, second["imgsz"], int(plan.fixed.get("seed", 0)),
                     built["native"])
    options = None if ckpt is not None else _second_stage_options(plan, stage1_dir, run_dir, echo)
    data = {"datasets": sets, "class_names": list(config.names), "ignore_index": config.ignore_index,
            "record": {"plan": plan.to_dict(), "stage1": str(stage1_dir)}, "inference": inference}
    if ckpt is not None:
        echo(f"stage 2: continued from {ckpt}")
        result = train(resume=ckpt, callbacks=list(callbacks or []), **data, **(overrides or {}))
        changes = refits(ckpt)
    else:
        # the first estimate scales stage one's pace by the pixels; fixed costs (loading, validation) do not scale,
        # so the epochs are refitted to the stage's end after every epoch, as in stage one
        refit = make_replan_callback(replan.now() + _minutes_left(plan) * 60 - STAGE_OVERHEAD_S)
        result = train(options, callbacks=[*(callbacks or []), refit], **data)
        changes = refit.changes
    plan.schedule["stage2"]["replanned"] = [{"after_epoch": c["after_epoch"], "epochs": c["to"]} for c in changes]
    plan.timings["stage2_s"] = before + replan.now() - start
    return result


def _second_stage_options(plan: Plan, stage1_dir: Path, run_dir: Path, echo: Callable[[str], None]) -> dict:
    """Stage two's TrainConfig options: its epochs fill the minutes left at stage one's measured pace."""
    import math

    second = plan.second_stage
    minutes_left = _minutes_left(plan)
    with open(stage1_dir / "metrics.csv") as fh:
        epochs_done = max(sum(1 for _ in fh) - 1, 1)
    epoch1_s = plan.timings["stage1_s"] / epochs_done  # measured, under this run's real load
    epoch2_s = epoch1_s * (second["imgsz"] / plan.choices["imgsz"].value) ** 2
    epochs = max(1, math.floor(minutes_left * 60 / epoch2_s) - 1)
    plan.schedule["stage2"]["epochs_run_planned"] = epochs
    init = stage1_dir / "weights" / "last.pt"
    echo(f"stage 2: {epochs} epochs at {second['imgsz']} px from {init}")
    return {**plan.options(), "imgsz": second["imgsz"], "epochs": epochs, "warmup": 0.0,
            "lr": plan.choices["lr"].value * second["lr_factor"], "init": str(init),
            "project": str(run_dir.parent), "name": run_dir.name, "exist_ok": True, "time": max(minutes_left, 0.1)}


def stage_seconds(ckpt: Path) -> float:
    """Training seconds a stage had run when ``ckpt`` (its last.ckpt) was written (Lightning's Timer)."""
    from ..checkpoints import read_resume_checkpoint

    timer = (read_resume_checkpoint(ckpt).get("callbacks") or {}).get("Timer") or {}
    return float((timer.get("time_elapsed") or {}).get("train", 0.0))


def refits(ckpt: Path) -> list[dict]:
    """The refits of a stage's epochs recorded in its last.ckpt."""
    from ..checkpoints import read_resume_checkpoint

    state = (read_resume_checkpoint(ckpt).get("callbacks") or {}).get(replan.STATE_KEY) or {}
    return list(state.get("changes") or [])


def finished_result(run_dir: Path):
    """The TrainResult of a stage that finished before this process (its best.pt and metrics.csv)."""
    import csv

    from ..checkpoints import load_checkpoint
    from ..train import TrainResult

    weights = Path(run_dir) / "weights"
    best = load_checkpoint(weights / "best.pt")
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        epochs = len(list(csv.DictReader(fh)))
    return TrainResult(run_dir=Path(run_dir), best=weights / "best.pt", last=weights / "last.pt",
                       metrics=dict(best.get("metrics") or {}), confusion_matrix=None, epochs_run=epochs)


def _note_progress(run_dir: Path, plan: Plan) -> None:
    """A finished stage: its config.yaml's plan gains the schedule as run and the seconds so far (a resumed run
    skips the stages noted here)."""
    import yaml

    from ..run import write_yaml

    path = Path(run_dir) / "config.yaml"
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    saved["plan"] = {**saved.get("plan", {}), "schedule": plan.schedule,
                     "timings": {k: round(v, 1) for k, v in plan.timings.items()}}
    write_yaml(path, saved)


def _record(run_dir: Path, choice: dict, timings: dict, plan: Plan) -> None:
    """config.yaml gains the test-time choice and the seconds each part took."""
    import yaml

    from ..run import write_yaml

    path = Path(run_dir) / "config.yaml"
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    saved["plan"] = {**saved.get("plan", {}), **plan.to_dict(), "tta": choice}
    saved["plan"]["timings"] = {k: round(v, 1) for k, v in timings.items()}
    budget_s = plan.minutes * 60  # the time used against the budget, as RESULTS.md reports it
    saved["plan"]["time_used"] = {"seconds": round(timings["total_s"], 1), "budget_s": round(budget_s, 1),
                                  "share": round(timings["total_s"] / budget_s, 4)}
    write_yaml(path, saved)


def plan_and_train(data: Any, minutes: float, given: dict[str, Any], fixed: dict[str, Any], plan_only: bool = False,
                   echo: Callable[[str], None] = print):
    """``imseg train --time``: plan, print the plan, and (unless ``plan_only``) train it."""
    plan, built = make_plan(data, minutes, given, fixed)
    echo(plan.format())
    if plan_only:
        return plan, None
    return plan, train_planned(plan, built, echo=echo)
