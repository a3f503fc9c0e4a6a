"""The timing probe of a planned fine-tuning run: a few real steps of the configured model on this machine.

With a frozen encoder and the embedding cache, the probe's images are encoded into the run's own cache (timed:
the encoding cost), then the steps are timed on cached embeddings as every epoch after the first sees them; the
encoding it did is not repeated by the run. Otherwise the steps are timed as they come (the encoder inside).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..semantic.plan.probe import PROBE_STEPS
from .plan import Timing

__all__ = ["ProbeOutcome", "count_uncached", "probe"]


@dataclass
class ProbeOutcome:
    timing: Timing
    start: str  # "checkpoint PATH" | "random initialisation"
    reuse: bool  # frozen encoder with the embedding cache on
    to_encode: int  # train + val images not yet in the cache at this size (all of them when not reused)
    build_s: float  # seconds to build the model and its loaders (the run will spend them again)


def _device(cfg: Any) -> torch.device:
    from ..semantic.ddp import uses_gpu

    return torch.device("cuda" if uses_gpu(cfg.accelerator) else "cpu")


def _median(times: list[float]) -> float:
    timed = times[1:] or times  # the first one warms up (allocation, kernel choice)
    return float(np.median(timed))


def count_uncached(datasets: list[Any], cache: Any) -> int:
    """Images of ``datasets`` whose embedding is not in ``cache`` (all of them without a cache)."""
    from .cache import file_key

    total = sum(len(d) for d in datasets)
    if cache is None:
        return total
    return sum(not cache.path(file_key(s.image)).is_file() for d in datasets for s in d.samples)


def _write_s(model: torch.nn.Module) -> float:
    """An epoch writes last.pt, best.pt and last.ckpt: three times one state dict's write."""
    from .run import save_official

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save_official(Path(tmp) / "w.pt", model)
        return 3 * (time.perf_counter() - start)


def _encode_times(module: Any, dataset: Any, indices: list[int], store: bool) -> list[float]:
    """Seconds per image through the encoder; ``store``: into the cache (work the run then skips)."""
    from .dataset import FinetuneDataset

    times = []
    plain = FinetuneDataset(dataset.samples, dataset.imgsz)  # images even where the cache has them
    for i in indices:
        item = dataset[i] if store else plain[i]
        if "embedding" in item:
            continue
        start = time.perf_counter()
        if store:
            module.embed(item)
        else:
            with torch.no_grad():
                module.model.image_encoder(module.model.preprocess(item["image"][None].to(module.device)))
        times.append(time.perf_counter() - start)
    return times


def probe(cfg: Any, data: Any, steps: int = PROBE_STEPS, max_s: float = float("inf")) -> ProbeOutcome:
    """Time ``cfg`` (a FinetuneConfig at its imgsz and batch) on ``data`` (read FinetuneData); the steps stop
    early (after two) once they have taken ``max_s`` seconds: slow steps need no more precision."""
    from ..semantic.module import _lightning
    from .loop import build_loaders
    from .module import make_module
    from .train import _precision, prepare_start

    start_s = time.perf_counter()
    cfg, model, start, frozen, encoder_norms = prepare_start(cfg)
    precision = _precision(cfg)
    loaders, _, cache = build_loaders(cfg, model, frozen, precision, data=data)
    module = make_module(_lightning())(model, asdict(cfg), cache, frozen, encoder_norms).to(_device(cfg))
    build_s = time.perf_counter() - start_s
    train, val = loaders["train"].dataset, loaders["val"].dataset
    reuse = cache is not None
    n_batches = min(steps + 1, -(-len(train) // cfg.batch))
    batches = [list(range(b * cfg.batch, min((b + 1) * cfg.batch, len(train)))) for b in range(n_batches)]
    autocast = torch.autocast(module.device.type, dtype=torch.bfloat16) if "bf16" in precision else \
        contextlib.nullcontext()
    val_indices = list(range(min(3, len(val))))
    with autocast, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        probe_indices = [i for b in batches for i in b]
        encode = []
        if reuse:
            encode = _encode_times(module, train, probe_indices, True) + _encode_times(module, val, val_indices, True)
        if len(encode) < 2:  # everything was cached already: time the encoder without storing
            encode += _encode_times(module, train, probe_indices[:3], False)
        step_s = _step_seconds(module, train, batches, cfg.lr, max_s)
        val_image_s = _val_seconds(module, val, val_indices)
    timing = Timing(size=cfg.imgsz, encode_s=_median(encode), step_s=step_s, val_image_s=val_image_s,
                    write_s=_write_s(model), batch=cfg.batch)
    to_encode = count_uncached([train, val], cache) if reuse else len(train) + len(val)
    return ProbeOutcome(timing, start, reuse, to_encode, build_s)


def _step_seconds(module: Any, dataset: Any, batches: list[list[int]], lr: float, max_s: float) -> float:
    """Median seconds of a training step (items read, forward, backward, AdamW) after one warm-up step."""
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    module.on_train_epoch_start()
    times = []
    for b, indices in enumerate(batches):
        start = time.perf_counter()
        loss = module.training_step([dataset[i] for i in indices], b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
        if len(times) >= 2 and sum(times) > max_s:
            break
    return _median(times)


def _val_seconds(module: Any, dataset: Any, indices: list[int]) -> float:
    """Median seconds of one validation image (item read, embedding, box-prompt masks) after a warm-up one."""
    module.eval()
    module.on_validation_epoch_start()
    times = []
    with torch.no_grad():
        for i in indices:
            start = time.perf_counter()
            module.validation_step([dataset[i]], i)
            times.append(time.perf_counter() - start)
    module.train()
    return _median(times) if times else 0.0
