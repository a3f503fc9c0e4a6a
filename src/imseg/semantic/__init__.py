"""Semantic segmentation on your own data: datasets and transforms (``data``, ``transforms``),
models, losses, metrics, training, evaluation and prediction.

This package file stays light (no torch import); import the submodules you need::

    from imseg.semantic.data import load_data_config, build_datasets
"""

from __future__ import annotations
