"""``imseg finetune --data DATA --time MINUTES`` without ``--epochs``: plan the run for the budget (the rules in
:mod:`.plan`, the times from :mod:`.probe`), print the plan, and fine-tune it. The budget starts when planning does."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..semantic.plan.budget import SAFETY, STAGE_OVERHEAD_S
from .plan import PLANNED_OPTIONS, SAM_SIZE, Facts, FinetunePlan, choose_batch, epoch_choices, plan_rules, schedule

__all__ = ["REFERENCE_SIZE", "make_finetune_plan", "plan_and_finetune"]

#: the size the times of an encoder of any input size are first measured at (cheap), to choose the size
REFERENCE_SIZE = 256
#: steps timed at the reference size (after a warm-up step)
REFERENCE_STEPS = 2
#: a probe's steps stop early once they have taken this share of the budget
PROBE_SHARE = 0.03


def _native_side(data: Any, sample: int = 64) -> int:
    """Median longer side of up to ``sample`` evenly spaced training images (read from their headers)."""
    from PIL import Image

    samples = data.splits["train"]
    picked = sorted({int(i) for i in np.linspace(0, len(samples) - 1, min(sample, len(samples)))})
    sides = []
    for i in picked:
        with Image.open(samples[i].image) as img:
            sides.append(max(img.size))
    return int(np.median(sides))


def _fixed_size(model: str) -> int | None:
    """The input size an encoder requires (ViT: its absolute position embeddings), None for any size."""
    from ..registry import get_spec
    from ..sam.checkpoint import get_config

    spec = get_spec(model)
    if spec.family != "sam":
        return SAM_SIZE
    base = get_config(spec.options["variant"])
    return base.img_size if base.encoder == "vit" else None


def make_finetune_plan(minutes: float, options: dict[str, Any]) -> tuple[FinetunePlan, Any]:
    """The plan for fine-tuning with ``options`` (FinetuneConfig names) in ``minutes``, and the data it read.
    Of PLANNED_OPTIONS, those in ``options`` are kept as given; the others are planned."""
    from .data import load_finetune_data
    from .probe import probe
    from .train import FinetuneConfig

    started = time.monotonic()
    budget_s = minutes * 60.0
    given = {k: options[k] for k in PLANNED_OPTIONS if options.get(k) is not None}
    base = FinetuneConfig(**{k: v for k, v in options.items() if k not in PLANNED_OPTIONS and k != "time"})
    base.validate()
    data = load_finetune_data(base.data, objects=base.objects, min_area=base.min_area,
                              val_fraction=base.val_fraction, seed=base.seed)
    load_s = time.monotonic() - started
    n_train, n_val = len(data.splits["train"]), len(data.splits["val"])
    facts = Facts(train_images=n_train, val_images=n_val, to_encode=n_train + n_val, native_side=_native_side(data),
                  reuse=False, pretrained=False, fixed_size=_fixed_size(base.model))
    batch = given.get("batch") or choose_batch(facts).value
    reference = None
    if "imgsz" not in given and facts.fixed_size is None:
        with tempfile.TemporaryDirectory() as tmp:  # embeddings at the reference size: no use to the run
            ref = probe(FinetuneConfig(**{**asdict(base), "imgsz": REFERENCE_SIZE, "batch": batch, "cache_dir": tmp}),
                        data, steps=REFERENCE_STEPS, max_s=PROBE_SHARE * budget_s)
        reference = ref.timing
        facts.reuse, facts.pretrained = ref.reuse, ref.start != "random initialisation"
    probe_s = time.monotonic() - started - load_s  # the probe at the chosen size costs about as much again
    choices = plan_rules(facts, budget_s, time.monotonic() - started + probe_s, load_s + STAGE_OVERHEAD_S,
                         reference, given)
    cfg = FinetuneConfig(**{**asdict(base), "imgsz": choices["imgsz"].value, "batch": choices["batch"].value})
    measured = probe(cfg, data, max_s=PROBE_SHARE * budget_s)
    facts.reuse, facts.pretrained = measured.reuse, measured.start != "random initialisation"
    facts.to_encode = measured.to_encode
    setup_s = load_s + measured.build_s + STAGE_OVERHEAD_S
    split = schedule(budget_s, time.monotonic() - started, setup_s, measured.timing, facts, given.get("epochs"))
    choices.update(epoch_choices(split, facts, given))
    plan = FinetunePlan(minutes=minutes, facts=facts, choices=choices, timing=measured.timing, reference=reference,
                        schedule=split, started=started)
    return plan, data


def _refuse_several_processes(options: dict[str, Any]) -> None:
    """The plan times steps in this one process on one device and sizes the run by them; it does not model how
    several devices or nodes divide the work (and their gradient exchange), so it plans for one process only."""
    from ..semantic.ddp import is_distributed
    from .train import FinetuneConfig

    cfg = FinetuneConfig(**{k: v for k, v in options.items() if k in ("devices", "nodes", "accelerator")})
    cfg.validate()
    if is_distributed(cfg.devices, cfg.nodes, cfg.accelerator):
        raise ConfigError(f"--time without --epochs plans the run from timings on one device, so it cannot plan for "
                          f"devices={cfg.devices!r}, nodes={cfg.nodes}: give --epochs (with --time as a wall-clock "
                          f"limit, which stops every process together), or plan with --devices 1 --nodes 1.")


def plan_and_finetune(minutes: float, *, plan_only: bool = False, echo: Callable[[str], None] = print,
                      **options: Any):
    """Plan (and unless ``plan_only``, run) ``finetune(**options)`` for a budget of ``minutes``: imgsz, batch,
    epochs and warm-up are planned unless given in ``options``. Returns (plan, FinetuneResult | None)."""
    from ..semantic.plan.replan import make_replan_callback
    from .train import FinetuneConfig, finetune

    known = {f.name for f in fields(FinetuneConfig)}
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"unknown finetune option(s) {sorted(unknown)}; known: {sorted(known)}")
    if not minutes or minutes <= 0:
        raise ConfigError(f"time must be a budget in minutes > 0, got {minutes}.")
    _refuse_several_processes(options)
    plan, _ = make_finetune_plan(minutes, options)
    echo(plan.format())
    if plan_only:
        return plan, None
    deadline = plan.started + minutes * 60.0
    end_of_epochs = plan.started + minutes * 60.0 * (1 - SAFETY) - STAGE_OVERHEAD_S
    setup_s = plan.schedule["setup_s"] - STAGE_OVERHEAD_S  # the run reads the data and builds the model again
    left_min = (deadline - time.monotonic() - setup_s - STAGE_OVERHEAD_S) / 60.0
    replan = make_replan_callback(end_of_epochs)
    result = finetune(**{**options, **plan.options(), "time": max(left_min, 0.05)}, callbacks=[replan],
                      record={"plan": plan.to_dict()})
    _record(result.run_dir, plan, replan.changes, time.monotonic() - plan.started)
    echo(f"{time.monotonic() - plan.started:.0f} s of the {minutes * 60:.0f} s budget")
    return plan, result


def _record(run_dir, plan: FinetunePlan, changes: list[dict[str, int]], total_s: float) -> None:
    """config.yaml gains the re-planned epochs and the seconds the whole run took."""
    import yaml

    from ..semantic.run import write_yaml

    path = run_dir / "config.yaml"
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    saved.setdefault("plan", plan.to_dict())
    saved["plan"]["replanned"] = [{"after_epoch": c["after_epoch"], "epochs": c["to"]} for c in changes]
    saved["plan"]["total_s"] = round(total_s, 1)
    write_yaml(path, saved)
