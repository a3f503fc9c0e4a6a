"""One shot: an image and optional prompts in one request (no prompts = everything mode)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..dependencies import PROTECTED, State, Upload, image_and_prompts_upload
from ..problems import ApiError, invalid_request
from ..schemas import Problem, SegmentRequest, SegmentResponse, problem_responses, upload_body
from ..service import check_text, embed, run_segment, upload_embedding

router = APIRouter(tags=["segment"], dependencies=PROTECTED)


def _prompts_text(upload: Upload, request: Request) -> str | None:
    """The ``prompts`` JSON from the form field or the query string (once), or None (everything mode)."""
    text, query = upload.fields.get("prompts"), request.query_params.get("prompts")
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
    return text


@router.post("/v1/segment", response_model=SegmentResponse,
             openapi_extra=upload_body({"prompts": {"type": "string", "description": "SegmentRequest as JSON"}}),
             responses={**problem_responses(401, 413, 415, 422, 503, 504), 400: {"model": Problem}})
async def segment_once(
    state: State, request: Request, upload: Annotated[Upload, Depends(image_and_prompts_upload)]
) -> SegmentResponse | JSONResponse:
    """One shot: multipart ``file`` + optional ``prompts`` (SegmentRequest JSON); no prompts = everything."""
    t0 = time.perf_counter()
    text = _prompts_text(upload, request)
    try:
        req = SegmentRequest.model_validate_json(text) if text is not None else SegmentRequest(mode="everything")
    except ValidationError as exc:
        return invalid_request([{"loc": ["prompts", *e.get("loc", ())], "msg": str(e.get("msg", ""))}
                                for e in exc.errors()])
    check_text(state, req)  # before the encoder runs
    if req.mode == "everything":  # no prompt embedding needed: decode and run everything mode
        return await run_segment(state, None, await upload_embedding(state, upload.data), req, t0)
    image_id, emb, _, _ = await embed(state, upload.data, must_cache=False)
    return await run_segment(state, image_id, emb, req, t0)
