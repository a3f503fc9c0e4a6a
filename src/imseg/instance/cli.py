"""The ``imseg convert`` command (registered by imseg.cli): flags only, the work is in convert.run_convert."""

from __future__ import annotations

import typer


def convert_command(
    src: str = typer.Argument(..., help="Annotations: a COCO/labelme JSON, a data.yaml or a data set folder."),
    to: str = typer.Option(..., "--to", help="Target format: coco | yolo | labelme | png."),
    out: str = typer.Option(..., "--out", help="Output folder."),
    src_format: str = typer.Option(
        None,
        "--from",
        help="Source format (coco | labelme | yolo | voc | dsb | label-images | label-studio); detected if left out.",
    ),
    images: str = typer.Option("copy", "--images", help="copy | symlink | none: what to do with the image files."),
    mask_format: str = typer.Option("polygon", "--mask-format", help="COCO masks: polygon (RLE where needed) | rle."),
    repair: bool = typer.Option(
        False, "--repair", help="Fix what has an explicit repair (degenerate/out-of-image polygons, duplicate ids) and report it."
    ),
    names: str = typer.Option(None, "--names", help="YOLO class names file (one a line) when there is no data.yaml."),
    category: str = typer.Option(None, "--category", help="Class name for label images / DSB masks."),
) -> None:
    """Convert instance-segmentation annotations between formats and report anything the target cannot hold."""
    from ..errors import ImsegError
    from .convert import run_convert

    try:
        report = run_convert(src, to, out, src_format, images, mask_format, repair, names, category)
    except ImsegError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(report.summary())
