"""Re-planning while a stage trains: a CPU shared with other work speeds up and slows down, so after each epoch
the remaining epochs are fitted again to the stage's end time, and the learning-rate schedule's remaining part is
stretched or compressed to match (the steps already taken keep their rates; the schedule still ends annealed)."""

from __future__ import annotations

import math
import time


def make_replan_callback(end_time: float):
    """A Lightning callback that refits ``max_epochs`` to ``end_time`` (``time.monotonic()``) after every epoch."""
    from ..module import _lightning

    L = _lightning()

    class Replan(L.Callback):
        def __init__(self) -> None:
            self.first: tuple[int, float] | None = None  # (epochs done, time) when the first epoch ended
            self.changes: list[tuple[int, int]] = []  # (after epoch, new max_epochs)

        def on_train_epoch_end(self, trainer, module) -> None:
            now, done = time.monotonic(), int(trainer.current_epoch) + 1
            if self.first is None:  # the first epoch also fills caches: not a measure
                self.first = (done, now)
                return
            if trainer.should_stop:
                return
            epoch_s = (now - self.first[1]) / (done - self.first[0])  # the mean so far: steadier than the last one
            epochs = int(trainer.max_epochs)
            wanted = max(done + 1, done + math.floor((end_time - now) / epoch_s))
            if wanted == epochs or abs(wanted - epochs) < max(1, 0.1 * (epochs - done)) or done >= epochs:
                return
            steps = int(trainer.num_training_batches)
            for config in trainer.lr_scheduler_configs:
                scheduler = config.scheduler
                if hasattr(scheduler, "lr_lambdas"):
                    scheduler.lr_lambdas = [_stretched(f, done * steps, epochs * steps, wanted * steps)
                                            for f in scheduler.lr_lambdas]
            trainer.fit_loop.max_epochs = wanted
            self.changes.append((done, wanted))

    return Replan()


def _stretched(factor, start: int, old_total: int, new_total: int):
    """``factor`` unchanged before step ``start``; its steps ``start..old_total`` spread over ``start..new_total``."""
    ratio = (old_total - start) / max(new_total - start, 1)

    def stretched(step: int) -> float:
        return factor(step) if step <= start else factor(start + (step - start) * ratio)

    return stretched
