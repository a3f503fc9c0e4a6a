"""Upload an image once (its embedding is cached), then segment it by ``image_id``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from ..dependencies import PROTECTED, State, Upload, image_upload
from ..problems import ApiError
from ..schemas import ImageInfo, Problem, SegmentRequest, SegmentResponse, problem_responses, upload_body
from ..service import embed, run_segment

router = APIRouter(tags=["segment"], dependencies=PROTECTED)


@router.post("/v1/images", response_model=ImageInfo, openapi_extra=upload_body(),
             responses={**problem_responses(401, 413, 415, 422, 503, 504), 400: {"model": Problem},
                        **problem_responses(507)})
async def upload_image(state: State, upload: Annotated[Upload, Depends(image_upload)]) -> ImageInfo:
    """Upload an image (multipart field ``file`` or the raw bytes); computes and caches its embedding."""
    image_id, emb, cached, ms = await embed(state, upload.data)
    return ImageInfo(image_id=image_id, width=emb.width, height=emb.height, cached=cached, embed_ms=round(ms, 3))


@router.post("/v1/images/{image_id}/segment", response_model=SegmentResponse,
             responses=problem_responses(401, 404, 413, 422, 503, 504))
async def segment_image(state: State, image_id: str, req: SegmentRequest) -> SegmentResponse:
    """Segment a previously uploaded image with points / box / mask_input, text phrases, or everything mode."""
    t0 = time.perf_counter()
    embedding = state.cache.get(image_id)
    if embedding is None:
        raise ApiError(404, "unknown-image", "Unknown image",
                       f"no image with id {image_id[:64]!r} is cached (never uploaded, or evicted); "
                       f"upload it again with POST /v1/images.")
    return await run_segment(state, image_id, embedding, req, t0)
