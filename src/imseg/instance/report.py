"""What a conversion wrote and what it could not carry over, object by object."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .sample import Source

IMAGE_MODES = ("copy", "symlink", "none")


@dataclass(frozen=True)
class Loss:
    """Something of one object (or image) the target format cannot represent, and what was done instead."""

    source: Source
    kind: str  # "hole", "multi-part", "crowd", "ignore region", "overlap", "empty"
    detail: str
    dropped: bool = False  # the whole object was left out

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}: {self.detail}"


@dataclass
class ConvertReport:
    """Outcome of :func:`imseg.instance.convert.convert`."""

    source: str
    source_format: str
    target: str
    out: str
    images: int = 0
    objects_per_class: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return sum(self.objects_per_class.values())

    def losses_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for loss in self.losses:
            out[loss.kind] = out.get(loss.kind, 0) + 1
        return out

    def summary(self, limit: int = 20) -> str:
        """Human-readable: counts per class, then every note and loss (first ``limit`` of each)."""
        lines = [
            f"{self.source} ({self.source_format}) -> {self.out} ({self.target}): "
            f"{self.images} image(s), {self.objects} object(s) written"
        ]
        width = max((len(n) for n in self.objects_per_class), default=0)
        lines += [f"  {name:<{width}}  {n}" for name, n in self.objects_per_class.items() if n]
        for title, items in (("notes", self.notes), ("not representable in " + self.target, self.losses)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)


def place_image(image: Path, folder: Path, mode: str, relative_to: Path) -> str:
    """Put ``image`` into ``folder`` (copy, symlink, or leave it); return its path relative to ``relative_to``."""
    if mode not in IMAGE_MODES:
        raise ConfigError(f"images={mode!r}: choose one of {', '.join(IMAGE_MODES)}.")
    if mode == "none" or not image.is_file():
        return Path(os.path.relpath(image.resolve(), relative_to.resolve())).as_posix()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / image.name
    if target.resolve() != image.resolve():
        if target.exists() or target.is_symlink():
            target.unlink()
        if mode == "copy":
            shutil.copy2(image, target)
        else:
            target.symlink_to(image.resolve())
    return Path(os.path.relpath(target, relative_to)).as_posix()
