"""Errors as RFC 9457 problem responses (``application/problem+json``) and the app's exception handlers."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, ImsegError, InputError, PromptError
from .pool import Busy, RunTimeout
from .schemas import PROBLEM

log = logging.getLogger("imseg.serve")

#: Status recorded for a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


class ApiError(Exception):
    """An error answered as a problem response."""

    def __init__(self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail, self.headers = status, slug, title, detail, headers


def problem(status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": f"urn:imseg:problem:{slug}", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def as_problem(error: ApiError) -> JSONResponse:
    return problem(error.status, error.slug, error.title, error.detail, error.headers)


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "Unauthorized", "missing or wrong API key; send it in the X-API-Key header.",
                    {"WWW-Authenticate": "X-API-Key"})


def client_gone(scope: dict, what: str, received: int, declared: str | None) -> ApiError:
    """Log (one line) and describe a client that disconnected while sending ``what``; nobody reads the answer."""
    of = f" of {int(declared):,}" if declared is not None and declared.strip().isdigit() else ""
    detail = f"the client disconnected during the {what} after {received:,}{of} bytes"
    log.warning("%s (%s %s)", detail, scope.get("method"), scope.get("path"))
    return ApiError(CLIENT_CLOSED, "client-disconnected", "Client disconnected", detail + ".")


def describe_validation(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def invalid_request(errors: list[dict]) -> JSONResponse:
    return problem(422, "invalid-request", "Invalid request", describe_validation(errors), errors=errors)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return as_problem(exc)


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", ""))
        if e.get("type") == "json_invalid":
            msg = f"the request body is not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')})"
        errors.append({"loc": list(e.get("loc", ())), "msg": msg})
    return invalid_request(errors)


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return problem(exc.status_code, f"http-{exc.status_code}", titles.get(exc.status_code, "HTTP error"), detail,
                   getattr(exc, "headers", None))


async def _prompt(_: Request, exc: PromptError) -> JSONResponse:
    return problem(422, "invalid-prompt", "Invalid prompt", str(exc))


async def _imseg(_: Request, exc: ImsegError) -> JSONResponse:
    if isinstance(exc, (InputError, ConfigError)):
        return problem(422, "invalid-input", "Invalid input", str(exc))
    log.error("imseg error: %s", exc)
    return problem(500, "model-error", "Model error", str(exc))


async def _busy(_: Request, exc: Busy) -> JSONResponse:
    return problem(503, "busy", "Server busy", str(exc), {"Retry-After": str(exc.retry_after)})


async def _timeout(_: Request, exc: RunTimeout) -> JSONResponse:
    return problem(504, "timeout", "Model timeout", str(exc))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return problem(500, "internal-error", "Internal server error",
                   f"unexpected {type(exc).__name__}; the server logged the details.")


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes a problem response: ours, validation, routing, imseg's, the pool's, the unexpected."""
    for kind, handler in [
        (ApiError, _api_error),
        (RequestValidationError, _validation),
        (StarletteHTTPException, _http),
        (PromptError, _prompt),
        (ImsegError, _imseg),
        (Exception, _unexpected),
        (Busy, _busy),
        (RunTimeout, _timeout),
    ]:
        app.add_exception_handler(kind, handler)
