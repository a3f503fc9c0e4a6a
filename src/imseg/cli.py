"""The ``imseg`` command line (typer). Heavy imports happen inside each command."""

from __future__ import annotations

import sys

import typer

from . import __version__
from .errors import ImsegError

app = typer.Typer(
    name="imseg",
    help="Image segmentation: Segment Anything, semantic training, classical methods, export, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="List, download and locate official checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """imseg command line."""


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# ============================================================================ weights
@weights_app.command("list")
def weights_list() -> None:
    """Official checkpoints, their cache paths and whether they are present."""
    from rich.console import Console
    from rich.table import Table

    from .registry import list_models, weights_path

    table = Table(title="imseg weights")
    for col in ("model", "file", "sha256", "cached"):
        table.add_column(col)
    for spec in list_models("sam"):
        path = weights_path(spec.name)
        table.add_row(spec.name, spec.weights.filename, spec.weights.sha256[:12] + "…", "yes" if path.is_file() else "no")
    Console().print(table)


@weights_app.command("path")
def weights_path_cmd(model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b.")) -> None:
    """Print where the model's checkpoint is (or would be) cached."""
    from .registry import weights_path

    try:
        typer.echo(str(weights_path(model)))
    except ImsegError as exc:
        fail(str(exc))


@weights_app.command("download")
def weights_download(
    model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b."),
    force: bool = typer.Option(False, help="Download again even if cached."),
) -> None:
    """Download an official checkpoint into the cache and verify its sha256."""
    from .registry import download_weights

    try:
        path = download_weights(model, force=force)
    except ImsegError as exc:
        fail(str(exc))
    typer.echo(str(path))


# ============================================================================ segment / demo (SAM, issue 2/3)
@app.command("demo")
def demo_cmd(
    model: str = typer.Option("sam-vit-b", "--model", help="SAM model: sam-vit-b or mobile-sam (also sam-vit-l/h)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Official checkpoint file; default: the weights cache."),
    out: str = typer.Option("runs/demo", "--out", help="Output directory for overlays and masks."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Segment scikit-image's astronaut and coffee with a point and a box prompt (no download needed)."""
    from .sam.demo import run_demo

    try:
        run_demo(model=model, checkpoint=checkpoint, out=out, device=device, echo=typer.echo)
    except ImsegError as exc:
        fail(str(exc))


# ============================================================================ train / val / predict (issue 4)

# ============================================================================ classical (issue 5)
@app.command("classical")
def classical_cmd(
    source: str = typer.Argument(None, help="Image file, directory or glob."),
    method: str = typer.Option("otsu", "--method", "-m", help="Classical method (see --list)."),
    out: str = typer.Option("runs/classical", "--out", help="Output directory: one label-map PNG per image."),
    param: list[str] = typer.Option([], "--param", "-p", help="Method parameter KEY=VALUE (repeatable), e.g. sigma=1."),
    post: str = typer.Option("", "--post", help="Post-processing, e.g. 'remove_small=64,fill_holes=64,crf'."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods with when to use each, then exit."),
) -> None:
    """Segment images with a classical method (no weights); one label map PNG per image."""
    from .registry import list_models

    if list_methods:
        specs = list_models("classical")
        width = max(len(s.name) for s in specs)
        for spec in specs:
            typer.echo(f"{spec.name:<{width}}  {spec.summary}")
        return
    if source is None:
        fail("give an image SOURCE (file, directory or glob), or --list to see the methods.")
    import json
    from pathlib import Path

    import numpy as np

    from .io import list_images, read_image, write_image
    from .postprocess import apply_pipeline
    from .registry import load

    params = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r}: write KEY=VALUE, e.g. --param sigma=1.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    try:
        segmenter = load(method, **params)
        files = list_images(source)
        out_dir = Path(out)
        for path in files:
            masks = segmenter.segment(path)
            if post:
                masks = apply_pipeline(masks, post, image=read_image(path))
            labels = masks.label_map()
            write_image(out_dir / f"{path.stem}.png", labels.astype(np.uint16 if labels.max() > 255 else np.uint8))
            typer.echo(f"{path}: {len(masks)} mask(s) -> {out_dir / (path.stem + '.png')}")
    except ImsegError as exc:
        fail(str(exc))


# ============================================================================ export (issue 6)

# ============================================================================ serve (issue 7)


def main() -> None:
    try:
        app()
    except ImsegError as exc:  # last resort: never a bare traceback for our own errors
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
