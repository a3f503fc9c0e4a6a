"""Resuming a planned run (``imseg train --resume RUN``) wherever it stopped: in stage one, between the stages, in
stage two or in the test-time choice.

What each part left on disk says how far the run got: a finished stage is noted in its config.yaml (its seconds
under ``plan.timings``) and is kept as it is; an interrupted stage continues from its last.ckpt, with the epochs
and learning-rate schedule it had refitted to its budget (a stage stopped before its first checkpoint starts
again); the parts not yet begun then run as the plan says.

The budget rule: the time already used is the time recorded (planning, the finished stages' seconds, and the
training seconds of the interrupted stage up to its last checkpoint); the time the run was down, and the work after
its last checkpoint, do not count. The parts still to run share the budget less that time: the planned budget, or
``minutes`` given with the resume, which replaces it (for the whole run, the time used included).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import replan
from .fingerprint import Fingerprint
from .probe import ProbeResult
from .rules import Choice
from .runner import PLANNED_OPTIONS, Plan, _datasets, carry_out, stage_seconds

#: TrainConfig options a stage sets for itself, not kept from stage one's config.yaml
_PER_STAGE = ("time", "project", "name", "exist_ok")


def _saved(run_dir: Path) -> dict | None:
    """A run directory's config.yaml, or None when it has none (or an unreadable one)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def _plan_of(saved: dict | None) -> dict | None:
    plan = (saved or {}).get("plan")
    return plan if isinstance(plan, dict) and isinstance(plan.get("choices"), dict) else None


def planned_run(path: str | Path) -> Path | None:
    """The directory of the planned run that ``path`` (its directory, its ``stage1/``, or a last.ckpt in either)
    belongs to; None when ``path`` is no planned run."""
    path = Path(path)
    if path.suffix == ".ckpt":
        path = path.parent.parent
    for top in ((path.parent, path) if path.name == "stage1" else (path,)):
        two = (top / "stage1" / "config.yaml").is_file()
        plan = _plan_of(_saved(top / "stage1" if two else top))
        if plan is not None and bool(plan["choices"].get("second_stage", {}).get("value")) == two:
            return top
    return None


def plan_from_record(record: dict, train: dict, run_dir: Path, minutes: float | None) -> Plan:
    """The :class:`Plan` a run's config.yaml records; ``train``: stage one's TrainConfig options as it ran."""
    fp = dict(record["fingerprint"])
    fp["median_size"] = tuple(fp["median_size"])
    fp["roundtrip"] = {int(k): float(v) for k, v in (fp.get("roundtrip") or {}).items()}
    fingerprint = Fingerprint(**{k: v for k, v in fp.items() if k in Fingerprint.__dataclass_fields__})
    probed = record.get("probe")
    probe = ProbeResult(**{k: probed[k] for k in ProbeResult.__dataclass_fields__}) if probed else None
    fixed = {k: v for k, v in train.items() if k not in PLANNED_OPTIONS and k not in _PER_STAGE}
    fixed.update(project=str(run_dir.parent), name=run_dir.name, exist_ok=True)
    return Plan(minutes=float(minutes if minutes is not None else record["minutes"]), fingerprint=fingerprint,
                choices={k: Choice(c["value"], c["reason"]) for k, c in record["choices"].items()}, probe=probe,
                schedule=dict(record.get("schedule") or {}), fixed=fixed,
                timings={k: float(v) for k, v in (record.get("timings") or {}).items()})


def _state(run_dir: Path, minutes: float | None) -> tuple[Plan, dict[str, Path]]:
    """The recorded plan with the seconds of the parts done, and the interrupted stage's last.ckpt (if any)."""
    from ...errors import CheckpointError

    stage1_dir = run_dir / "stage1" if (run_dir / "stage1" / "config.yaml").is_file() else run_dir
    first = _saved(stage1_dir)
    latest, stage2 = first, _saved(run_dir) if stage1_dir != run_dir else None
    if stage2 is not None and "stage1" in stage2 and _plan_of(stage2) is not None:
        latest = stage2  # stage two began: its config.yaml carries the plan on
    if "time_used" in _plan_of(latest):
        raise CheckpointError(
            f"{run_dir} finished its plan (test-time choice stored, plan.time_used in its config.yaml): nothing is "
            f"left to resume. To train on, start a new run from its weights with `imseg train --init {run_dir}`.")
    plan = plan_from_record(_plan_of(latest), first.get("train") or {}, run_dir, minutes)
    if "stage1_s" not in plan.timings:
        stage: tuple[str, Path] | None = ("stage1", stage1_dir)
    elif plan.second_stage and "stage2_s" not in plan.timings and latest is stage2:
        stage = ("stage2", run_dir)
    else:
        stage = None  # the next part starts afresh
    if stage and (stage[1] / "weights" / "last.ckpt").is_file():
        return plan, {stage[0]: stage[1] / "weights" / "last.ckpt"}
    return plan, {}


def resume_planned(path: str | Path, minutes: float | None = None, callbacks: list | None = None,
                   echo: Callable[[str], None] = print, **overrides: Any):
    """Finish the planned run at ``path`` (see the module's budget rule; ``minutes`` replaces the budget).

    ``overrides`` (e.g. ``epochs``) apply to the interrupted stage it continues. Returns ``(plan, TrainResult)``.
    """
    from ...errors import CheckpointError, ConfigError
    from ..data import build_datasets, load_data_config

    run_dir = planned_run(path)
    if run_dir is None:
        raise CheckpointError(f"{path} is not a planned run (no plan in its config.yaml or its stage1/config.yaml).")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"--time is a budget in minutes > 0, got {minutes}.")
    plan, resume = _state(run_dir, minutes)
    if overrides and not resume:
        raise ConfigError(f"{', '.join(sorted(overrides))} given, but no stage of {run_dir} was interrupted after a "
                          "checkpoint to continue with it; resume without them.")
    used = sum(plan.timings.get(k, 0.0) for k in ("planning_s", "stage1_s", "stage2_s"))
    used += sum(stage_seconds(ckpt) for ckpt in resume.values())
    plan.started = replan.now() - used
    plan.schedule.setdefault("resumed", []).append({"used_s": round(used, 1), "budget_s": round(plan.minutes * 60, 1)})
    if "threads" in plan.choices:
        import torch

        torch.set_num_threads(int(plan.choices["threads"].value))
    config = load_data_config(plan.fixed["data"])
    built = {"config": config, "native": build_datasets(config, imgsz=None, augment="none", seed=None, cache=True)}
    if "stage1_s" not in plan.timings:
        built["stage1"] = _datasets(config, plan.choices, plan.fingerprint, plan.choices["imgsz"].value,
                                    int(plan.fixed.get("seed", 0)), built["native"])
    done = [name for key, name in (("stage1_s", "stage 1"), ("stage2_s", "stage 2")) if key in plan.timings]
    echo(f"resuming {run_dir}: {', '.join(done) or 'nothing'} done, "
         + "".join(f"{k.replace('stage', 'stage ')} continues from {v}, " for k, v in resume.items())
         + f"{used:.0f} s of the {plan.minutes * 60:.0f} s budget used")
    return plan, carry_out(plan, built, run_dir, callbacks=callbacks, echo=echo, resume=resume, overrides=overrides)
