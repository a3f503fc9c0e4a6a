"""`imseg serve`: the REST API and the click-to-segment page."""

from __future__ import annotations

import typer

from ..errors import ImsegError
from .common import app, fail


@app.command("serve")
def serve(
    model: str = typer.Option("mobile-sam", "--model", "-m", help="SAM model name, export dir or imseg finetune run."),
    checkpoint: str = typer.Option(None, "--checkpoint", "-c", help="Checkpoint path (default: the weights cache)."),
    host: str = typer.Option("127.0.0.1", help="Bind address. Loopback by default; use --api-key when exposing it."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="IMSEG_API_KEY", help="Require this X-API-Key header on /v1 and /metrics."
    ),
    cors: list[str] = typer.Option([], "--cors", help="Allowed CORS origin (repeatable). CORS is off by default."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MiB."),
    max_pixels: int = typer.Option(40_000_000, help="Largest accepted image, pixels (checked from the header)."),
    cache_items: int = typer.Option(32, help="Embeddings kept in the LRU cache."),
    cache_mb: float = typer.Option(512.0, help="Memory bound of the embedding cache, MiB."),
    concurrency: int = typer.Option(1, help="Model calls run at once (each worker shares the weights)."),
    queue_timeout: float = typer.Option(30.0, help="Seconds a request waits for the model before 503 + Retry-After."),
    request_timeout: float = typer.Option(120.0, help="Seconds one model call may take before 504."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, mps."),
    backend: str = typer.Option("torch", "--backend", help="torch, onnxruntime or openvino (the model is exported "
                                "to ONNX once, into the cache), or auto (SAM, SAM 2.1: the fastest on this CPU within mask "
                                "IoU 0.99 of fp32, measured once and cached)."),
    precision: str = typer.Option(None, "--precision", help="Encoder precision: fp32 (exact; the default), bf16, int8 "
                                  "(onnxruntime/openvino) or auto (bf16 on CPUs with AMX/AVX512-BF16, else fp32)."),
    detector: str = typer.Option(
        None, "--detector",
        help="Enable text prompts (\"text\": \"horse. rider.\"): grounding-dino-tiny, owlv2-base, or "
             "grounding-dino:DIR / owlv2:DIR. Needs imseg[text].",
    ),
) -> None:
    """REST API + click-to-segment web page (http://HOST:PORT/); OpenAPI docs at /docs."""
    from ..errors import require

    require("fastapi", "serve", "imseg serve")
    require("uvicorn", "serve", "imseg serve")
    import uvicorn

    from ..registry import get_spec, load
    from ..serve.app import ServeSettings, create_app

    try:
        from pathlib import Path

        from ..export.onnx import MANIFEST
        from ..finetune.run import is_finetune_run

        is_export = (Path(model) / MANIFEST).is_file()  # an `imseg export` directory (ONNX Runtime)
        is_run = is_finetune_run(Path(model))  # an `imseg finetune` run directory (its best.pt)
        if not is_export and not is_run and get_spec(model).family not in ("sam", "sam2"):
            fail(f"--model {model!r} is not a Segment Anything model; the server needs mobile-sam, sam-vit-b/l/h, "
                 f"sam2.1-hiera-t/s/b+/l, an `imseg export` directory of one or an `imseg finetune` run.")
        settings = ServeSettings(
            max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, cache_items=cache_items,
            cache_bytes=int(cache_mb * 1024 * 1024), concurrency=concurrency, queue_timeout=queue_timeout,
            request_timeout=request_timeout, api_key=api_key or None, cors_origins=list(cors),
        )
        text_detector = None
        if detector:  # before the SAM model, so a wrong --detector fails at once
            from ..text import build_detector

            text_detector = build_detector(detector, device=device)
        segmenter = load(model, checkpoint=checkpoint, device=device, backend=backend, precision=precision)
        if backend == "auto":
            from ..engines_auto import choice_line

            typer.echo(choice_line(segmenter))
        application = create_app(segmenter, settings, detector=text_detector)
    except ImsegError as exc:
        fail(str(exc))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.secho(f"warning: serving on {host} without --api-key: anyone who can reach it can use the model.",
                    fg=typer.colors.YELLOW, err=True)
    found = f", text prompts by {detector}" if detector else ""
    typer.echo(f"imseg serve: {model}{found} on http://{host}:{port}/ (API docs: /docs)")
    uvicorn.run(application, host=host, port=port, log_level="info", timeout_keep_alive=5,
                limit_concurrency=max(64, settings.max_queue + 16), server_header=False)
