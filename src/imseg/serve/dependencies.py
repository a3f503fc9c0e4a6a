"""What routes share, through FastAPI dependencies: the server state (settings, backend, cache, pool,
metrics, upload budget), the API-key check and the upload readers."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from .backend import EmbeddingCache, SamBackend
from .metrics import Metrics
from .pool import WorkerPool
from .problems import unauthorized
from .settings import ServeSettings
from .uploads import UploadBudget, declared_length, read_upload


@dataclass
class ServeState:
    """One app's server state (``app.state.serve``)."""

    settings: ServeSettings
    backend: SamBackend
    cache: EmbeddingCache
    pool: WorkerPool
    metrics: Metrics
    uploads: UploadBudget
    #: a :class:`~imseg.text.TextSegmenter` over ``backend`` with the server's detector, or None (no --detector)
    text: Any = None

    def key_ok(self, key: str | None) -> bool:
        if self.settings.api_key is None:
            return True
        return key is not None and hmac.compare_digest(key.encode(), self.settings.api_key.encode())


def get_state(request: Request) -> ServeState:
    return request.app.state.serve


State = Annotated[ServeState, Depends(get_state)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when the server has --api-key.")


def check_key(state: State, key: str | None = Security(api_key_header)) -> None:
    if not state.key_ok(key):
        raise unauthorized()


#: Route dependencies of every protected route (they run before the route's own parameters are read).
PROTECTED = [Depends(check_key)]


@dataclass
class Upload:
    """An upload's image bytes and its text form fields."""

    data: bytes
    fields: dict[str, str]


def _reservation(request: Request, state: ServeState) -> AbstractAsyncContextManager[None]:
    """A reservation of the upload memory budget for this request's body (413 at once when it declares too much)."""
    limit = state.settings.max_body_bytes
    declared = declared_length(request, limit)
    return state.uploads.reserve(limit if declared is None else declared)


async def image_upload(request: Request, state: State) -> AsyncIterator[Upload]:
    """The image of ``POST /v1/images`` (multipart ``file`` or raw bytes), held within the upload budget
    until the route is done."""
    async with _reservation(request, state):
        yield Upload(*await read_upload(request, state.settings))


async def image_and_prompts_upload(request: Request, state: State) -> AsyncIterator[Upload]:
    """The image and the optional ``prompts`` text field of ``POST /v1/segment``, as :func:`image_upload`."""
    async with _reservation(request, state):
        yield Upload(*await read_upload(request, state.settings, ("prompts",)))
