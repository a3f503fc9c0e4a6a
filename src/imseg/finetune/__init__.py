"""Fine-tuning SAM, MobileSAM and SAM 2.1 on your own data: ``finetune(...)`` (``imseg finetune``) writes a run
directory whose weights are in the official checkpoint layout (see :mod:`imseg.finetune.run`).

Modules: ``data`` (any instance-style data set -> checked samples), ``cache`` (frozen-encoder embeddings on
disk), ``dataset`` (torch side), ``recipe`` (prompts, correction clicks, losses), ``module`` (LightningModule,
optimizer), ``loop`` (callbacks, time budget), ``loggers`` (TensorBoard), ``train`` (``finetune``), ``run`` (run
directory, loading), ``evaluate`` (box / click metrics of a run against its starting checkpoint), ``plan`` (the
rules of a run planned for a time budget), ``probe`` (its timings), ``planned`` (``--time`` without ``--epochs``);
``families`` (what differs between SAM and SAM 2.1), ``sam2_recipe`` and ``sam2_run`` (the SAM 2.1 side).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FinetuneConfig", "finetune"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module 'imseg.finetune' has no attribute {name!r}")
