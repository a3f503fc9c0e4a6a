"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from ..dependencies import PROTECTED, State
from ..problems import ApiError
from ..schemas import Health, Ready, problem_responses

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses=problem_responses(503))
async def readyz(state: State) -> Ready:
    """Readiness: the model is loaded and the queue is not full."""
    pool = state.pool
    ready = pool.waiting < state.settings.max_queue or pool.waiting == 0
    body = Ready(ready=ready, model=state.backend.name, workers=pool.size, waiting=pool.waiting,
                 cache_items=len(state.cache))
    if not ready:
        raise ApiError(503, "not-ready", "Not ready", "the model queue is full.", {"Retry-After": "1"})
    return body


metrics_router = APIRouter(tags=["ops"])


@metrics_router.get("/metrics", response_class=PlainTextResponse, dependencies=PROTECTED,
                    responses=problem_responses(401))
async def prometheus(state: State) -> PlainTextResponse:
    """Prometheus text format: requests, latencies, cache and queue figures."""
    return PlainTextResponse(state.metrics.render(state.cache, state.pool, state.uploads),
                             media_type="text/plain; version=0.0.4")
