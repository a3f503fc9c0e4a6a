"""The typer app every command module registers on, and what the commands share."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from .. import __version__

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


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error (no traceback) and exit (2: a usage error)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def out_dir(out: str) -> Path:
    """--out as a Path; a path that is an existing file fails up front, before any model is loaded."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        fail(f"--out {root} is a file; pass a directory (it is created when missing).")
    return root


def run_and_exit(sources: list[Path], job, out: Path, resume: bool = True) -> NoReturn:
    """Run a batch job, print its summary, exit with its code (1 when anything failed, 130 when interrupted)."""
    from ..batch import run_batch
    from ..errors import ImsegError

    try:
        summary = run_batch(sources, job, out, resume=resume)
    except ImsegError as exc:
        fail(str(exc))
    summary.print()
    raise typer.Exit(summary.exit_code)
