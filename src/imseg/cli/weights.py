"""`imseg weights list | path | download`."""

from __future__ import annotations

import typer

from ..errors import ImsegError
from .common import fail, weights_app


@weights_app.command("list")
def weights_list() -> None:
    """Official checkpoints, their cache paths and whether they are present."""
    from rich.console import Console
    from rich.table import Table

    from ..registry import list_models, weights_path

    table = Table(title="imseg weights")
    for col in ("model", "file", "sha256", "cached"):
        table.add_column(col)
    for spec in [*list_models("sam"), *list_models("sam2")]:
        path = weights_path(spec.name)
        sha = spec.weights.sha256[:12] + "…" if spec.weights.sha256 else "unknown"
        table.add_row(spec.name, spec.weights.filename, sha, "yes" if path.is_file() else "no")
    Console().print(table)


@weights_app.command("path")
def weights_path_cmd(model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b.")) -> None:
    """Print where the model's checkpoint is (or would be) cached."""
    from ..registry import weights_path

    try:
        typer.echo(str(weights_path(model)))
    except ImsegError as exc:
        fail(str(exc))


@weights_app.command("download")
def weights_download(
    model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b."),
    force: bool = typer.Option(False, help="Download again even if cached."),
) -> None:
    """Download an official checkpoint into the cache and verify its sha256 (where one is known)."""
    import warnings

    from ..registry import download_weights

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = download_weights(model, force=force)
    except ImsegError as exc:
        fail(str(exc))
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    typer.echo(str(path))
