"""Remembers the pairs that decoded cleanly, so validating the same dataset again decodes only what changed.

One JSON file per dataset folder under the imseg cache directory (``$IMSEG_HOME`` or ``~/.cache/imseg``), never
in the dataset itself (it may be read-only or shared). An entry's key holds every file's path, size and
modification time and the settings that decide its class counts, so an edited, replaced or touched file, or
another class list, is decoded again. Only clean pairs are remembered: a problem is looked for every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .common import Sample

#: bump when what a check computes changes, so older entries are not trusted
CHECK_VERSION = 1


def _cache_file(root: Path | None) -> Path:
    from ...registry import cache_dir

    digest = hashlib.sha1(str(root).encode()).hexdigest()[:20]
    return cache_dir() / "dataset-checks" / f"{digest}.json"


def sample_key(sample: Sample, num_classes: int, ignore_index: int) -> str | None:
    """A digest of the sample's files (path, size, mtime) and labelling settings; None if a file is missing."""
    files = [p for p in (sample.image, sample.mask, sample.annotation) if p is not None]
    try:
        stats = [(str(p), st.st_size, st.st_mtime_ns) for p in files for st in (os.stat(p),)]
    except OSError:
        return None
    classes = sorted(sample.classes.items()) if sample.classes else None
    parts = [CHECK_VERSION, stats, sample.format, sample.image_id, sample.binary_255, num_classes, ignore_index, classes]
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


class CheckCache:
    """``{key: per-class pixel counts}`` of the pairs of one dataset that passed every check."""

    def __init__(self, root: Path | None) -> None:
        self.path = _cache_file(root)
        self.entries: dict[str, list[int]] = {}
        self.seen: dict[str, list[int]] = {}  # what this validation found clean: the entries written back
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # absent or damaged: everything is decoded again
        if isinstance(data, dict) and isinstance(data.get("entries"), dict):
            self.entries = data["entries"]

    def get(self, key: str | None) -> list[int] | None:
        counts = self.entries.get(key) if key is not None else None
        if not isinstance(counts, list):
            return None
        self.seen[key] = counts  # type: ignore[index]
        return counts

    def put(self, key: str | None, counts: list[int]) -> None:
        if key is not None:
            self.seen[key] = counts

    def save(self) -> None:
        """Write this validation's clean pairs atomically (entries of files gone or changed are dropped);
        a cache that cannot be written only costs a decode next time."""
        if self.seen == self.entries:
            return
        from ...io import write_bytes

        try:
            write_bytes(self.path, json.dumps({"version": CHECK_VERSION, "entries": self.seen}).encode())
        except OSError:
            pass
