"""`imseg classical`: classical methods (no weights) over images, one label map each."""

from __future__ import annotations

import typer

from ..errors import ImsegError
from .common import (
    ADDRESS,
    BATCH_SIZE,
    CPUS_PER_WORKER,
    ENGINE,
    GPUS_PER_WORKER,
    WORKERS,
    app,
    fail,
    make_executor,
    out_dir,
    run_and_exit,
)


def parse_params(items: list[str]) -> dict:
    """KEY=VALUE strings -> {key: value}; a value is JSON when it parses as JSON (1, 0.5, true, [1, 2]), else text."""
    import json

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r}: write KEY=VALUE, e.g. --param sigma=1.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


@app.command("classical")
def classical_cmd(
    source: str = typer.Argument(None, help="Image file, directory, glob or a .txt list of image paths."),
    method: str = typer.Option("otsu", "--method", "-m", help="Classical method (see --list)."),
    out: str = typer.Option("runs/classical", "--out", help="Output directory: one label-map PNG per image."),
    param: list[str] = typer.Option([], "--param", "-p", help="Method parameter KEY=VALUE (repeatable), e.g. sigma=1."),
    post: str = typer.Option("", "--post", help="Post-processing, e.g. 'remove_small=64,fill_holes=64,crf'."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods with when to use each, then exit."),
    engine: str = ENGINE,
    address: str = ADDRESS,
    workers: int = WORKERS,
    cpus_per_worker: float = CPUS_PER_WORKER,
    gpus_per_worker: float = GPUS_PER_WORKER,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Segment images with a classical method (no weights); one label map PNG per image.

    A bad file is reported and the others go on; the exit code is 1 when any image failed.
    """
    from ..registry import list_models

    if list_methods:
        specs = list_models("classical")
        width = max(len(s.name) for s in specs)
        for spec in specs:
            typer.echo(f"{spec.name:<{width}}  {spec.summary}")
        return
    if source is None:
        fail("give an image SOURCE (file, directory or glob), or --list to see the methods.")
    from ..batch import list_sources
    from ..jobs import build_classical_job

    executor = make_executor(engine, address, workers, cpus_per_worker, gpus_per_worker, batch_size)
    params = parse_params(param)
    root = out_dir(out)
    try:
        job = build_classical_job(method, params, post or None)
        files = list_sources(source)
    except ImsegError as exc:
        fail(str(exc))
    run_and_exit(files, job, root, resume=False, executor=executor)
