"""The fine-tuning time planner: its decisions pinned on synthetic facts and timings (no real time is asserted),
a plan that fits its budget, and `imseg finetune --time --plan` and a planned run on a few real horse photos."""

from __future__ import annotations

import math

import pytest
import yaml

from imseg.finetune.plan import (
    ENCODE_SHARE,
    MIN_EPOCHS,
    Facts,
    Timing,
    choose_batch,
    choose_imgsz,
    epoch_choices,
    plan_rules,
    schedule,
)


def _facts(**extra) -> Facts:
    base = dict(train_images=200, val_images=64, to_encode=264, native_side=500, reuse=True, pretrained=False)
    base.update(extra)
    return Facts(**base)


TIMING = Timing(size=256, encode_s=0.5, step_s=0.2, val_image_s=0.01, write_s=0.5, batch=4)


def _seconds(plan: dict, facts: Facts, t: Timing) -> float:
    """What the planned run costs when every part takes its measured time."""
    steps = math.ceil(facts.train_images / t.batch)
    epoch = steps * t.step_s + facts.val_images * t.val_image_s + t.write_s
    encode = facts.to_encode * t.encode_s if facts.reuse else 0.0
    return plan["planning_s"] + plan["setup_s"] + encode + plan["epochs"] * epoch


def test_frozen_encoder_plans_the_encoding_epoch_apart():
    facts = _facts()
    plan = schedule(600.0, 20.0, 10.0, TIMING, facts)
    # an epoch: 50 steps x 0.2 s + 64 x 0.01 s + 0.5 s = 11.14 s; the first also encodes 264 x 0.5 s = 132 s
    assert plan["epoch_s"] == pytest.approx(11.14) and plan["first_epoch_s"] == pytest.approx(143.1, abs=0.05)
    assert plan["epochs"] == 37  # 1 + floor((600 x 0.96 - 30 - 143.14) / 11.14)
    assert 0.9 * 600 <= _seconds(plan, facts, TIMING) <= 600
    # the same run counted as if every epoch were a cached one would overrun the budget
    naive = 1 + math.floor((600 * 0.96 - 30 - 11.14) / 11.14)
    assert naive > plan["epochs"] and 30 + 132 + naive * 11.14 > 600


def test_a_warm_cache_or_the_whole_model_need_no_encoding_epoch():
    warm = schedule(600.0, 20.0, 10.0, TIMING, _facts(to_encode=0))
    assert warm["encode_s"] == 0 and warm["epochs"] == 49  # 1 + floor((546 - 11.14) / 11.14)
    # the whole model: every step runs the encoder (its step time says so), nothing is encoded apart
    whole_t = Timing(size=256, encode_s=0.5, step_s=4 * 3 * 0.5, val_image_s=0.51, write_s=0.5, batch=4)
    whole = schedule(600.0, 20.0, 10.0, whole_t, _facts(reuse=False))
    assert whole["encode_s"] == 0 and whole["first_epoch_s"] == pytest.approx(whole["epoch_s"], abs=0.05)
    assert whole["epoch_s"] == pytest.approx(333.14)
    assert whole["epochs"] == 1


def test_plans_fit_their_budget_within_ten_percent():
    cases = [(minutes, n, reuse, t)
             for minutes in (5, 15, 25, 60)
             for n in (20, 200, 1000)
             for reuse in (True, False)
             for t in (TIMING, Timing(size=1024, encode_s=0.9, step_s=0.05, val_image_s=0.02, write_s=1.0, batch=4))]
    checked = 0
    for minutes, n, reuse, t in cases:
        facts = _facts(train_images=n, val_images=n // 4, to_encode=n + n // 4, reuse=reuse)
        budget = minutes * 60.0
        plan = schedule(budget, 30.0, 12.0, t, facts)
        spent = _seconds(plan, facts, t)
        if plan["first_epoch_s"] + 42 > budget * 0.9 or plan["epoch_s"] > 0.05 * budget:
            assert plan["epochs"] == 1 or spent <= budget  # one epoch is the least a run can do
            continue
        assert 0.9 * budget <= spent <= budget, (minutes, n, reuse, t, plan)
        checked += 1
    assert checked >= 20


def test_batch_is_the_recipes_unless_the_data_is_tiny():
    assert choose_batch(_facts()).value == 4
    assert choose_batch(_facts(train_images=5)).value == 2
    assert choose_batch(_facts(train_images=1)).value == 1


def test_input_size_rules():
    # random weights on 500 px images: no larger than the images (512), which fits a generous budget
    assert choose_imgsz(_facts(), TIMING, 3600.0, 20.0, 10.0).value == 512
    # a pretrained encoder may use SAM's own 1024 px when the budget allows it (encoding: 264 x 8 s = 29%)
    assert choose_imgsz(_facts(pretrained=True), TIMING, 7200.0, 20.0, 10.0).value == 1024
    assert choose_imgsz(_facts(pretrained=True), TIMING, 3600.0, 20.0, 10.0).value == 768  # 59% at 1024
    # a short budget: a smaller size, so that MIN_EPOCHS epochs fit and encoding stays within its share
    small = choose_imgsz(_facts(), TIMING, 300.0, 20.0, 10.0)
    assert small.value < 512
    plan = schedule(300.0, 20.0, 10.0, TIMING.scaled(small.value), _facts())
    assert plan["epochs"] >= MIN_EPOCHS and plan["encode_s"] <= ENCODE_SHARE * 300
    # many images: encoding them once is the cost that sets the size
    many = choose_imgsz(_facts(train_images=4000, val_images=1000, to_encode=5000), TIMING, 3600.0, 20.0, 10.0)
    assert many.value < 512 and "encoding" in many.reason
    # the whole model trained (the encoder runs, forward and backward, every step): a smaller size than frozen
    whole_t = Timing(size=256, encode_s=0.5, step_s=4 * 3 * 0.5, val_image_s=0.51, write_s=0.5, batch=4)
    whole = choose_imgsz(_facts(reuse=False), whole_t, 1500.0, 20.0, 10.0)
    frozen = choose_imgsz(_facts(), TIMING, 1500.0, 20.0, 10.0)
    assert whole.value < frozen.value
    # an encoder with one input size keeps it, whatever the budget
    assert choose_imgsz(_facts(fixed_size=1024), TIMING, 60.0, 20.0, 10.0).value == 1024
    # nothing fits: the smallest size, said so
    tiny = choose_imgsz(_facts(), TIMING, 30.0, 20.0, 5.0)
    assert tiny.value == 128 and "smallest" in tiny.reason


def test_given_options_win_and_reasons_are_recorded():
    facts = _facts()
    choices = plan_rules(facts, 600.0, 20.0, 10.0, TIMING, {"imgsz": 320, "batch": 8})
    assert (choices["imgsz"].value, choices["imgsz"].reason) == (320, "given")
    assert (choices["batch"].value, choices["batch"].reason) == (8, "given")
    plan = schedule(600.0, 20.0, 10.0, TIMING, facts, epochs=3)
    given = epoch_choices(plan, facts, {"epochs": 3})
    assert given["epochs"].value == 3 and "given" in given["epochs"].reason and "37 would fit" in given["epochs"].reason
    assert given["warmup"].value == pytest.approx(0.3)
    planned = epoch_choices(schedule(600.0, 20.0, 10.0, TIMING, facts), facts, {})
    assert planned["epochs"].value == 37 and "encodes 264 images once" in planned["epochs"].reason
    assert planned["warmup"].value == 1.0


@pytest.fixture(scope="module")
def horse_yaml(data_dir, tmp_path_factory):
    root = data_dir / "weizmann-horse"
    if not root.is_dir():
        pytest.skip("weizmann-horse not present")
    path = tmp_path_factory.mktemp("data") / "horses.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "train": ["horse001", "horse002", "horse003", "horse004"],
                                    "val": ["horse009", "horse012"]}))
    return path


def test_cli_plan_prints_the_plan_and_stops(horse_yaml, tmp_path):
    from typer.testing import CliRunner

    from imseg.cli import app

    common = ["finetune", "--data", str(horse_yaml), "--random-init", "--precision", "32", "--imgsz", "64",
              "--cache-dir", str(tmp_path / "cache"), "--project", str(tmp_path / "runs"), "--time", "3"]
    out = CliRunner().invoke(app, [*common, "--plan"])
    assert out.exit_code == 0, out.output
    assert "plan for 3 min" in out.output and "4 train / 2 val images" in out.output
    assert "imgsz = 64\n      given" in out.output
    assert "batch = 2\n      4 training images" in out.output
    assert "epochs = " in out.output and "warmup = " in out.output and "probe at 64 px" in out.output
    assert not (tmp_path / "runs").exists()  # planned, not trained
    refused = CliRunner().invoke(app, [*common, "--plan", "--epochs", "2"])
    assert refused.exit_code == 2 and "--plan prints the plan of a time budget" in refused.output


def test_a_planned_run_records_every_choice_and_its_reason(horse_yaml, tmp_path):
    from imseg.finetune.planned import plan_and_finetune

    plan, result = plan_and_finetune(1.0, echo=lambda line: None, data=str(horse_yaml), random_init=True,
                                     precision="32", imgsz=64, clicks=1, cache_dir=str(tmp_path / "cache"),
                                     project=str(tmp_path / "runs"), progress=False)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    choices = saved["plan"]["choices"]
    assert set(choices) == {"imgsz", "batch", "epochs", "warmup"} and all(c["reason"] for c in choices.values())
    assert choices["imgsz"] == {"value": 64, "reason": "given"}
    for key in ("imgsz", "batch", "epochs", "warmup"):  # the run trained what the plan chose
        assert saved["train"][key] == choices[key]["value"] == plan.choices[key].value, key
    assert saved["plan"]["timing"]["size"] == 64 and saved["plan"]["reference_timing"] is None
    assert saved["plan"]["facts"]["train_images"] == 4 and saved["plan"]["facts"]["reuse"] is True
    assert "total_s" in saved["plan"] and isinstance(saved["plan"]["replanned"], list)
    assert (result.run_dir / "weights" / "best.pt").is_file() and (result.run_dir / "metrics.csv").is_file()
