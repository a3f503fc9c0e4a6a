"""The planner's rules on synthetic fingerprints: each decision pinned, explicit options win, budgets fill."""

from __future__ import annotations

import pytest

from imseg.semantic.plan.budget import SAFETY, schedule, tta_seconds
from imseg.semantic.plan.fingerprint import CANDIDATE_SIZES, Fingerprint
from imseg.semantic.plan.rules import SECOND_STAGE_SHARE, Machine, plan_rules

CPU = Machine(cpus=2, gpu=False)


def fp(**kw) -> Fingerprint:
    """Photos of large objects (~250 px images) unless told otherwise."""
    base = dict(num_train=200, num_val=60, class_names=["background", "object"], median_size=(200, 260),
                min_side=150, max_side=440, same_size=False, grayscale=False, class_fraction=[0.75, 0.25],
                object_extent=0.3, thinnest=16.0,
                roundtrip={64: 0.983, 96: 0.990, 128: 0.992, 160: 0.994, 192: 0.995, 256: 0.996}, sampled=24)
    base.update(kw)
    return Fingerprint(**base)


def values(choices) -> dict:
    return {k: c.value for k, c in choices.items()}


def test_every_choice_has_a_reason():
    for case in (fp(), fp(thinnest=2.0), fp(max_side=40, median_size=(30, 40), min_side=20, roundtrip={})):
        for key, choice in plan_rules(case, CPU).items():
            assert isinstance(choice.reason, str) and len(choice.reason) > 10, key


def test_large_objects_letterbox_to_the_smallest_size_that_keeps_the_masks():
    v = values(plan_rules(fp(), CPU))
    assert (v["mode"], v["imgsz"]) == ("resize", 96)  # 64 keeps 0.983 < 0.9875 of the masks' IoU
    assert v["model_kwargs"] == {"encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]}  # 96 / 16 = 6 px
    assert v["loss"] == "ce+lovasz" and v["batch"] == 8 and v["lr"] == pytest.approx(2.8e-3, abs=1e-4)
    assert v["augment"]["vflip"] == 0 and v["augment"]["hflip"] == 0.5  # photos stay upright
    assert v["augment"]["color_jitter"] == 0.2
    assert v["second_stage"] == {"imgsz": 128, "share": SECOND_STAGE_SHARE, "lr_factor": 0.1}
    assert v["ema"] == 0.0 and v["class_weights"] is None and v["encoder"] == "resnet18"


def test_finer_masks_raise_the_size():
    v = values(plan_rules(fp(roundtrip={64: 0.95, 96: 0.97, 128: 0.98, 160: 0.985, 192: 0.99}), CPU))
    assert (v["mode"], v["imgsz"], v["model_kwargs"]["encoder_depth"]) == ("resize", 192, 5)


def test_tiny_images_train_whole_at_the_smallest_input():
    v = values(plan_rules(fp(median_size=(28, 28), min_side=28, max_side=28, same_size=True, roundtrip={},
                             thinnest=3.0), CPU))
    assert (v["mode"], v["imgsz"]) == ("resize", 64)
    assert v["model_kwargs"]["encoder_depth"] == 3  # 64 / 8 = 8 px at the deepest stage
    assert v["second_stage"] is None  # a larger size would only upsample


def test_thin_structures_train_on_native_crops_with_orientation_free_augmentation():
    thin = fp(median_size=(512, 512), min_side=512, max_side=512, same_size=True, grayscale=True, thinnest=4.0,
              num_train=25, num_val=5, roundtrip={s: 0.97 for s in CANDIDATE_SIZES if s < 512})
    v = values(plan_rules(thin, CPU))
    assert (v["mode"], v["imgsz"]) == ("native", 256)
    assert v["loss"] == "ce" and v["batch"] == 4 and v["lr"] == pytest.approx(2e-3)
    assert v["augment"]["vflip"] == 0.5 and v["augment"]["rotate90"] == 0.5 and v["augment"]["elastic"] > 0
    assert v["augment"]["scale"] == [1.6, 2.4]  # 0.8-1.2x native, relative to the 256 letterbox of 512 px images
    assert v["augment"]["color_jitter"] == {"brightness": 0.2, "contrast": 0.2}  # grayscale: no saturation or hue
    assert v["ema"] == 0.995  # 25 images / batch 4: 6 steps an epoch
    assert v["second_stage"] is None and v["model_kwargs"]["encoder_depth"] == 5


def test_huge_images_with_large_objects_are_letterboxed_and_thin_ones_tiled():
    huge = dict(median_size=(3000, 4000), min_side=2800, max_side=4200)
    coarse = values(plan_rules(fp(**huge, thinnest=400.0, roundtrip={s: 0.99 for s in CANDIDATE_SIZES}), CPU))
    assert (coarse["mode"], coarse["imgsz"]) == ("resize", 64)
    fine = values(plan_rules(fp(**huge, thinnest=6.0, roundtrip={s: 0.99 for s in CANDIDATE_SIZES}), CPU))
    assert (fine["mode"], fine["imgsz"]) == ("native", 256)  # 6 px lines would vanish at any letterbox size
    assert fine["augment"]["scale"] == [pytest.approx(0.8 * 4000 / 256), pytest.approx(1.2 * 4000 / 256)]


def test_many_classes_and_rare_classes_weight_the_cross_entropy():
    many = fp(class_names=[f"c{i}" for i in range(20)], class_fraction=[0.05] * 20)
    v = values(plan_rules(many, CPU))
    assert v["class_weights"] is None and v["loss"] == "ce+lovasz"
    rare = values(plan_rules(fp(class_names=["bg", "a", "b"], class_fraction=[0.9, 0.095, 0.005]), CPU))
    weights = rare["class_weights"]
    assert len(weights) == 3 and weights[2] > weights[1] > weights[0]
    assert all(0.2 <= w <= 5.0 for w in weights)


def test_few_images_keep_two_steps_an_epoch():
    v = values(plan_rules(fp(num_train=6), CPU))
    assert v["batch"] == 3 and v["ema"] == 0.995


def test_a_gpu_gets_a_larger_encoder():
    assert values(plan_rules(fp(), Machine(cpus=8, gpu=True)))["encoder"] == "resnet34"
    assert values(plan_rules(fp(), Machine(cpus=16, gpu=False)))["workers"] == 4


def test_explicit_options_win_and_later_rules_follow_them():
    v = values(plan_rules(fp(), CPU, {"imgsz": 256, "loss": "ce", "batch": 2}))
    assert (v["imgsz"], v["loss"], v["batch"]) == (256, "ce", 2)
    assert v["model_kwargs"]["encoder_depth"] == 5  # follows the given size
    assert v["second_stage"] is None  # a given size is kept to the end
    other = values(plan_rules(fp(), CPU, {"model": "fpn"}))
    assert other["model"] == "fpn" and other["model_kwargs"] == {}  # U-Net widths do not apply
    kept = plan_rules(fp(), CPU, {"epochs": 7, "augment": "none"})
    assert kept["augment"].value == "none" and kept["augment"].reason == "given"
    assert kept["second_stage"].value is None


@pytest.mark.parametrize("minutes", [1, 5, 14, 60])
def test_schedule_fills_the_budget_within_ten_percent(minutes):
    budget = minutes * 60.0
    tta = tta_seconds(0.01, 64, 10.0, 4 / 3, native=False)
    plan = schedule(budget, elapsed_s=0.05 * budget, epoch_s=0.5 + 0.01 * minutes, tta_s=tta,
                    second_stage={"imgsz": 128, "share": SECOND_STAGE_SHARE}, size_ratio=4 / 3)
    assert 0.9 * budget <= plan["planned_s"] <= budget * (1 - SAFETY / 2)
    share = SECOND_STAGE_SHARE * (plan["stage1"]["seconds"] + plan["stage2"]["seconds"])  # within one epoch of stage two
    assert abs(plan["stage2"]["seconds"] - share) <= plan["stage2"]["epoch_s"] + 0.1 * share


def _planned(minutes: float, step_s: float, **fingerprint):
    import time

    from imseg.semantic.plan.probe import ProbeResult
    from imseg.semantic.plan.runner import Plan, _schedule

    case = fp(**fingerprint)
    steps = max(1, case.num_train // plan_rules(case, CPU)["batch"].value)
    plan = Plan(minutes=minutes, fingerprint=case, choices=plan_rules(case, CPU), started=time.monotonic(),
                probe=ProbeResult(step_s=step_s, val_image_s=step_s / 20, steps_per_epoch=steps, val_images=60))
    _schedule(plan, {})
    return plan


def test_epochs_fill_the_budget_and_a_short_first_stage_gets_no_second():
    fast = _planned(14, step_s=0.2)  # ~6 s an epoch
    assert fast.second_stage is not None and fast.choices["epochs"].value == fast.schedule["stage1"]["epochs"] >= 80
    assert fast.choices["warmup"].value == 1.0 and fast.schedule["tta_images"] == 60
    slow = _planned(14, step_s=4.0)  # ~110 s an epoch: a handful of epochs
    assert slow.second_stage is None and "no second stage" in slow.choices["second_stage"].reason
    assert "stage2" not in slow.schedule and slow.choices["epochs"].value < 20
    assert slow.choices["warmup"].value < 1.0  # a tenth of a very short run
    assert 16 <= slow.schedule["tta_images"] < 60  # the test-time choice keeps to its share of the budget
    assert slow.schedule["planned_s"] <= 14 * 60


def test_a_weight_average_needs_a_run_longer_than_its_horizon():
    few = {"num_train": 24}  # 3 steps an epoch: the rules average the weights
    assert _planned(14, step_s=0.2, **few).choices["ema"].value == 0.995
    short = _planned(2, step_s=4.0, **few).choices["ema"]
    assert short.value == 0.0 and "horizon" in short.reason


def test_a_replanned_schedule_keeps_the_steps_taken_and_still_ends_annealed():
    from imseg.semantic.plan.replan import _stretched

    def factor(step):
        return 1.0 - step / 100

    longer, shorter = _stretched(factor, 50, 100, 150), _stretched(factor, 50, 100, 75)
    assert [longer(s) for s in (0, 25, 50)] == [factor(s) for s in (0, 25, 50)]
    assert longer(100) == factor(75) and longer(150) == factor(100) == 0.0
    assert shorter(75) == factor(100) and shorter(60) == factor(70)


def test_mixed_precision_only_where_the_hardware_multiplies_half_precision():
    assert values(plan_rules(fp(), CPU))["amp"] is False  # emulated bf16 would be slower than fp32
    assert values(plan_rules(fp(), Machine(cpus=2, gpu=False, bf16=True)))["amp"] is True
    assert values(plan_rules(fp(), Machine(cpus=8, gpu=True)))["amp"] is True
    assert values(plan_rules(fp(), Machine(cpus=2, gpu=False, bf16=True), {"amp": False}))["amp"] is False


def test_machine_here_reads_native_bf16(monkeypatch):
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "1")
    assert Machine.here("cpu").bf16 is True
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "0")
    assert Machine.here("cpu").bf16 is False
