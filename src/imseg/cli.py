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

# ============================================================================ train / val / predict (issue 4)

# ============================================================================ classical (issue 5)

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
