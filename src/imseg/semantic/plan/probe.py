"""The timing probe: a few real training steps and validation batches of the planned model on this machine."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from typing import Any

#: steps timed after one untimed warm-up step (allocation, first decode of cached images, kernel selection)
PROBE_STEPS = 4


@dataclass
class ProbeResult:
    step_s: float  # one optimizer step on a training batch (loading and augmentation included)
    val_image_s: float  # one validation image, forward only
    steps_per_epoch: int
    val_images: int

    @property
    def epoch_s(self) -> float:
        """Seconds an epoch takes: its steps, its validation pass, and the per-epoch checkpoint write."""
        return self.steps_per_epoch * self.step_s + self.val_images * self.val_image_s + 0.5

    def to_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "epoch_s": round(self.epoch_s, 2)}

    def line(self) -> str:
        """The plan printout's probe line."""
        return (f"  probe: {self.step_s:.3f} s a step x {self.steps_per_epoch} steps + {self.val_images} validation "
                f"images x {self.val_image_s * 1000:.1f} ms = {self.epoch_s:.1f} s an epoch")


def probe(cfg, datasets: dict, num_classes: int, ignore_index: int | None, steps: int = PROBE_STEPS,
          give_up_s: float = float("inf")) -> ProbeResult:
    """Time ``steps`` training steps and two validation batches of ``cfg``'s model (a TrainConfig) on ``datasets``;
    a timed step slower than ``give_up_s`` ends the timing there (a setting already beaten needs no precision)."""
    import torch

    from ..module import _make_module_class
    from ..train import EpochSampler, SeededDataset

    torch.manual_seed(cfg.seed)
    module = _make_module_class()(asdict(cfg), num_classes, ignore_index, [str(i) for i in range(num_classes)])
    model, criterion = module.model.train(), module.criterion
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = SeededDataset(datasets["train"], cfg.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.batch, sampler=EpochSampler(len(train), cfg.seed),
                                         drop_last=len(train) > cfg.batch)
    # bf16 autocast as Lightning's "bf16-mixed" runs the planned epochs (the probe runs on the CPU)
    mixed = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=bool(cfg.amp))
    times: list[float] = []
    while len(times) <= steps:
        for images, masks in _timed_batches(loader, times, steps):
            with mixed():
                logits = model(images)
            loss = criterion(logits.float(), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times[-1] = time.perf_counter() - times[-1]
            if len(times) > 1 and times[-1] > give_up_s:
                return ProbeResult(step_s=times[-1], val_image_s=float("inf"), steps_per_epoch=len(loader),
                                   val_images=len(datasets["val"]))
    step_s = sorted(times[1:])[len(times[1:]) // 2]  # the median: robust to a step that another process slowed
    model.eval()
    val = datasets["val"]
    val_loader = torch.utils.data.DataLoader(val, batch_size=cfg.batch, shuffle=False)
    seen, start = 0, None
    with torch.no_grad():
        for i, (images, _) in enumerate(val_loader):
            if i == 1:  # the first batch warms up
                start, seen = time.perf_counter(), 0
            with mixed():
                model(images)
            seen += len(images)
            if i == 2:
                break
    val_image_s = (time.perf_counter() - start) / seen if start is not None else step_s / cfg.batch / 3
    return ProbeResult(step_s=step_s, val_image_s=val_image_s, steps_per_epoch=len(loader), val_images=len(val))


def _timed_batches(loader, times: list[float], steps: int):
    """Yields batches of ``loader`` until ``steps`` + 1 are done, appending each one's start time to ``times``."""
    iterator = iter(loader)
    while len(times) <= steps:
        times.append(time.perf_counter())
        try:
            yield next(iterator)
        except StopIteration:
            times.pop()
            return
