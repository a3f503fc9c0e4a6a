"""ASGI middleware of the JSON segment endpoint: the API key and the body size before the body is parsed."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from .metrics import ROUTE_LABEL
from .problems import as_problem, client_gone, problem, unauthorized
from .settings import mask_input_chars

SEGMENT_ROUTE = "/v1/images/{image_id}/segment"
_SEGMENT_PATH = re.compile(r"/v1/images/[^/]+/segment/?$")


class JsonBodyGuard:
    """ASGI middleware for the JSON segment endpoint: the API key, then the body size, before the body
    is read or parsed (FastAPI reads a typed body before it runs dependencies such as the key check).

    A ``Content-Length`` above ``limit`` is refused at once; without one (chunked) the body is read
    only up to ``limit`` bytes. Both answer 413 with a problem body; a missing/wrong key answers 401.
    A client that disconnects mid-body gets a 499 problem (logged in one line), which nobody reads.
    """

    def __init__(self, app: Any, *, limit: int, key_ok: Callable[[str | None], bool],
                 low_res_size: tuple[int, int]) -> None:
        self.app, self.limit, self.key_ok = app, int(limit), key_ok
        self.low_res_size = low_res_size

    def _too_large(self, size: str) -> JSONResponse:
        h, w = self.low_res_size
        return problem(413, "body-too-large", "Request body too large",
                       f"the JSON body {size} this server's limit of {self.limit:,} bytes; send fewer points "
                       f"or one mask_input (this model's {h}x{w} float32 mask_input is "
                       f"{mask_input_chars(self.low_res_size) / 1000:,.0f} kB as base64).")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _SEGMENT_PATH.search(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        scope[ROUTE_LABEL] = SEGMENT_ROUTE  # for the metrics of the answers given here, before routing
        headers = Headers(scope=scope)
        if not self.key_ok(headers.get("x-api-key")):
            await as_problem(unauthorized())(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            await self._too_large(f"is {int(length):,} bytes, above")(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await as_problem(client_gone(scope, "JSON body", total, length))(scope, receive, send)
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._too_large("exceeds")(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
