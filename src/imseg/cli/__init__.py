"""The ``imseg`` command line (typer): each command parses its flags and calls the library.

One module per group of commands; importing them registers the commands on ``app`` in help order.
Heavy imports happen inside each command so ``imseg --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from ..errors import ImsegError
from .common import app, fail

# isort: off
# the commands appear in --help in the order their modules register them
from . import weights, segment, track, semantic, finetune, classical, convert, explain, export, serve  # noqa: E402, F401
# isort: on

__all__ = ["app", "fail", "main"]


def main() -> None:
    try:
        app()
    except ImsegError as exc:  # last resort: never a bare traceback for our own errors
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
