"""Re-planning while a stage trains: a CPU shared with other work speeds up and slows down, so after each epoch
the remaining epochs are fitted again to the stage's end time, and the learning-rate schedule's remaining part is
stretched or compressed to match (the steps already taken keep their rates; the schedule still ends annealed).

The refits and the time measures travel in ``last.ckpt`` (the callback's state), so ``imseg train --resume``
replays them onto the restored schedule and goes on with the budget that was left when the checkpoint was written:
a resumed run follows the plan an uninterrupted one follows.
"""

from __future__ import annotations

import math
import time
from typing import Any

#: the callback's key in last.ckpt's callback states (how a resumed run knows it was planned)
STATE_KEY = "imseg.plan.Replan"


def now() -> float:
    """The clock the refits read (seconds, monotonic)."""
    return time.monotonic()


def make_replan_callback(end_time: float | None, refit: bool = True):
    """A Lightning callback that refits ``max_epochs`` to ``end_time`` (a :func:`now` value) after every epoch.

    ``end_time`` None: a resumed run, whose end time, refits and time measures come from last.ckpt.
    ``refit`` False: keep ``max_epochs`` as given (an explicit ``epochs`` on resume wins over the plan).
    """
    from ..module import _lightning

    L = _lightning()

    class Replan(L.Callback):
        def __init__(self) -> None:
            self.end_time, self.refit = end_time, refit
            self.first: tuple[int, float] | None = None  # (epochs done, time) when the first epoch ended
            self.last = 0.0  # time the latest epoch ended
            self.changes: list[dict[str, int]] = []  # {"after_epoch", "from", "to", "steps"}: the refits so far
            self.restored: dict[str, Any] | None = None

        @property
        def state_key(self) -> str:
            return STATE_KEY

        def state_dict(self) -> dict[str, Any]:
            return {"changes": [dict(c) for c in self.changes],
                    "first_done": self.first[0] if self.first else None,
                    "timed_s": self.last - self.first[1] if self.first else None,  # first epoch end to the latest
                    "left_s": self.end_time - self.last if self.first and self.end_time is not None else None}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.restored = state
            self.changes = [dict(c) for c in state.get("changes", [])]

        def on_train_start(self, trainer, module) -> None:
            """A resumed run: the restored schedule is the plan's first one; replay the refits onto it."""
            state, self.restored = self.restored, None
            if state is None:
                return
            base = now()
            if state.get("first_done") is not None:
                self.first = (int(state["first_done"]), base - float(state["timed_s"]))
            if state.get("left_s") is not None:
                self.end_time = base + float(state["left_s"])
            if not self.refit or (self.changes and int(trainer.max_epochs) != self.changes[0]["from"]):
                self.refit = False  # epochs given on resume: they win, and the schedule is theirs
                return
            for change in self.changes:  # none: the stage goes on refitting, as it would have
                _stretch_schedules(trainer, change)
                trainer.fit_loop.max_epochs = change["to"]

        def on_train_epoch_end(self, trainer, module) -> None:
            t, done = now(), int(trainer.current_epoch) + 1
            self.last = t
            if self.first is None:  # the first epoch also fills caches: not a measure
                self.first = (done, t)
                return
            if trainer.should_stop or not self.refit or self.end_time is None:
                return
            epoch_s = (t - self.first[1]) / (done - self.first[0])  # the mean so far: steadier than the last one
            epochs = int(trainer.max_epochs)
            wanted = max(done + 1, done + math.floor((self.end_time - t) / epoch_s))
            if wanted == epochs or abs(wanted - epochs) < max(1, 0.1 * (epochs - done)) or done >= epochs:
                return
            change = {"after_epoch": done, "from": epochs, "to": wanted, "steps": int(trainer.num_training_batches)}
            _stretch_schedules(trainer, change)
            trainer.fit_loop.max_epochs = wanted
            self.changes.append(change)

    return Replan()


def _stretch_schedules(trainer, change: dict[str, int]) -> None:
    """Stretch every step-wise schedule's remaining part from ``change["from"]`` to ``change["to"]`` epochs."""
    steps, done = change["steps"], change["after_epoch"]
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if hasattr(scheduler, "lr_lambdas"):
            scheduler.lr_lambdas = [_stretched(f, done * steps, change["from"] * steps, change["to"] * steps)
                                    for f in scheduler.lr_lambdas]


def _stretched(factor, start: int, old_total: int, new_total: int):
    """``factor`` unchanged before step ``start``; its steps ``start..old_total`` spread over ``start..new_total``."""
    ratio = (old_total - start) / max(new_total - start, 1)

    def stretched(step: int) -> float:
        return factor(step) if step <= start else factor(start + (step - start) * ratio)

    return stretched
