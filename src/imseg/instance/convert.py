"""``convert``: read any supported instance format, write another, and report what could not be carried over."""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path

from ..errors import ConfigError, DatasetError
from .formats import READERS, WRITERS, detect_format, read_dataset
from .report import ConvertReport, Loss
from .sample import InstanceDataset, Source

TARGETS = tuple(WRITERS)


def _reader_options(fmt: str, options: dict) -> dict:
    """The options the reader for ``fmt`` takes; an option given (not None) that it does not take is refused."""
    if fmt not in READERS:
        raise ConfigError(f"unknown source format {fmt!r}; choose one of {', '.join(READERS)}.")
    accepted = inspect.signature(READERS[fmt]).parameters
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(f"the {fmt} reader takes no {', '.join(unknown)} option (it takes: {', '.join(list(accepted)[1:])}).")
    return given


def _refuse_shared_names(ds: InstanceDataset) -> None:
    """Every writer names its files after the image (``NAME.json``, ``labels/NAME.txt``, ``NAME.png``)."""
    by_stem: dict[str, list[str]] = {}
    for sample in ds.samples:
        by_stem.setdefault(sample.stem, []).append(sample.image_path)
    shared = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if shared:
        listing = "\n  ".join(f"{stem}: {', '.join(paths)}" for stem, paths in sorted(shared.items()))
        raise DatasetError(
            f"{len(shared)} image name(s) occur in several folders, so their output files would overwrite each other:\n"
            f"  {listing}\nConvert each folder (split) on its own, or rename the images."
        )


def write_dataset(
    ds: InstanceDataset, to: str, out: str | Path, *, images: str = "copy", mask_format: str = "polygon"
) -> tuple[list, list]:
    """Write ``ds`` in format ``to``; returns (files written, losses)."""
    if to not in WRITERS:
        raise ConfigError(f"cannot write {to!r}; choose one of {', '.join(TARGETS)}.")
    if mask_format not in ("polygon", "rle"):
        raise ConfigError(f"mask_format={mask_format!r}: choose 'polygon' or 'rle'.")
    if mask_format == "rle" and to != "coco":
        raise ConfigError(f"mask_format='rle' applies to COCO only, not {to}.")
    _refuse_shared_names(ds)
    losses: list = [
        Loss(Source(s.image_path), "no image", "the image file is missing; the annotations refer to its path")
        for s in ds.samples
        if images != "none" and not Path(s.image_path).is_file()
    ]
    extra = {"mask_format": mask_format} if to == "coco" else {}
    files = WRITERS[to](ds, Path(out), images=images, losses=losses, **extra)
    return files, losses


def convert(
    src: str | Path,
    to: str,
    out: str | Path,
    src_format: str | None = None,
    *,
    images: str = "copy",
    mask_format: str = "polygon",
    repair: bool | None = None,
    names: list[str] | None = None,
    category: str | None = None,
) -> ConvertReport:
    """Convert instance annotations from ``src`` into format ``to`` (coco | yolo | labelme | png) under ``out``.

    ``src_format``: coco | labelme | yolo | voc | dsb | label-images | label-studio, detected by parsing when None.
    ``images``: copy | symlink | none (leave the images where they are; COCO and labelme then refer to them).
    ``mask_format``: COCO only: "polygon" (RLE where a polygon cannot hold the mask) or "rle".
    ``repair``: fix what has an explicit repair (see imseg.instance.checks) and report it, instead of refusing.
    ``names``: YOLO class names when there is no data.yaml. ``category``: class name for label images / DSB.
    Raises DatasetError listing every bad annotation; anything the target cannot represent is in the report.
    """
    src_dir = Path(src).resolve() if Path(src).is_dir() else Path(src).resolve().parent
    if Path(out).resolve() == src_dir:
        raise ConfigError(f"--out {out} is the source folder; write the conversion to a new folder.")
    fmt = src_format or detect_format(src)
    options = {"repair": repair, "names": names, "category": category}
    fmt, ds = read_dataset(src, fmt, **_reader_options(fmt, options))
    files, losses = write_dataset(ds, to, out, images=images, mask_format=mask_format)
    dropped = {loss.source for loss in losses if loss.dropped}
    counts = Counter(o.category for s in ds.samples for o in s.objects if o.source not in dropped)
    return ConvertReport(
        source=str(src),
        source_format=fmt,
        target=to,
        out=str(out),
        images=len(ds.samples),
        objects_per_class={name: counts.get(name, 0) for name in ds.categories},
        files=[str(f) for f in files],
        losses=losses,
        notes=list(ds.notes),
    )


def run_convert(
    src: str,
    to: str,
    out: str,
    src_format: str | None = None,
    images: str = "copy",
    mask_format: str = "polygon",
    repair: bool = False,
    names_file: str | None = None,
    category: str | None = None,
) -> ConvertReport:
    """What ``imseg convert`` calls: flags as plain values (``names_file``: one class name a line)."""
    names = None
    if names_file:
        try:
            names = [line.strip() for line in Path(names_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            raise ConfigError(f"--names {names_file}: cannot read it ({exc}).") from exc
    return convert(
        src, to, out, src_format, images=images, mask_format=mask_format, repair=repair or None, names=names, category=category
    )
