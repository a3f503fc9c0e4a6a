"""`imseg train --resume` of a planned run keeps its mid-run refits: the epochs refitted to the time left and the
stretched learning-rate schedule are in last.ckpt, so a run interrupted between two refits and resumed follows the
same plan, to the last digit, as one that ran straight through."""

from __future__ import annotations

import contextlib
import csv
import shutil

import pytest
import torch

from imseg.semantic.plan import replan

#: fake seconds at the end of each epoch (epochs done -> time): 10 s epochs, then 20 s ones from the fourth
ENDS = {0: 0.0, 1: 10.0, 2: 20.0, 3: 30.0, 4: 50.0, 5: 70.0, 6: 90.0, 7: 110.0}
#: refitting to an end at 60 s: after epoch 2, 4 planned epochs become 6 (10 s each); after epoch 4, 5 (slower)
EXPECTED = [{"after_epoch": 2, "from": 4, "to": 6, "steps": 2}, {"after_epoch": 4, "from": 6, "to": 5, "steps": 2}]


def _callbacks(stop_after: int | None = None):
    import lightning.pytorch as L

    class Clock(L.Callback):
        """The refits' clock: a machine whose epochs slow down, the same in every process."""

        def on_train_start(self, trainer, module):
            Clock.t = ENDS[int(trainer.current_epoch)]

        def on_train_epoch_end(self, trainer, module):
            Clock.t = ENDS[int(trainer.current_epoch) + 1]

    class Interrupt(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if int(trainer.current_epoch) + 1 == stop_after:
                trainer.should_stop = True

    Clock.t = 0.0
    return Clock, [Clock(), *([Interrupt()] if stop_after else [])]


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _ckpt(run):
    return torch.load(run / "weights" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_resumed_planned_run_replays_its_refits_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    from imseg.semantic.train import load_checkpoint, train
    from test_train import NAMES, TINY, squares

    cfg = dict(TINY, epochs=4, batch=8, patience=0, project=str(tmp_path))
    clock, extra = _callbacks()
    monkeypatch.setattr(replan, "now", lambda: clock.t)
    straight = train(dict(cfg, name="straight"), datasets=squares(), class_names=NAMES,
                     callbacks=[*extra, replan.make_replan_callback(60.0)])
    assert straight.epochs_run == 5 and len(_rows(straight.run_dir)) == 5
    assert _ckpt(straight.run_dir)["callbacks"][replan.STATE_KEY]["changes"] == EXPECTED

    clock, extra = _callbacks(stop_after=3)  # between the two refits
    monkeypatch.setattr(replan, "now", lambda: clock.t)
    stopped = train(dict(cfg, name="resumed"), datasets=squares(), class_names=NAMES,
                    callbacks=[extra[0], replan.make_replan_callback(60.0), extra[1]])
    assert stopped.epochs_run == 3 and _ckpt(stopped.run_dir)["callbacks"][replan.STATE_KEY]["changes"] == EXPECTED[:1]

    given = shutil.copytree(stopped.run_dir, tmp_path / "given")

    clock, extra = _callbacks()  # a new process: the plan comes from last.ckpt alone
    monkeypatch.setattr(replan, "now", lambda: clock.t)
    resumed = train(resume=stopped.run_dir, datasets=squares(), class_names=NAMES, callbacks=extra)
    assert resumed.epochs_run == 5
    assert _ckpt(resumed.run_dir)["callbacks"][replan.STATE_KEY]["changes"] == EXPECTED
    assert _rows(resumed.run_dir) == _rows(straight.run_dir)  # every epoch's losses, scores and learning rate
    a, b = load_checkpoint(straight.last), load_checkpoint(resumed.last)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    sa, sb = _ckpt(straight.run_dir), _ckpt(resumed.run_dir)
    assert sa["lr_schedulers"][0]["last_epoch"] == sb["lr_schedulers"][0]["last_epoch"] == 5 * 2
    assert sa["optimizer_states"][0]["param_groups"][0]["lr"] == sb["optimizer_states"][0]["param_groups"][0]["lr"]

    # epochs given on resume win over the plan's refits: no replay, no refit after
    clock, extra = _callbacks()
    monkeypatch.setattr(replan, "now", lambda: clock.t)
    explicit = train(resume=given, datasets=squares(), class_names=NAMES, callbacks=extra, epochs=4)
    assert explicit.epochs_run == 4 and len(_rows(given)) == 4
    assert _ckpt(given)["callbacks"][replan.STATE_KEY]["changes"] == EXPECTED[:1]
    assert _rows(given)[:3] == _rows(straight.run_dir)[:3]


# ----------------------------------------------------------------------------- the whole plan on resume
#: the plan's clock in these tests: each training epoch takes 1000 s, everything else none; a stage one of 3
#: epochs (its end time leaves no room for a 4th), then one stage-two epoch at 64 px, then the test-time choice
EPOCH_S = 1000.0
SCHEDULE = {"budget_s": 12000.0, "planning_s": 0.0, "tta_s": 3000.0, "epoch_s": EPOCH_S, "tta_images": 2,
            "stage1": {"epochs": 3, "seconds": 3 * EPOCH_S}, "stage2": {"epochs": 1, "seconds": 5000.0,
                                                                        "epoch_s": 4 * EPOCH_S}, "planned_s": 11016.0}


class Killed(RuntimeError):
    """The process dies here."""


def _plan_callbacks(monkeypatch, start: float = 0.0, kill_at: tuple[int, int | None] | None = None,
                    stage2_epoch_s: float = 4 * EPOCH_S):
    """(callbacks, trained): the plan's clock, a kill at (fit, epoch) (epoch None: as the fit starts), and the
    (fit, epoch) pairs trained, fits counted from 1 in this process. A stage-two epoch (64 px) takes
    ``stage2_epoch_s``: by default the plan's estimate, stage one's pace times the pixels."""
    import lightning.pytorch as L

    clock, trained = {"t": start, "fits": 0}, []
    monkeypatch.setattr(replan, "now", lambda: clock["t"])

    class Machine(L.Callback):
        def on_fit_start(self, trainer, module):
            clock["fits"] += 1
            if kill_at == (clock["fits"], None):
                raise Killed

        def on_train_epoch_start(self, trainer, module):
            if kill_at == (clock["fits"], int(trainer.current_epoch)):
                raise Killed
            trained.append((clock["fits"], int(trainer.current_epoch)))

        def on_train_epoch_end(self, trainer, module):
            clock["t"] += stage2_epoch_s if module.cfg["imgsz"] == 64 else EPOCH_S

    return [Machine()], trained


def _planned(tmp_path, monkeypatch, kill_at, schedule=SCHEDULE, **clock):
    """A two-stage plan (a tiny U-Net at 32 px, then 64 px) on 6 small images, run until ``kill_at`` (None: to
    its end)."""
    from imseg.semantic.plan import Choice, make_plan, train_planned
    from test_plan import _folder_dataset

    data = _folder_dataset(tmp_path / "data")
    given = {"model": "unet", "encoder": "resnet18", "model_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
             "imgsz": 32, "batch": 3, "epochs": 3, "patience": 0, "save_period": 1, "workers": 0, "cache": True}
    fixed = {"project": str(tmp_path / "runs"), "name": "p", "seed": 0, "progress": False, "val_samples": 1}
    callbacks, trained = _plan_callbacks(monkeypatch, kill_at=kill_at, **clock)
    plan, built = make_plan(data, schedule["budget_s"] / 60, given, fixed, run_probe=False)
    plan.choices["second_stage"] = Choice({"imgsz": 64, "share": 0.4, "lr_factor": 0.1}, "a larger second stage")
    plan.schedule = {k: dict(v) if isinstance(v, dict) else v for k, v in schedule.items()}
    with pytest.raises(Killed) if kill_at else contextlib.nullcontext():
        train_planned(plan, built, callbacks=callbacks, echo=lambda _: None)
    return tmp_path / "runs" / "p", trained


def _finished_plan(run, budget_s: float, used_before: float):
    """The checks every finished planned run passes: a stage-two run from stage one's weights, the test-time
    choice stored in its weights and config.yaml, and the plan's timings against the budget."""
    import yaml

    from imseg.semantic.checkpoints import load_checkpoint

    saved = yaml.safe_load((run / "config.yaml").read_text())
    plan = saved["plan"]
    assert saved["train"]["imgsz"] == 64 and saved["train"]["init"] == str(run / "stage1" / "weights" / "last.pt")
    assert saved["stage1"] == str(run / "stage1") and len(_rows(run)) == 1
    assert [int(r["epoch"]) for r in _rows(run / "stage1")] == [0, 1, 2]
    stored = load_checkpoint(run / "weights" / "best.pt")["inference"]
    resize = plan["choices"]["mode"]["value"] == "resize"
    assert stored == {"resize": resize, "tta": plan["tta"]["tta"], "scales": plan["tta"]["scales"]}
    timings = plan["timings"]
    assert set(timings) == {"planning_s", "stage1_s", "stage2_s", "tta_s", "total_s"}
    assert timings["total_s"] == pytest.approx(sum(v for k, v in timings.items() if k != "total_s"), abs=0.5)
    assert plan["time_used"]["budget_s"] == budget_s and plan["time_used"]["seconds"] == timings["total_s"]
    assert plan["schedule"]["resumed"][0]["used_s"] == pytest.approx(used_before, abs=0.2)
    assert plan["minutes"] == budget_s / 60
    return plan


@pytest.mark.slow
def test_planned_run_interrupted_in_stage_one_resumes_into_stage_two_and_the_test_time_choice(tmp_path, monkeypatch):
    from imseg.semantic.plan.resume import resume_planned
    from imseg.semantic.plan.runner import stage_seconds

    run, trained = _planned(tmp_path, monkeypatch, kill_at=(1, 2))  # killed as stage one's third epoch begins
    assert trained == [(1, 0), (1, 1)] and not (run / "weights").exists()
    before = _rows(run / "stage1")
    timer_s = stage_seconds(run / "stage1" / "weights" / "last.ckpt")  # stage one's training seconds so far

    callbacks, trained = _plan_callbacks(monkeypatch, start=50_000.0)  # a new process, its own clock
    _, result = resume_planned(run / "stage1", minutes=100, callbacks=callbacks, echo=lambda _: None)
    assert result.run_dir == run
    assert trained == [(1, 2), (2, 0)]  # stage one's last epoch (the first two are kept), then stage two's one
    assert _rows(run / "stage1")[:2] == before
    # --time with --resume: the whole run's new budget; the time used (stage one's seconds to its checkpoint) counts
    plan = _finished_plan(run, 6000.0, timer_s)
    assert plan["timings"]["stage1_s"] == pytest.approx(timer_s + EPOCH_S, abs=0.2)
    assert plan["schedule"]["stage2"]["epochs_run_planned"] == 1


@pytest.mark.slow
def test_planned_run_interrupted_between_stages_or_in_the_test_time_choice_finishes_its_plan(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imseg.cli import app
    from imseg.semantic.plan import runner
    from imseg.semantic.plan.resume import resume_planned

    run, trained = _planned(tmp_path, monkeypatch, kill_at=(2, None))  # killed as stage two starts
    assert trained == [(1, 0), (1, 1), (1, 2)] and not (run / "weights" / "last.ckpt").exists()
    stage1 = {p.name: p.read_bytes() for p in (run / "stage1" / "weights").iterdir()}
    rows = _rows(run / "stage1")

    callbacks, trained = _plan_callbacks(monkeypatch, start=70_000.0)
    with monkeypatch.context() as m:  # and killed again while it chooses the test-time augmentation
        m.setattr(runner, "choose_tta", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            resume_planned(run, callbacks=callbacks, echo=lambda _: None)
    assert trained == [(1, 0)]  # stage two's one epoch; stage one is not trained again
    assert {p.name: p.read_bytes() for p in (run / "stage1" / "weights").iterdir()} == stage1
    assert _rows(run / "stage1") == rows

    result = CliRunner().invoke(app, ["train", "--resume", str(run)])  # only the test-time choice is left
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "stage 1, stage 2 done" in result.output and "time used:" in result.output
    plan = _finished_plan(run, 12000.0, 3 * EPOCH_S)
    assert plan["timings"]["stage2_s"] == 4 * EPOCH_S and len(plan["schedule"]["resumed"]) == 2

    again = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert again.exit_code != 0 and "finished its plan" in again.output


@pytest.mark.slow
def test_stage_two_refits_its_epochs_when_they_run_faster_than_the_pixels_predict(tmp_path, monkeypatch):
    """Stage two's first estimate is stage one's pace times the pixels (4000 s an epoch here); its epochs take
    1000 s, so after its second epoch (the first one is not a measure) it is refitted to fill the time left, as
    stage one is."""
    import yaml

    # a 24000 s budget whose stage one still ends after its 3 epochs: 3000 s of it, 3000 s for the test-time
    # choice, 18000 s for stage two
    schedule = {**SCHEDULE, "budget_s": 24000.0, "stage2": {**SCHEDULE["stage2"], "seconds": 17000.0}}
    run, trained = _planned(tmp_path, monkeypatch, kill_at=None, schedule=schedule, stage2_epoch_s=EPOCH_S)
    plan = yaml.safe_load((run / "config.yaml").read_text())["plan"]
    assert [epoch for fit, epoch in trained if fit == 1] == [0, 1, 2]
    stage2 = [epoch for fit, epoch in trained if fit == 2]
    assert plan["schedule"]["stage2"]["epochs_run_planned"] == 3  # floor(18000 / 4000) less one
    # refitted to the stage's end: 18000 s less the stage overhead, at 1000 s an epoch
    assert len(stage2) == 17 and len(_rows(run)) == 17
    assert plan["schedule"]["stage2"]["replanned"][0] == {"after_epoch": 2, "epochs": 17}
