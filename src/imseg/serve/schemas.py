"""Request and response models of the REST API (pydantic), and the OpenAPI pieces shared by routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .settings import SCHEMA_MAX_POINTS

PROBLEM = "application/problem+json"

# strict: a coordinate or label is a JSON number, never a string ("1") or a boolean (true)
Coord = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Label = Annotated[int, Field(strict=True, ge=0, le=1)]
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
    labels: list[Label] | None = Field(
        None, max_length=SCHEMA_MAX_POINTS, description="1 = foreground, 0 = background; one per point"
    )
    box: tuple[Coord, Coord, Coord, Coord] | None = Field(None, description="[x0, y0, x1, y1]")
    text: str | None = Field(
        None, max_length=2000,
        description="phrases to find, separated by '.' (\"horse. rider.\"); needs a server started with --detector, "
                    "takes no points, box or mask_input",
    )
    mask_input: str | None = Field(
        None,
        description="base64 of little-endian float32 low-res logits of the model's low_res_size (GET /v1/models; "
                    "256x256 for SAM at 1024 px): a previous low_res_logits",
    )
    multimask: bool = Field(True, description="3 candidate masks (True) or 1 (False)")
    formats: list[MaskFormat] = Field(default_factory=lambda: ["rle"], min_length=1, max_length=3)
    return_logits: bool = Field(False, description="include each mask's low_res_logits (base64 float32, the model's "
                                                   "low_res_size)")


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str


class MaskOut(BaseModel):
    score: float
    area: int
    bbox: list[float] = Field(description="[x, y, width, height] pixels")
    stability_score: float | None = None
    label: str | None = Field(None, description="text prompts: the phrase this mask was found for")
    detector_score: float | None = Field(None, description="text prompts: the detector's box score (score = "
                                                            "detector_score x SAM's predicted IoU)")
    rle: RLE | None = None
    png: str | None = Field(None, description="base64 PNG, 8-bit gray, 255 = mask")
    polygons: list[list[float]] | None = Field(
        None, description="outer contours as [x0, y0, x1, y1, ...] (pixel corners, as imseg.Masks.to_polygons)"
    )
    low_res_logits: str | None = Field(None, description="base64 little-endian float32 logits, row-major, of the "
                                                          "response's low_res_size; send back as mask_input")


class SegmentResponse(BaseModel):
    image_id: str | None
    width: int
    height: int
    mode: Literal["prompt", "everything"]
    masks: list[MaskOut] = Field(description="sorted by score, best first")
    best: int | None = Field(description="index of the best mask (0) or null when there are none")
    timing_ms: dict[str, float]
    low_res_size: list[int] | None = Field(None, description="[height, width] of each mask's low_res_logits "
                                                              "(when returned)")


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
    low_res_size: list[int] = Field(description="[height, width] of the low-res logits this model takes as "
                                                "mask_input and returns as low_res_logits")


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


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these problem status codes."""
    return {code: PROBLEM_RESPONSES[code] for code in codes}


def upload_body(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of an upload route (the body is read by hand, so FastAPI cannot derive it)."""
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
