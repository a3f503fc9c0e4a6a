"""Where the benchmarks find the real data sets: the ``IMSEG_DATA`` environment variable, as for the test suite
(tests/conftest.py), with the same default: ``shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$IMSEG_DATA``, else ``../shared/data`` relative to the repository root."""
    return Path(os.environ.get("IMSEG_DATA", REPO.parent / "shared" / "data")).expanduser()
