"""Uploads: reading request bodies within size and memory limits, multipart forms, sniffing and decoding images."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import Request

from ..errors import ImsegError, InputError
from .problems import ApiError, client_gone
from .settings import ServeSettings

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


class UploadBudget:
    """Bounds the bytes of upload bodies held in memory by all requests together.

    A request reserves its declared ``Content-Length`` (or the body limit when it declares none)
    before reading a byte, and keeps the reservation until its answer is ready. One that does not
    fit waits (the unread body stays in the client's socket) up to ``wait`` seconds, then is refused
    with 503 and ``Retry-After``.
    """

    def __init__(self, total: int, wait: float) -> None:
        self.total, self.wait = int(total), float(wait)
        self.held = 0
        self.rejected = 0

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        nbytes = min(max(int(nbytes), 1), self.total)
        deadline = time.monotonic() + self.wait
        while self.held + nbytes > self.total:
            if time.monotonic() >= deadline:
                self.rejected += 1
                raise ApiError(
                    503, "uploads-busy", "Server busy",
                    f"the server is already receiving {self.held:,} bytes of uploads (its limit is {self.total:,}); "
                    f"retry shortly.", {"Retry-After": "1"},
                )
            await asyncio.sleep(0.02)  # cheap polling: waiters are few and a reservation lasts one request
        self.held += nbytes
        try:
            yield
        finally:
            self.held -= nbytes


def declared_length(request: Request, limit: int) -> int | None:
    """The declared ``Content-Length``, or None (chunked); 413 at once when it is above ``limit``."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return None
    if int(length) > limit:
        raise ApiError(413, "upload-too-large", "Upload too large",
                       f"the request body is {int(length):,} bytes, above this server's limit of {limit:,}.")
    return int(length)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (checked before and while reading)."""
    from starlette.requests import ClientDisconnect

    declared_length(request, limit)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "upload-too-large", "Upload too large",
                               f"the request body exceeds this server's limit of {limit:,} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise client_gone(request.scope, "upload", total, request.headers.get("content-length")) from None
    return b"".join(chunks)


def _too_large(data: bytes, settings: ServeSettings) -> ApiError:
    return ApiError(413, "upload-too-large", "Upload too large",
                    f"the image is {len(data):,} bytes, above this server's limit of {settings.max_upload_bytes:,}.")


async def read_upload(
    request: Request, settings: ServeSettings, text_fields: tuple[str, ...] = ()
) -> tuple[bytes, dict[str, str]]:
    """Image bytes and text form fields from a multipart (field ``file``) or raw-bytes request.

    A multipart form may hold one ``file`` part (the image) and the text fields named in
    ``text_fields``; any other part, a second ``file`` or a named field sent as a file is a 422.
    """
    body = await read_body(request, settings.max_body_bytes)
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        if len(body) > settings.max_upload_bytes:
            raise _too_large(body, settings)
        return body, {}

    async def replay() -> dict[str, Any]:  # hand the already-read (size-checked) body to the form parser
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive=replay).form(max_files=4, max_fields=8, max_part_size=1024 * 1024)
    except Exception as exc:
        raise ApiError(400, "bad-multipart", "Malformed multipart body", f"could not parse the form ({exc}).") from exc
    try:
        data, fields = await _form_parts(form, text_fields)
    finally:
        await form.close()
    if len(data) > settings.max_upload_bytes:
        raise _too_large(data, settings)
    return data, fields


async def _form_parts(form: Any, text_fields: tuple[str, ...]) -> tuple[bytes, dict[str, str]]:
    """The ``file`` part and the ``text_fields`` of a parsed form; anything else is a named 422."""
    from starlette.datastructures import UploadFile

    takes = " and ".join(["'file' (the image, as a file part)", *(f"'{n}' (a text field)" for n in text_fields)])
    fields: dict[str, str] = {}
    data = None
    unknown: list[str] = []
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
    if unknown:
        names = ", ".join(repr(k[:64]) for k in dict.fromkeys(unknown))
        raise ApiError(422, "unknown-field", "Unknown form field",
                       f"unknown form field(s) {names}; this endpoint takes {takes}.")
    if data is None:
        raise ApiError(422, "missing-file", "Missing file", "the multipart form has no 'file' part; send the image as 'file'.")
    return data, fields
