"""The REST API and the click-to-segment page (FastAPI).

``create_app(segmenter, settings)`` builds the app around a SAM model; ``imseg serve`` runs it
with uvicorn. Endpoints (all errors are ``application/problem+json``):

- ``POST /v1/images``: upload (multipart ``file`` or raw bytes) -> image embedding, cached.
- ``POST /v1/images/{image_id}/segment``: prompts -> masks (RLE, PNG base64 or polygons) + scores; the
  API key and the body size (``max_json_bytes``) are checked before the JSON body is read.
- ``POST /v1/segment``: one shot, multipart ``file`` + optional ``prompts`` JSON (else everything).
- ``GET /healthz``, ``/readyz``, ``/v1/models``, ``/metrics`` (Prometheus text), ``/`` (web page).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import re
import struct
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, ImsegError, InputError, PromptError
from ..masks import Masks
from .backend import LOW_RES_SIZE, Embedding, EmbeddingCache, SamBackend
from .pool import Busy, RunTimeout, WorkerPool

log = logging.getLogger("imseg.serve")
STATIC_DIR = Path(__file__).parent / "static"
PROBLEM = "application/problem+json"
#: Hard schema limit on prompt points (the configurable limit ``max_points`` must be <= this).
SCHEMA_MAX_POINTS = 1024


# ============================================================================ settings
@dataclass
class ServeSettings:
    """Server limits and options. Sizes in bytes/pixels, times in seconds."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    cache_items: int = 32
    cache_bytes: int = 512 * 1024 * 1024
    concurrency: int = 1
    max_queue: int = 256
    queue_timeout: float = 30.0
    request_timeout: float = 120.0
    max_points: int = 64
    #: largest JSON body of /v1/images/{id}/segment (a mask_input is ~350 kB, max_points points a few kB)
    max_json_bytes: int = 2 * 1024 * 1024
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    #: keyword arguments for the automatic mask generator (``points_per_side``, ``pred_iou_thresh``, ...)
    everything_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "max_upload_bytes": self.max_upload_bytes >= 1,
            "max_pixels": self.max_pixels >= 1,
            "cache_items": self.cache_items >= 1,
            "cache_bytes": self.cache_bytes >= 1,
            "concurrency": self.concurrency >= 1,
            "max_queue": self.max_queue >= 0,
            "queue_timeout": self.queue_timeout > 0,
            "request_timeout": self.request_timeout > 0,
            "max_points": 1 <= self.max_points <= SCHEMA_MAX_POINTS,
            "max_json_bytes": self.max_json_bytes >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid server settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}; sizes, counts and "
                f"timeouts must be positive (max_points at most {SCHEMA_MAX_POINTS})."
            )


# ============================================================================ API models
Coord = Annotated[float, Field(allow_inf_nan=False)]
MaskFormat = Literal["rle", "png", "polygons"]


class ImageInfo(BaseModel):
    image_id: str = Field(description="Key of the cached embedding; use it in /v1/images/{image_id}/segment.")
    width: int
    height: int
    cached: bool = Field(description="True when the embedding was already in the cache (no encoder run).")
    embed_ms: float


class SegmentRequest(BaseModel):
    """Prompts for one image. Coordinates are pixels of the original image, (x, y)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["prompt", "everything"] = "prompt"
    points: list[tuple[Coord, Coord]] | None = Field(None, max_length=SCHEMA_MAX_POINTS, description="[[x, y], ...]")
    labels: list[Annotated[int, Field(ge=0, le=1)]] | None = Field(
        None, max_length=SCHEMA_MAX_POINTS, description="1 = foreground, 0 = background; one per point"
    )
    box: tuple[Coord, Coord, Coord, Coord] | None = Field(None, description="[x0, y0, x1, y1]")
    mask_input: str | None = Field(
        None,
        max_length=400_000,
        description="base64 of little-endian float32 256x256 low-res logits (a previous low_res_logits)",
    )
    multimask: bool = Field(True, description="3 candidate masks (True) or 1 (False)")
    formats: list[MaskFormat] = Field(default_factory=lambda: ["rle"], min_length=1, max_length=3)
    return_logits: bool = Field(False, description="include each mask's low_res_logits (base64 float32 256x256)")


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str


class MaskOut(BaseModel):
    score: float
    area: int
    bbox: list[float] = Field(description="[x, y, width, height] pixels")
    stability_score: float | None = None
    rle: RLE | None = None
    png: str | None = Field(None, description="base64 PNG, 8-bit gray, 255 = mask")
    polygons: list[list[float]] | None = Field(None, description="outer contours as [x0, y0, x1, y1, ...]")
    low_res_logits: str | None = None


class SegmentResponse(BaseModel):
    image_id: str | None
    width: int
    height: int
    mode: Literal["prompt", "everything"]
    masks: list[MaskOut] = Field(description="sorted by score, best first")
    best: int | None = Field(description="index of the best mask (0) or null when there are none")
    timing_ms: dict[str, float]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    model: str
    workers: int
    waiting: int
    cache_items: int


class ModelInfo(BaseModel):
    name: str
    summary: str
    loaded: bool
    prompts: bool
    everything: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM: {}}, "description": desc}
    for code, desc in [
        (401, "missing or wrong X-API-Key"),
        (404, "unknown image_id"),
        (413, "upload or image too large"),
        (415, "not a supported image type"),
        (422, "invalid image or prompts"),
        (503, "model busy (see Retry-After)"),
        (504, "model call timed out"),
        (507, "the embedding cache cannot hold this image (server setting --cache-mb)"),
    ]
}


# ============================================================================ errors
class ApiError(Exception):
    """An error answered as a problem response."""

    def __init__(self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail, self.headers = status, slug, title, detail, headers


def problem(status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any):
    body = {"type": f"urn:imseg:problem:{slug}", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _as_problem(error: ApiError) -> JSONResponse:
    return problem(error.status, error.slug, error.title, error.detail, error.headers)


def _describe_validation(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return _as_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            msg = str(e.get("msg", ""))
            if e.get("type") == "json_invalid":
                msg = f"the request body is not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')})"
            errors.append({"loc": list(e.get("loc", ())), "msg": msg})
        return problem(422, "invalid-request", "Invalid request", _describe_validation(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return problem(exc.status_code, f"http-{exc.status_code}", titles.get(exc.status_code, "HTTP error"), detail,
                       getattr(exc, "headers", None))

    @app.exception_handler(PromptError)
    async def _prompt(_: Request, exc: PromptError):
        return problem(422, "invalid-prompt", "Invalid prompt", str(exc))

    @app.exception_handler(ImsegError)
    async def _imseg(_: Request, exc: ImsegError):
        if isinstance(exc, (InputError, ConfigError)):
            return problem(422, "invalid-input", "Invalid input", str(exc))
        log.error("imseg error: %s", exc)
        return problem(500, "model-error", "Model error", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unexpected error")
        return problem(500, "internal-error", "Internal server error",
                       f"unexpected {type(exc).__name__}; the server logged the details.")


# ============================================================================ uploads
_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
]


def sniff_image_type(data: bytes) -> str | None:
    """Image type from the leading bytes (never from a file name or Content-Type), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def declared_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from the header only, without decoding pixels."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InputError("PNG upload has no IHDR header; the file is truncated or not a PNG.")
        return struct.unpack(">II", data[16:24])
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                return img.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too-many-pixels", "Image too large", f"{kind.upper()} header: {exc}") from exc
    except Exception as exc:
        raise InputError(f"could not read the {kind.upper()} header ({exc}); the file is truncated or corrupt.") from exc


def decode_upload(data: bytes, settings: ServeSettings) -> np.ndarray:
    """Check an upload by content and declared size, then decode it to RGB uint8 (H, W, 3)."""
    from ..io import read_image

    if not data:
        raise ApiError(422, "empty-upload", "Empty upload", "the upload is empty (0 bytes); send an image file.")
    kind = sniff_image_type(data)
    if kind is None:
        raise ApiError(
            415, "unsupported-type", "Unsupported image type",
            f"the upload is not a PNG, JPEG, GIF, BMP, TIFF or WebP image (first bytes {data[:8]!r}).",
        )
    width, height = declared_size(data, kind)
    if width <= 0 or height <= 0:
        raise ApiError(422, "empty-image", "Empty image", f"the {kind.upper()} header declares {width}x{height} pixels.")
    if width * height > settings.max_pixels:
        raise ApiError(
            413, "too-many-pixels", "Image too large",
            f"the {kind.upper()} header declares {width}x{height} = {width * height:,} pixels, above this server's "
            f"limit of {settings.max_pixels:,}; downscale the image first.",
        )
    try:
        return read_image(data, max_pixels=settings.max_pixels)
    except ImsegError:
        raise
    except Exception as exc:  # any decoder failure is the upload's fault
        raise InputError(f"could not decode the {kind.upper()} image ({exc}); it may be truncated or corrupt.") from exc


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (checked before and while reading)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, "upload-too-large", "Upload too large",
                       f"the request body is {int(length):,} bytes, above this server's limit of {limit:,}.")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "upload-too-large", "Upload too large",
                           f"the request body exceeds this server's limit of {limit:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "Unauthorized", "missing or wrong API key; send it in the X-API-Key header.",
                    {"WWW-Authenticate": "X-API-Key"})


class JsonBodyGuard:
    """ASGI middleware for the JSON segment endpoint: the API key, then the body size, before the body
    is read or parsed (FastAPI reads a typed body before it runs dependencies such as the key check).

    A ``Content-Length`` above ``limit`` is refused at once; without one (chunked) the body is read
    only up to ``limit`` bytes. Both answer 413 with a problem body; a missing/wrong key answers 401.
    """

    def __init__(self, app: Any, *, limit: int, key_ok: Callable[[str | None], bool]) -> None:
        self.app, self.limit, self.key_ok = app, int(limit), key_ok

    def _too_large(self, size: str) -> JSONResponse:
        return problem(413, "body-too-large", "Request body too large",
                       f"the JSON body {size} this server's limit of {self.limit:,} bytes; send fewer points "
                       f"or one mask_input (a 256x256 float32 mask_input is ~350 kB as base64).")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _SEGMENT_PATH.search(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        if not self.key_ok(headers.get("x-api-key")):
            await _as_problem(_unauthorized())(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            await self._too_large(f"is {int(length):,} bytes, above")(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
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


_SEGMENT_PATH = re.compile(r"/v1/images/[^/]+/segment/?$")


async def read_upload(
    request: Request, settings: ServeSettings, text_fields: tuple[str, ...] = ()
) -> tuple[bytes, dict[str, str]]:
    """Image bytes and text form fields from a multipart (field ``file``) or raw-bytes request.

    A multipart form may hold one ``file`` part (the image) and the text fields named in
    ``text_fields``; any other part, a second ``file`` or a named field sent as a file is a 422.
    """
    body = await read_body(request, settings.max_upload_bytes + 64 * 1024)
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        if len(body) > settings.max_upload_bytes:
            raise ApiError(413, "upload-too-large", "Upload too large",
                           f"the image is {len(body):,} bytes, above this server's limit of {settings.max_upload_bytes:,}.")
        return body, {}
    from starlette.datastructures import UploadFile

    async def replay() -> dict[str, Any]:  # hand the already-read (size-checked) body to the form parser
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(request.scope, receive=replay)
    try:
        form = await request.form(max_files=4, max_fields=8, max_part_size=1024 * 1024)
    except Exception as exc:
        raise ApiError(400, "bad-multipart", "Malformed multipart body", f"could not parse the form ({exc}).") from exc
    takes = " and ".join(["'file' (the image, as a file part)", *(f"'{n}' (a text field)" for n in text_fields)])
    fields: dict[str, str] = {}
    data = None
    unknown: list[str] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == "file":
                    if data is not None:
                        raise ApiError(422, "several-files", "Several files",
                                       "the form has more than one 'file' part; send one image per request.")
                    data = await value.read()
                elif key in text_fields:
                    raise ApiError(
                        422, "field-sent-as-file", f"'{key}' sent as a file",
                        f"'{key}' arrived as a file part; send it as a text form field instead "
                        f"(curl: -F '{key}=<{key}.json' reads the file into a text field; -F {key}=@... sends a file).",
                    )
                else:
                    unknown.append(key)
            elif key in text_fields:
                if key in fields:
                    raise ApiError(422, "repeated-field", "Repeated field", f"the form has '{key}' more than once.")
                fields[key] = value
            elif key == "file":
                raise ApiError(422, "file-sent-as-text", "File sent as text",
                               "'file' arrived as a text field; send the image as a file part (curl -F file=@photo.jpg).")
            else:
                unknown.append(key)
    finally:
        await form.close()
    if unknown:
        names = ", ".join(repr(k[:64]) for k in dict.fromkeys(unknown))
        raise ApiError(422, "unknown-field", "Unknown form field",
                       f"unknown form field(s) {names}; this endpoint takes {takes}.")
    if data is None:
        raise ApiError(422, "missing-file", "Missing file", "the multipart form has no 'file' part; send the image as 'file'.")
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, "upload-too-large", "Upload too large",
                       f"the image is {len(data):,} bytes, above this server's limit of {settings.max_upload_bytes:,}.")
    return data, fields


def _upload_body(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    props.update(extra or {})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": props, "required": ["file"]}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


# ============================================================================ mask encoding
def _png_b64(mask: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _polygons(mask: np.ndarray) -> list[list[float]]:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def encode_masks(masks: Masks, formats: list[str], return_logits: bool) -> list[MaskOut]:
    """Masks sorted by score (best first) as API objects in the requested formats."""
    masks = masks.sort_by("score") if len(masks) else masks
    rles = masks.to_rle() if "rle" in formats else None
    stability = masks.fields.get("stability_score")
    logits = masks.fields.get("low_res_logits") if return_logits else None
    out = []
    for i in range(len(masks)):
        dense = masks.masks[i] if ("png" in formats or "polygons" in formats) else None
        out.append(
            MaskOut(
                score=float(masks.scores[i]),
                area=int(masks.areas[i]),
                bbox=[float(v) for v in masks.boxes[i]],
                stability_score=None if stability is None else float(stability[i]),
                rle=RLE(size=[int(v) for v in rles[i]["size"]], counts=rles[i]["counts"]) if rles else None,
                png=_png_b64(dense) if "png" in formats else None,
                polygons=_polygons(dense) if "polygons" in formats else None,
                low_res_logits=None if logits is None
                else base64.b64encode(np.ascontiguousarray(logits[i], "<f4").tobytes()).decode("ascii"),
            )
        )
    return out


def decode_mask_input(text: str) -> np.ndarray:
    """base64 float32 256x256 logits -> (1, 256, 256) float32."""
    h, w = LOW_RES_SIZE
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise PromptError(f"mask_input is not valid base64 ({exc}).") from exc
    if len(raw) != h * w * 4:
        raise PromptError(
            f"mask_input must be {h}x{w} float32 logits ({h * w * 4} bytes once base64-decoded), got {len(raw)} bytes; "
            f"pass a low_res_logits value from a previous response (return_logits=true)."
        )
    arr = np.frombuffer(raw, "<f4").reshape(1, h, w).astype(np.float32)
    if not np.isfinite(arr).all():
        raise PromptError("mask_input contains NaN or infinite values.")
    return arr


# ============================================================================ metrics
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Request counters and latency histograms rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> [bucket counts..., sum, count]

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.setdefault(route, [0.0] * (len(_BUCKETS) + 2))
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[-2] += seconds
        hist[-1] += 1

    def render(self, cache: EmbeddingCache, pool: WorkerPool) -> str:
        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = ["# HELP imseg_http_requests_total HTTP requests by method, route and status.",
                 "# TYPE imseg_http_requests_total counter"]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(f'imseg_http_requests_total{{method="{esc(method)}",route="{esc(route)}",status="{status}"}} {count}')
        lines += ["# HELP imseg_http_request_duration_seconds Request latency by route.",
                  "# TYPE imseg_http_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            r = esc(route)
            for i, bound in enumerate(_BUCKETS):
                lines.append(f'imseg_http_request_duration_seconds_bucket{{route="{r}",le="{bound}"}} {int(hist[i])}')
            lines.append(f'imseg_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {int(hist[-1])}')
            lines.append(f'imseg_http_request_duration_seconds_sum{{route="{r}"}} {hist[-2]:.6f}')
            lines.append(f'imseg_http_request_duration_seconds_count{{route="{r}"}} {int(hist[-1])}')
        for name, kind, value, help_text in [
            ("imseg_cache_hits_total", "counter", cache.hits, "Embedding cache hits."),
            ("imseg_cache_misses_total", "counter", cache.misses, "Embedding cache misses."),
            ("imseg_cache_evictions_total", "counter", cache.evictions, "Embedding cache evictions."),
            ("imseg_cache_items", "gauge", len(cache), "Embeddings in the cache."),
            ("imseg_cache_bytes", "gauge", cache.bytes, "Bytes held by the embedding cache."),
            ("imseg_model_queue_waiting", "gauge", pool.waiting, "Requests waiting for a model worker."),
            ("imseg_model_running", "gauge", pool.running, "Model calls running."),
            ("imseg_model_rejected_total", "counter", pool.rejected, "Requests refused with 503 (busy)."),
            ("imseg_model_timeouts_total", "counter", pool.timeouts, "Model calls that timed out (504)."),
        ]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


# ============================================================================ the app
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


def create_app(segmenter: Any, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app.

    Args:
        segmenter: an ``imseg.load("mobile-sam" | "sam-vit-b", ...)`` segmenter (torch, or an ONNX
            export loaded with ``imseg.load(EXPORT_DIR)``), an official ``Sam`` model, or a :class:`SamBackend`.
        settings: limits and options (defaults: :class:`ServeSettings`).

    Raises:
        ConfigError: the settings cannot work with this model (e.g. a cache smaller than one embedding).
    """
    from .. import __version__

    settings = settings or ServeSettings()
    backend = _as_backend(segmenter, settings)
    _check_cache_fits(backend, settings)
    cache = EmbeddingCache(settings.cache_items, settings.cache_bytes)
    pool = WorkerPool(
        [backend.make_worker() for _ in range(settings.concurrency)],
        max_queue=settings.max_queue,
        queue_timeout=settings.queue_timeout,
        run_timeout=settings.request_timeout,
    )
    metrics = Metrics()

    app = FastAPI(
        title="imseg",
        version=__version__,
        description="Segment Anything over HTTP: upload an image once, then segment it with points and boxes.",
    )
    app.state.settings, app.state.backend, app.state.cache, app.state.pool = settings, backend, cache, pool
    app.state.metrics = metrics
    _install_error_handlers(app)

    def key_ok(key: str | None) -> bool:
        if settings.api_key is None:
            return True
        return key is not None and hmac.compare_digest(key.encode(), settings.api_key.encode())

    # added before the metrics middleware so that its 401/413 answers are counted too
    app.add_middleware(JsonBodyGuard, limit=settings.max_json_bytes, key_ok=key_ok)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            metrics.observe(request.method, getattr(route, "path", "unmatched"), status, time.perf_counter() - start)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )

    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when the server has --api-key.")

    def check_key(key: str | None = Security(api_key_header)) -> None:
        if not key_ok(key):
            raise _unauthorized()

    protected = [Depends(check_key)]

    def image_id_for(data: bytes) -> str:
        return hashlib.sha256(backend.name.encode() + b"\0" + data).hexdigest()[:32]

    async def embed(data: bytes, must_cache: bool = True) -> tuple[str | None, Any, bool, float]:
        image_id = image_id_for(data)
        found = cache.get(image_id)
        if found is not None:
            return image_id, found, True, 0.0
        image = decode_upload(data, settings)
        start = time.perf_counter()
        embedding = await pool.run(lambda w: w.embed(image, data))
        if not cache.put(image_id, embedding):
            if not must_cache:  # one-shot: the embedding is used once; no id that could not be used again
                return None, embedding, False, (time.perf_counter() - start) * 1000
            raise ApiError(
                507, "cache-too-small", "Embedding cache too small",
                f"the image embedding takes {embedding.nbytes:,} bytes, more than this server's whole embedding cache "
                f"({settings.cache_bytes:,} bytes), so its image_id could never be used; the server must be restarted "
                f"with a larger cache (imseg serve --cache-mb). POST /v1/segment works without the cache.",
            )
        return image_id, embedding, False, (time.perf_counter() - start) * 1000

    async def run_segment(image_id: str | None, embedding: Any, req: SegmentRequest, t0: float) -> SegmentResponse:
        timing: dict[str, float] = {}
        if req.mode == "everything":
            if req.points or req.box or req.mask_input:
                raise PromptError("mode 'everything' takes no points, box or mask_input; use mode 'prompt'.")
            if not backend.supports_everything:
                raise ApiError(422, "no-everything", "Everything mode unavailable", "this model has no everything mode.")
            image = decode_upload(embedding.source, settings)
            masks = await pool.run(lambda w: w.everything(image))
        else:
            size = (embedding.height, embedding.width)
            if req.points is not None and len(req.points) > settings.max_points:
                raise PromptError(f"{len(req.points)} points given; this server accepts at most {settings.max_points}.")
            if req.points and not req.labels:
                raise PromptError(
                    f"{len(req.points)} point(s) given without labels; send \"labels\": one per point, "
                    f"1 = foreground (object), 0 = background, e.g. \"labels\": {[1] * min(len(req.points), 3)}."
                )
            from ..prompts import validate_box, validate_points

            points, labels = validate_points(req.points or None, req.labels or None, size)
            box = validate_box(req.box, size)
            mask_input = decode_mask_input(req.mask_input) if req.mask_input else None
            masks = await pool.run(lambda w: w.predict(embedding, points, labels, box, mask_input, req.multimask))
        timing["model_ms"] = (time.perf_counter() - t0) * 1000
        out = encode_masks(masks, list(dict.fromkeys(req.formats)), req.return_logits)
        timing["total_ms"] = (time.perf_counter() - t0) * 1000
        return SegmentResponse(
            image_id=image_id, width=embedding.width, height=embedding.height, mode=req.mode,
            masks=out, best=0 if out else None, timing_ms=timing,
        )

    # ---------------------------------------------------------------- routes
    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Ready, tags=["ops"], responses={503: PROBLEM_RESPONSES[503]})
    async def readyz() -> Ready:
        """Readiness: the model is loaded and the queue is not full."""
        ready = pool.waiting < settings.max_queue or pool.waiting == 0
        body = Ready(ready=ready, model=backend.name, workers=pool.size, waiting=pool.waiting, cache_items=len(cache))
        if not ready:
            raise ApiError(503, "not-ready", "Not ready", "the model queue is full.", {"Retry-After": "1"})
        return body

    @app.get("/v1/models", response_model=ModelList, tags=["models"], dependencies=protected,
             responses={401: PROBLEM_RESPONSES[401]})
    async def models() -> ModelList:
        """The loaded model."""
        return ModelList(models=[ModelInfo(name=backend.name, summary=backend.summary, loaded=True, prompts=True,
                                           everything=backend.supports_everything)])

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"], dependencies=protected,
             responses={401: PROBLEM_RESPONSES[401]})
    async def prometheus() -> PlainTextResponse:
        """Prometheus text format: requests, latencies, cache and queue figures."""
        return PlainTextResponse(metrics.render(cache, pool), media_type="text/plain; version=0.0.4")

    upload_errors = {c: PROBLEM_RESPONSES[c] for c in (401, 413, 415, 422, 503, 504)}

    @app.post("/v1/images", response_model=ImageInfo, tags=["segment"], dependencies=protected,
              openapi_extra=_upload_body(), responses={**upload_errors, 400: {"model": Problem}, 507: PROBLEM_RESPONSES[507]})
    async def upload_image(request: Request) -> ImageInfo:
        """Upload an image (multipart field ``file`` or the raw bytes); computes and caches its embedding."""
        data, _ = await read_upload(request, settings)
        image_id, emb, cached, ms = await embed(data)
        return ImageInfo(image_id=image_id, width=emb.width, height=emb.height, cached=cached, embed_ms=round(ms, 3))

    @app.post("/v1/images/{image_id}/segment", response_model=SegmentResponse, tags=["segment"], dependencies=protected,
              responses={c: PROBLEM_RESPONSES[c] for c in (401, 404, 413, 422, 503, 504)})
    async def segment_image(image_id: str, req: SegmentRequest) -> SegmentResponse:
        """Segment a previously uploaded image with points / box / mask_input, or everything mode."""
        t0 = time.perf_counter()
        embedding = cache.get(image_id)
        if embedding is None:
            raise ApiError(404, "unknown-image", "Unknown image",
                           f"no image with id {image_id[:64]!r} is cached (never uploaded, or evicted); "
                           f"upload it again with POST /v1/images.")
        return await run_segment(image_id, embedding, req, t0)

    @app.post("/v1/segment", response_model=SegmentResponse, tags=["segment"], dependencies=protected,
              openapi_extra=_upload_body({"prompts": {"type": "string", "description": "SegmentRequest as JSON"}}),
              responses={**upload_errors, 400: {"model": Problem}})
    async def segment_once(request: Request) -> SegmentResponse:
        """One shot: multipart ``file`` + optional ``prompts`` (SegmentRequest JSON); no prompts = everything."""
        t0 = time.perf_counter()
        data, fields = await read_upload(request, settings, text_fields=("prompts",))
        text, query = fields.get("prompts"), request.query_params.get("prompts")
        if text is not None and query is not None:
            raise ApiError(422, "prompts-twice", "Prompts given twice",
                           "prompts were given both as a form field and in the query string; send them once.")
        text = query if text is None else text
        if text is not None and not text.strip():
            raise ApiError(
                422, "empty-prompts", "Empty prompts",
                "'prompts' is empty; send SegmentRequest JSON as the text field 'prompts' (e.g. "
                '{"points": [[x, y]], "labels": [1]}), or leave the field out for everything mode.',
            )
        try:
            req = SegmentRequest.model_validate_json(text) if text is not None else SegmentRequest(mode="everything")
        except ValidationError as exc:
            errors = [{"loc": ["prompts", *e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
            return problem(422, "invalid-request", "Invalid request", _describe_validation(errors), errors=errors)
        if req.mode == "everything":  # no prompt embedding needed: decode and run everything mode
            image = decode_upload(data, settings)
            emb = Embedding(state={}, source=data, height=int(image.shape[0]), width=int(image.shape[1]))
            return await run_segment(None, emb, req, t0)
        image_id, emb, _, _ = await embed(data, must_cache=False)
        return await run_segment(image_id, emb, req, t0)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # the pool's errors become problem responses with Retry-After
    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy):
        return problem(503, "busy", "Server busy", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RunTimeout)
    async def _timeout(_: Request, exc: RunTimeout):
        return problem(504, "timeout", "Model timeout", str(exc))

    return app
