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
    from ..text.weights import all_text_weights, text_weights_path

    text = Table(title="text prompts (Hugging Face cache, HF_HOME; needs imseg[text])")
    for col in ("model", "hub id", "size", "cached"):
        text.add_column(col)
    for item in all_text_weights():
        cached = text_weights_path(item).is_dir() if _has_hub() else False
        text.add_row(item.name, item.hub_id, f"~{item.size / 1e6:,.0f} MB", "yes" if cached else "no")
    Console().print(text)


def _has_hub() -> bool:
    import importlib.util

    return importlib.util.find_spec("huggingface_hub") is not None


@weights_app.command("path")
def weights_path_cmd(model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b.")) -> None:
    """Print where the model's checkpoint is (or would be) cached."""
    from ..registry import weights_path
    from ..text.weights import text_weights, text_weights_path

    try:
        spec = text_weights(model)
        typer.echo(str(text_weights_path(spec) if spec is not None else weights_path(model)))
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
    from ..text.weights import download_text_weights, text_weights

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            spec = text_weights(model)
            path = download_text_weights(spec, force) if spec is not None else download_weights(model, force=force)
    except ImsegError as exc:
        fail(str(exc))
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    typer.echo(str(path))
