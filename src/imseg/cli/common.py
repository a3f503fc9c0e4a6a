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


# the engine flags every batch command takes (shared option objects, so the help reads the same everywhere)
ENGINE = typer.Option("local", "--engine", help="local (this process) or ray (a Ray cluster or a local Ray).")
ADDRESS = typer.Option(None, "--address", help="Ray: auto (this machine's cluster) or ray://HOST:PORT; "
                                               "default: start a local Ray.")
WORKERS = typer.Option(2, "--workers", help="Ray: worker actors (each loads the model once).")
CPUS_PER_WORKER = typer.Option(1.0, "--cpus-per-worker", help="Ray: CPUs per worker (its torch threads).")
GPUS_PER_WORKER = typer.Option(0.0, "--gpus-per-worker", help="Ray: GPUs per worker (fractions share one).")
BATCH_SIZE = typer.Option(1, "--batch-size", help="Ray: images per batch handed to a worker.")


def make_executor(engine: str, address: str | None = None, workers: int = 2, cpus_per_worker: float = 1.0,
                  gpus_per_worker: float = 0.0, batch_size: int = 1):
    """The executor the engine flags ask for; a bad flag or a missing Ray fails here, before any model loads."""
    from ..errors import ImsegError

    engine = engine.lower()
    if engine == "local":
        if address is not None:
            fail("--address needs --engine ray.")
        return "local"
    if engine != "ray":
        fail(f"--engine must be local or ray, got {engine!r}.")
    try:
        from ..batch_ray import RayExecutor

        return RayExecutor(address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, batch_size=batch_size)
    except ImsegError as exc:
        fail(str(exc))


def run_and_exit(sources: list[Path], job, out: Path, resume: bool = True, executor="local") -> NoReturn:
    """Run a batch job, print its summary, exit with its code (1 when anything failed, 130 when interrupted)."""
    from ..batch import run_batch
    from ..errors import ImsegError

    try:
        summary = run_batch(sources, job, out, executor=executor, resume=resume)
    except ImsegError as exc:
        fail(str(exc))
    summary.print()
    raise typer.Exit(summary.exit_code)
