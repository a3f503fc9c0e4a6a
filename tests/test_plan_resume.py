"""`imseg train --resume` of a planned run keeps its mid-run refits: the epochs refitted to the time left and the
stretched learning-rate schedule are in last.ckpt, so a run interrupted between two refits and resumed follows the
same plan, to the last digit, as one that ran straight through."""

from __future__ import annotations

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
