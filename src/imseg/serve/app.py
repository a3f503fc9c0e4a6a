"""The REST API and the click-to-segment page (FastAPI): the app factory.

``create_app(segmenter, settings)`` builds the app around a SAM model; ``imseg serve`` runs it
with uvicorn. Endpoints (all errors are ``application/problem+json``):

- ``POST /v1/images``: upload (multipart ``file`` or raw bytes) -> image embedding, cached.
- ``POST /v1/images/{image_id}/segment``: prompts (points, box, or ``text`` phrases with a detector) -> masks
  (RLE, PNG base64 or polygons) + scores; the API key and the body size (``max_json_bytes``) are checked before
  the JSON body is read.
- ``POST /v1/segment``: one shot, multipart ``file`` + optional ``prompts`` JSON (else everything).
- ``GET /healthz``, ``/readyz``, ``/v1/models``, ``/metrics`` (Prometheus text), ``/`` (web page).

The routes live in ``routers/``, the models in ``schemas.py``, the errors in ``problems.py``, upload
handling in ``uploads.py``; routes reach the model, cache and pool through ``dependencies.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..errors import ConfigError
from .backend import EmbeddingCache, SamBackend
from .dependencies import ServeState
from .metrics import Metrics, ObserveMiddleware
from .middleware import JsonBodyGuard
from .pool import WorkerPool
from .problems import install_error_handlers
from .routers import health, images, models, page, segment
from .settings import ServeSettings
from .uploads import UploadBudget

__all__ = ["ServeSettings", "create_app"]


def _as_backend(segmenter: Any, settings: ServeSettings) -> SamBackend:
    if isinstance(segmenter, SamBackend):
        return segmenter
    if hasattr(segmenter, "image_encoder") and hasattr(segmenter, "mask_decoder"):  # a bare Sam model
        return SamBackend.from_official(segmenter, **settings.everything_options)
    return SamBackend.from_segmenter(segmenter, **settings.everything_options)


def _check_cache_fits(backend: SamBackend, settings: ServeSettings) -> None:
    """Refuse a cache that cannot hold one embedding of the largest accepted upload (every upload's
    image_id would be unusable)."""
    features = backend.embedding_bytes
    if features is None:
        return
    needed = features + settings.max_upload_bytes
    if settings.cache_bytes < needed:
        mib = 1024 * 1024
        raise ConfigError(
            f"the embedding cache ({settings.cache_bytes / mib:.1f} MiB, cache_bytes / --cache-mb) is smaller than one "
            f"image embedding of this model ({features / mib:.1f} MiB) plus the largest accepted upload it keeps "
            f"({settings.max_upload_bytes / mib:.1f} MiB, --max-upload-mb), so uploaded images could never be "
            f"segmented; use --cache-mb {int(-(-needed // mib))} or more (or lower --max-upload-mb)."
        )


def _state(segmenter: Any, settings: ServeSettings, detector: Any = None) -> ServeState:
    backend = _as_backend(segmenter, settings)
    _check_cache_fits(backend, settings)
    text = None
    if detector is not None:
        from ..text import TextSegmenter

        # the server decodes the boxes itself (SamWorker.predict_boxes); TextSegmenter gives the detection rules
        text = TextSegmenter(backend, detector)
    pool = WorkerPool(
        [backend.make_worker() for _ in range(settings.concurrency)],
        max_queue=settings.max_queue,
        queue_timeout=settings.queue_timeout,
        run_timeout=settings.request_timeout,
    )
    return ServeState(settings=settings, backend=backend, cache=EmbeddingCache(settings.cache_items, settings.cache_bytes),
                      pool=pool, metrics=Metrics(), uploads=UploadBudget(settings.upload_memory, settings.queue_timeout),
                      text=text)


def create_app(segmenter: Any, settings: ServeSettings | None = None, detector: Any = None) -> FastAPI:
    """Build the FastAPI app.

    Args:
        segmenter: an ``imseg.load("mobile-sam" | "sam-vit-b", ...)`` segmenter (torch, or an ONNX
            export loaded with ``imseg.load(EXPORT_DIR)``), an official ``Sam`` model, or a :class:`SamBackend`.
        settings: limits and options (defaults: :class:`ServeSettings`).
        detector: a text-prompt detector (anything with ``detect(rgb, phrases)``, e.g.
            ``imseg.text.build_detector("grounding-dino-tiny")``, or such a name); None = no ``text`` prompts.

    Raises:
        ConfigError: the settings cannot work with this model (e.g. a cache smaller than one embedding).
    """
    from .. import __version__

    state = _state(segmenter, settings or ServeSettings(), detector)
    app = FastAPI(
        title="imseg",
        version=__version__,
        description="Segment Anything over HTTP: upload an image once, then segment it with points and boxes.",
    )
    app.state.serve = state
    app.state.settings, app.state.backend, app.state.cache, app.state.pool = (
        state.settings, state.backend, state.cache, state.pool)
    app.state.metrics = state.metrics
    install_error_handlers(app)

    # middleware added later runs first: CORS, then metrics (so the guard's 401/413/499 are counted), then the guard
    low_res = state.backend.low_res_size
    app.add_middleware(JsonBodyGuard, limit=state.settings.json_body_limit(low_res), key_ok=state.key_ok,
                       low_res_size=low_res)
    app.add_middleware(ObserveMiddleware, metrics=state.metrics)
    if state.settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )

    for router in (health.router, models.router, health.metrics_router, images.router, segment.router, page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    return app
