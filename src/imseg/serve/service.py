"""The segmentation flow behind the routes: embed an upload (cached by content), check prompts, run the
model in the worker pool, encode the masks in a worker thread."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from ..errors import PromptError
from ..masks import Masks
from .backend import Embedding
from .dependencies import ServeState
from .encoding import decode_mask_input, encode_masks
from .problems import ApiError
from .schemas import SegmentRequest, SegmentResponse
from .uploads import decode_upload


def image_id_for(state: ServeState, data: bytes) -> str:
    return hashlib.sha256(state.backend.name.encode() + b"\0" + data).hexdigest()[:32]


async def embed(state: ServeState, data: bytes, must_cache: bool = True) -> tuple[str | None, Embedding, bool, float]:
    """(image_id, embedding, served from the cache, embed ms) of an upload; ``must_cache=False`` (one-shot)
    gives image_id None when the cache cannot hold the embedding instead of a 507."""
    image_id = image_id_for(state, data)
    found = state.cache.get(image_id)
    if found is not None:
        return image_id, found, True, 0.0
    image = await decode_off_loop(state, data)
    start = time.perf_counter()
    embedding = await state.pool.run(lambda w: w.embed(image, data))
    if not state.cache.put(image_id, embedding):
        if not must_cache:  # one-shot: the embedding is used once; no id that could not be used again
            return None, embedding, False, (time.perf_counter() - start) * 1000
        raise ApiError(
            507, "cache-too-small", "Embedding cache too small",
            f"the image embedding takes {embedding.nbytes:,} bytes, more than this server's whole embedding cache "
            f"({state.settings.cache_bytes:,} bytes), so its image_id could never be used; the server must be restarted "
            f"with a larger cache (imseg serve --cache-mb). POST /v1/segment works without the cache.",
        )
    return image_id, embedding, False, (time.perf_counter() - start) * 1000


async def decode_off_loop(state: ServeState, data: bytes) -> np.ndarray:
    """:func:`decode_upload` in a worker thread (decoding a large image takes a while)."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(decode_upload, data, state.settings)


async def upload_embedding(state: ServeState, data: bytes) -> Embedding:
    """An uncached stand-in embedding of an upload for everything mode (no prompt embedding needed)."""
    image = await decode_off_loop(state, data)
    return Embedding(state={}, source=data, height=int(image.shape[0]), width=int(image.shape[1]))


def prompt_inputs(state: ServeState, req: SegmentRequest, size: tuple[int, int]) -> tuple[Any, ...]:
    """(points, labels, box, mask_input) checked against the image ``size`` (H, W) and the server limits."""
    from ..prompts import validate_box, validate_points

    if req.points is not None and len(req.points) > state.settings.max_points:
        raise PromptError(f"{len(req.points)} points given; this server accepts at most {state.settings.max_points}.")
    if req.points and not req.labels:
        raise PromptError(
            f"{len(req.points)} point(s) given without labels; send \"labels\": one per point, "
            f"1 = foreground (object), 0 = background, e.g. \"labels\": {[1] * min(len(req.points), 3)}."
        )
    points, labels = validate_points(req.points or None, req.labels or None, size)
    box = validate_box(req.box, size)
    mask_input = decode_mask_input(req.mask_input, state.backend.low_res_size) if req.mask_input else None
    return points, labels, box, mask_input


def check_text(state: ServeState, req: SegmentRequest) -> list[str] | None:
    """The phrases of a ``text`` request (None without ``text``), or a 422 naming what is off."""
    if req.text is None:
        return None
    given = [name for name, value in (("points", req.points), ("labels", req.labels), ("box", req.box),
                                      ("mask_input", req.mask_input)) if value]
    if req.mode == "everything":
        given.insert(0, "mode 'everything'")
    if given:
        raise ApiError(422, "text-with-prompts", "Text with other prompts",
                       f"'text' cannot be combined with {', '.join(given)}; send the phrases alone, or drop 'text'.")
    if state.text is None:
        raise ApiError(422, "no-detector", "Text prompts unavailable",
                       "this server has no text detector; start it with --detector (e.g. imseg serve "
                       "--detector grounding-dino-tiny) to use 'text', or send points or a box.")
    from ..text import parse_phrases

    return parse_phrases(req.text)


async def text_masks(state: ServeState, embedding: Embedding, phrases: list[str]) -> Masks:
    """Masks for ``phrases``: the detector on the upload's pixels, then all its boxes decoded on the cached
    embedding in one decoder call (no image encoder run), labelled and scored as ``TextSegmenter`` does."""
    from ..text.segmenter import labelled_masks

    # the cache keeps the upload bytes, not the pixels (3 bytes a pixel against a compressed file), so they are
    # decoded again here: the detector is far slower than the decoding
    rgb = await decode_off_loop(state, embedding.source)

    def work(worker: Any) -> Masks:
        boxes, scores, index = state.text.detect(rgb, phrases)
        return labelled_masks(worker.predict_boxes(embedding, boxes), phrases, boxes, scores, index)

    return await state.pool.run(work)


async def run_segment(state: ServeState, image_id: str | None, embedding: Embedding, req: SegmentRequest,
                      t0: float) -> SegmentResponse:
    """Masks for ``req`` on an embedded image, encoded in the requested formats off the event loop."""
    import anyio.to_thread

    timing: dict[str, float] = {}
    phrases = check_text(state, req)
    if phrases is not None:
        masks = await text_masks(state, embedding, phrases)
    elif req.mode == "everything":
        if req.points or req.box or req.mask_input:
            raise PromptError("mode 'everything' takes no points, box or mask_input; use mode 'prompt'.")
        if not state.backend.supports_everything:
            raise ApiError(422, "no-everything", "Everything mode unavailable", "this model has no everything mode.")
        image = await decode_off_loop(state, embedding.source)
        masks = await state.pool.run(lambda w: w.everything(image))
    else:
        points, labels, box, mask_input = prompt_inputs(state, req, (embedding.height, embedding.width))
        masks = await state.pool.run(lambda w: w.predict(embedding, points, labels, box, mask_input, req.multimask))
    timing["model_ms"] = (time.perf_counter() - t0) * 1000
    out = await anyio.to_thread.run_sync(encode_masks, masks, list(dict.fromkeys(req.formats)), req.return_logits)
    timing["total_ms"] = (time.perf_counter() - t0) * 1000
    logits = any(m.low_res_logits is not None for m in out)
    return SegmentResponse(
        image_id=image_id, width=embedding.width, height=embedding.height, mode=req.mode,
        masks=out, best=0 if out else None, timing_ms=timing,
        low_res_size=list(state.backend.low_res_size) if logits else None,
    )
