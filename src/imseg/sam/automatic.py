"""Segment everything: a grid of point prompts -> filtered, de-duplicated masks.

``SamAutomaticMaskGenerator`` has the official segment_anything constructor and ``generate()``
output, and gives the same masks on the same weights. It is faster because of how the work is
ordered, not because it approximates:

* the image embedding is shared by all prompts (broadcast, never copied per prompt), and the
  prompt-independent projections of the first decoder block are computed once per image;
* attention over the 64x64 image tokens is re-associated so per-prompt work multiplies by the
  few prompt tokens instead of projecting every image token (same function, fewer FLOPs);
* candidates are filtered by predicted IoU before any mask is upscaled; only prompts with a
  surviving candidate go through the upscaling convolutions (written as matmuls);
* survivors are upsampled to full resolution in memory-bounded chunks, where stability score,
  thresholding and boxes are computed vectorised; RLEs come from pycocotools; NMS from torchvision.

The model may be ours (``imseg.sam``) or an official ``segment_anything`` / ``mobile_sam`` model:
only the official module and parameter names are used. The generator reaches the model only through
a small backend (:class:`AmgBackend`: embed a crop, decode a batch of single-point prompts);
:class:`TorchBackend` is the default, and ``imseg.export.runtime.OrtAmgBackend`` runs the same
pipeline on exported ONNX encoder/decoder sessions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, InputError
from ..masks import Masks, coco_rles, rle_counts
from ..masks.rle import rle_areas
from ..postprocess import remove_small_regions
from .amg_utils import (
    MaskRecords,
    box_near_crop_edge,
    build_layer_point_grids,
    generate_crop_boxes,
    masks_to_boxes_xyxy,
    stability_score,
)
from .amg_utils import build_point_grid as build_point_grid  # re-exported: part of this module's API
from .transforms import longest_side_shape

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .batch_decoder import PromptBatchDecoder

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
#: Images above this many pixels need crop layers (tiling); see ``max_pixels``.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Bytes of float32 full-resolution logits held at once while upsampling candidates (off the CPU).
CHUNK_BYTES = 128 * 1024 * 1024
#: Candidates upsampled and filtered together on CPU: their full-resolution logits stay in cache through the
#: stability counts, threshold and boxes (ViT-B, 512 px, Zen 5: 0.19 ms a mask upsampled 4 at a time, 1.9 ms
#: for 85 at a time)
CPU_CHUNK = 4


# ----------------------------------------------------------------------------- backends
class PointBatch(Protocol):
    """Decoder results for B single-point prompts on one crop (multimask outputs 1..3).

    ``iou``: (B, 3) float predicted IoU. ``low_res(ids)``: (P, 3, 256, 256) low-res mask logits of
    the prompts ``ids`` ((P,) long tensor), made lazily so that a backend may skip the masks the
    IoU filter already rejected.
    """

    iou: torch.Tensor

    def low_res(self, ids: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AmgBackend(Protocol):
    """What :class:`SamAutomaticMaskGenerator` needs from a SAM model.

    ``img_size``: side (px) of the square padded model input (1024). ``mask_threshold``: logit
    threshold of a mask pixel. ``embed(crop)``: an (h, w, 3) uint8 RGB crop -> (an opaque per-crop
    image state, (h', w') size of the crop resized so that its long side is ``img_size``).
    ``decode(state, coords)``: (B, 2) float64 XY points in that resized frame, one foreground point
    per prompt -> :class:`PointBatch`. Optionally ``state_for(embedding)``: the per-crop state of an
    :class:`imseg.segmenter.Embedding` of the whole image, so a segmenter's cached embedding is reused.
    """

    img_size: int
    mask_threshold: float

    def embed(self, crop: np.ndarray) -> tuple[Any, tuple[int, int]]: ...

    def decode(self, state: Any, coords: np.ndarray) -> PointBatch: ...


class _TorchPointBatch:
    """Decoder tokens of a batch (per chunk of prompts); masks are made only for the prompts asked for."""

    def __init__(self, decoder: PromptBatchDecoder, iou: torch.Tensor, chunks: list[tuple]) -> None:
        self.decoder, self.chunks = decoder, chunks
        self.iou = iou[:, 1:].float()  # multimask output: tokens 1..3

    def low_res(self, ids: torch.Tensor) -> torch.Tensor:
        n_masks = self.iou.shape[1]
        return self.decoder.masks_of(self.chunks, ids, list(range(1, 1 + n_masks)))


class _ModuleState:
    """A crop's embedding for a mask decoder that must be called as a module (wrapped or hooked)."""

    def __init__(self, model: Any, embedding: torch.Tensor) -> None:
        self.model, self.embedding = model, embedding


class _ModulePointBatch:
    """Decoder outputs of the official module layout (every mask made, as the official generator does)."""

    def __init__(self, low_res: torch.Tensor, iou: torch.Tensor) -> None:
        self._low_res, self.iou = low_res, iou.float()

    def low_res(self, ids: torch.Tensor) -> torch.Tensor:
        return self._low_res[ids]


@dataclass
class _Features:
    """Bare image features in the shape of an :class:`imseg.segmenter.Embedding` for ``state_for``."""

    features: Any


class TorchBackend:
    """The default backend: a PyTorch SAM model in this process (the fast :class:`PromptBatchDecoder`)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.img_size = int(model.image_encoder.img_size)
        self.mask_threshold = float(getattr(model, "mask_threshold", 0.0))

    def _device_dtype(self):
        param = next(self.model.mask_decoder.parameters())
        return param.device, param.dtype

    def embed(self, crop: np.ndarray) -> tuple[PromptBatchDecoder, tuple[int, int]]:
        """The crop's image embedding (1, C, 64, 64), held by a decoder ready for its prompts."""
        import torch
        from PIL import Image

        device, dtype = self._device_dtype()
        nh, nw = longest_side_shape(crop.shape[0], crop.shape[1], self.img_size)
        resized = np.array(Image.fromarray(crop).resize((nw, nh), Image.BILINEAR))
        x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
        x = self.model.preprocess(x)
        encoder_dtype = next(self.model.image_encoder.parameters()).dtype  # bfloat16 under precision="bf16"
        features = self.model.image_encoder(x.to(encoder_dtype)).to(dtype)
        return self.state_for(_Features(features)), (nh, nw)

    def state_for(self, image_embedding: Any) -> PromptBatchDecoder | _ModuleState:
        """The per-crop state of an :class:`imseg.segmenter.Embedding` computed elsewhere (e.g. by a
        predictor): its ``features`` (1, C, 64, 64) held by a decoder ready for prompts."""
        from .batch_decoder import PromptBatchDecoder
        from .common import plain_modules

        embedding = image_embedding.features.to(self._device_dtype()[1])
        if not plain_modules(self.model.mask_decoder):  # the fast decoder reads weights directly: call modules
            return _ModuleState(self.model, embedding)
        return PromptBatchDecoder(self.model, embedding)

    def decode(self, state: PromptBatchDecoder | _ModuleState, coords: np.ndarray) -> PointBatch:
        import torch

        device, dtype = self._device_dtype()
        points = torch.as_tensor(coords, device=device)[:, None, :]  # float64 like the official
        labels = torch.ones((len(coords), 1), dtype=torch.int, device=device)
        sparse, dense = self.model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        if isinstance(state, _ModuleState):
            low_res, iou = self.model.mask_decoder(state.embedding, self.model.prompt_encoder.get_dense_pe(),
                                                   sparse.to(dtype), dense.to(dtype), True)
            return _ModulePointBatch(low_res, iou)
        iou, chunks = state.predict_chunks(sparse.to(dtype))
        return _TorchPointBatch(state, iou, chunks)


# ----------------------------------------------------------------------------- the generator
class SamAutomaticMaskGenerator:
    """Masks for everything in an image from a grid of point prompts (official API and defaults).

    Args:
        model: a SAM model (``imseg.sam``, ``segment_anything`` or ``mobile_sam``), run through
            :class:`TorchBackend`; or any :class:`AmgBackend` (e.g. ``imseg.export.runtime.OrtAmgBackend``).
        points_per_side: grid points per image side (points_per_side**2 prompts); or None with
            ``point_grids``.
        points_per_batch: prompts decoded together (memory vs speed).
        pred_iou_thresh: keep candidates whose predicted IoU is above this (0 disables).
        stability_score_thresh: keep candidates whose stability score is at least this.
        stability_score_offset: logit offset used for the stability score.
        box_nms_thresh: box IoU for NMS within a crop.
        crop_n_layers: extra layers of crops (layer i has 2^i x 2^i crops); > 0 tiles the image.
        crop_nms_thresh: box IoU for NMS between crops.
        crop_overlap_ratio: overlap between crops as a fraction of the short image side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this**i.
        point_grids: explicit (K, 2) grids in [0, 1], one per crop layer.
        min_mask_region_area: fill holes / drop islands smaller than this (pixels), then NMS again.
        output_mode: ``binary_mask`` | ``uncompressed_rle`` | ``coco_rle``.
        max_pixels: images above this many pixels are refused unless ``crop_n_layers > 0``
            (default 16.8 MP, or ``$IMSEG_AMG_MAX_PIXELS``).
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        max_pixels: int | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ConfigError(
                "give exactly one of points_per_side (e.g. 32) or point_grids (a list of (K, 2) arrays in "
                "[0, 1], one per crop layer)."
            )
        if output_mode not in OUTPUT_MODES:
            raise ConfigError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}.")
        if points_per_batch < 1:
            raise ConfigError(f"points_per_batch must be >= 1, got {points_per_batch}.")
        if crop_n_layers < 0:
            raise ConfigError(f"crop_n_layers must be >= 0, got {crop_n_layers}.")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ConfigError(f"points_per_side must be >= 1, got {points_per_side}.")
            grids = build_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) < crop_n_layers + 1:
                raise ConfigError(
                    f"point_grids has {len(grids)} grid(s) but crop_n_layers={crop_n_layers} needs "
                    f"{crop_n_layers + 1} (one per layer)."
                )
            for i, g in enumerate(grids):
                if g.ndim != 2 or g.shape[1] != 2 or (g.size and (g.min() < 0 or g.max() > 1)):
                    raise ConfigError(f"point_grids[{i}] must be a (K, 2) array of XY in [0, 1]; got {g.shape}.")
        sam_parts = ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess")
        if all(hasattr(model, attr) for attr in sam_parts):
            self.backend: AmgBackend = TorchBackend(model)
            self.model = model
        elif isinstance(model, AmgBackend):
            self.backend = model
            self.model = getattr(model, "model", None)
        else:
            missing = next(attr for attr in sam_parts if not hasattr(model, attr))
            raise ConfigError(
                f"model has no '{missing}'; pass a SAM model such as imseg.sam.sam_model_registry['vit_b'](...)"
                f" or an imseg.sam.automatic.AmgBackend (img_size, mask_threshold, embed(), decode())."
            )
        self._predictor = None
        self.point_grids = grids
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = int(min_mask_region_area)
        self.output_mode = output_mode
        env = os.environ.get("IMSEG_AMG_MAX_PIXELS")
        self.max_pixels = int(max_pixels if max_pixels is not None else env or DEFAULT_MAX_PIXELS)

    # ------------------------------------------------------------------ public API
    @property
    def predictor(self):
        """A :class:`~imseg.sam.predictor.SamPredictor` on the same model (the official generator has one)."""
        if self._predictor is None:
            if self.model is None or not hasattr(self.model, "image_encoder"):
                raise ConfigError("this generator runs on a backend without a PyTorch SAM model; it has no predictor.")
            from .predictor import SamPredictor

            self._predictor = SamPredictor(self.model)
        return self._predictor

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an (H, W, 3) uint8 RGB image as the official list of records.

        Each record: ``segmentation`` ((H, W) bool array or RLE dict per ``output_mode``),
        ``area`` (px), ``bbox`` (XYWH, official convention w = x_max - x_min), ``predicted_iou``,
        ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box`` (XYWH).
        """
        from pycocotools import mask as mask_utils

        found = self._generate(image)
        rles, boxes, iou, stab = found.rles, found.boxes.numpy(), found.iou.numpy(), found.stability.numpy()
        points, crops = found.points, found.crop_boxes
        records = []
        areas = rle_areas(rles)
        for i, rle in enumerate(rles):
            if self.output_mode == "coco_rle":
                seg: Any = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            else:
                dense = mask_utils.decode(rle).astype(bool)
                seg = dense if self.output_mode == "binary_mask" else {"size": list(rle["size"]), "counts": rle_counts(dense)}
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            cx0, cy0, cx1, cy1 = (int(v) for v in crops[i])
            records.append(
                {
                    "segmentation": seg,
                    "area": int(areas[i]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(iou[i]),
                    "point_coords": [[float(points[i][0]), float(points[i][1])]],
                    "stability_score": float(stab[i]),
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return records

    def generate_masks(self, image: Any, embedding: Any = None) -> Masks:
        """Everything mode as :class:`~imseg.masks.Masks` (RLE-backed; scores = predicted IoU).

        ``image`` is anything :func:`imseg.io.read_image` accepts. Extra fields: ``stability_score``,
        ``point_coords`` (N, 2) XY px, ``crop_box`` (N, 4) XYXY px. Boxes follow the COCO/pycocotools
        convention (XYWH, w = x_max - x_min + 1). ``embedding`` (an :class:`imseg.segmenter.Embedding` of
        this image, from the same model) is used for the whole-image crop instead of encoding it again.
        """
        from ..io import read_image

        array = read_image(image)
        found = self._generate(array, embedding)
        return Masks(
            rles=[{"size": list(r["size"]), "counts": r["counts"]} for r in found.rles],
            image_size=array.shape[:2],
            scores=found.iou.numpy().astype(np.float32),
            stability_score=found.stability.numpy().astype(np.float32),
            point_coords=np.asarray(found.points, np.float32).reshape(-1, 2),
            crop_box=np.asarray(found.crop_boxes, np.int64).reshape(-1, 4),
        )

    # ------------------------------------------------------------------ pipeline
    def _check_image(self, image: Any) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise InputError(
                f"generate() expects an (H, W, 3) uint8 numpy array, got {type(image).__name__}; "
                f"use imseg.read_image(path) first, or generate_masks(path)."
            )
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                f"generate() expects an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}; "
                f"convert with imseg.read_image(array)."
            )
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise InputError(f"image has no pixels ({w}x{h}).")
        if h * w > self.max_pixels and self.crop_n_layers == 0:
            raise InputError(
                f"image is {w}x{h} = {h * w:,} pixels, above the automatic-mask limit of {self.max_pixels:,}. "
                f"Tile it with crop_n_layers >= 1 (memory then stays bounded per crop), downscale it, or raise "
                f"max_pixels= / $IMSEG_AMG_MAX_PIXELS."
            )
        return image

    def _generate(self, image: np.ndarray, embedding: Any = None):
        import torch
        from torchvision.ops import batched_nms

        image = self._check_image(image)
        h, w = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes((h, w), self.crop_n_layers, self.crop_overlap_ratio)
        kept: list[MaskRecords] = []
        with torch.inference_mode():
            for crop_box, layer in zip(crop_boxes, layers, strict=True):
                kept.append(self._process_crop(image, crop_box, layer, embedding))
            records = MaskRecords.cat(kept)
            if len(crop_boxes) > 1 and len(records):
                crop_t = torch.as_tensor(records.crop_boxes, dtype=torch.float)
                area = (crop_t[:, 2] - crop_t[:, 0]) * (crop_t[:, 3] - crop_t[:, 1])
                keep = batched_nms(records.boxes.float(), 1 / area, torch.zeros(len(records)), self.crop_nms_thresh)
                records = records.filter(keep)
            if self.min_mask_region_area > 0 and len(records):
                records = self._remove_small_regions(records)
        return records

    def _embed(self, crop: np.ndarray, embedding: Any = None) -> tuple[Any, tuple[int, int]]:
        """The backend's per-crop image state and the crop's resized input size (h', w'); a given whole-image
        ``embedding`` is reused when the backend can take one (``state_for``)."""
        state_for = getattr(self.backend, "state_for", None)
        if embedding is not None and state_for is not None and tuple(embedding.original_size) == crop.shape[:2]:
            return state_for(embedding), tuple(embedding.input_size)
        return self.backend.embed(crop)

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int,
                      embedding: Any = None) -> MaskRecords:
        import torch
        from torchvision.ops import batched_nms

        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        ch, cw = crop.shape[:2]
        whole = crop_box == [0, 0, image.shape[1], image.shape[0]]
        state, input_size = self._embed(crop, embedding if whole else None)
        points = self.point_grids[layer] * np.array([[cw, ch]], dtype=np.float64)
        scale = np.array([[input_size[1] / cw, input_size[0] / ch]])
        parts: list[MaskRecords] = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            self._process_batch(state, batch, batch * scale, input_size, crop_box, image.shape[:2], parts)
        del state
        records = MaskRecords.cat(parts)
        if not len(records):
            return records
        keep = batched_nms(records.boxes.float(), records.iou, torch.zeros(len(records)), self.box_nms_thresh)
        records = records.filter(keep)
        records.boxes = records.boxes + torch.tensor([x0, y0, x0, y0])
        records.points = records.points + np.array([[x0, y0]])
        return records

    def _process_batch(self, state, points, model_points, input_size, crop_box, image_size,
                       parts: list[MaskRecords]) -> None:
        import torch

        decoded = self.backend.decode(state, model_points)
        iou = decoded.iou  # (B, 3)
        n_masks = iou.shape[1]
        keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        prompt_ids = torch.nonzero(keep.any(1)).flatten()
        if prompt_ids.numel() == 0:
            return
        low = decoded.low_res(prompt_ids)  # (P, 3, h, w)
        sel = keep[prompt_ids]  # (P, 3)
        low = low[sel].float()  # (K, h, w) in prompt-major, mask-minor order (as the official)
        cand_iou = iou[prompt_ids][sel]
        prompt_of = prompt_ids[:, None].expand(-1, n_masks)[sel].cpu().numpy()
        del decoded
        self._postprocess(low, cand_iou, points[prompt_of], input_size, crop_box, image_size, parts)

    def _postprocess(self, low, iou, points, input_size, crop_box, image_size, parts: list[MaskRecords]) -> None:
        """Upsample low-res logits chunk by chunk; stability filter, threshold, boxes, edge filter, RLE."""
        import torch

        from .model import axis_resize_band, band_resize

        x0, y0, x1, y1 = crop_box
        ch, cw = y1 - y0, x1 - x0
        img_h, img_w = image_size
        size = int(self.backend.img_size)
        threshold = float(self.backend.mask_threshold)
        # both interpolations (to the model's input, then to the crop) as one banded map per axis (each output
        # mixes at most a few low-res logits): the same values to float32 rounding, without the model-sized
        # intermediate of every mask
        iy, wy = axis_resize_band(low.shape[-2], size, input_size[0], ch, low.device, low.dtype)
        ix, wx = axis_resize_band(low.shape[-1], size, input_size[1], cw, low.device, low.dtype)
        per_mask = 4 * (ch * cw + cw * low.shape[-2])
        chunk = CPU_CHUNK if low.device.type == "cpu" else max(1, min(len(low), CHUNK_BYTES // per_mask))
        for start in range(0, len(low), chunk):
            logits = band_resize(low[start : start + chunk], iy, wy, ix, wx)
            stab = stability_score(logits, threshold, self.stability_score_offset)
            keep = stab >= self.stability_score_thresh
            if self.stability_score_thresh <= 0:
                keep = torch.ones_like(stab, dtype=torch.bool)
            masks = logits[keep] > threshold
            del logits
            if masks.shape[0] == 0:
                continue
            boxes = masks_to_boxes_xyxy(masks)
            ok = ~box_near_crop_edge(boxes, list(crop_box), [0, 0, img_w, img_h])
            masks, boxes = masks[ok], boxes[ok]
            local = torch.nonzero(keep).flatten()[ok]
            idx = local + start
            if len(idx) == 0:
                continue
            # full-image masks in (N, W, H) layout so pycocotools gets a Fortran (H, W, N) view
            full = np.zeros((len(masks), img_w, img_h), np.uint8)
            full[:, x0:x1, y0:y1] = masks.transpose(1, 2).cpu().numpy()
            parts.append(MaskRecords(coco_rles(full), boxes.cpu(), iou[idx].cpu(), stab[local].cpu(),
                                     points[idx.cpu().numpy()], np.tile(np.array(crop_box, np.int64), (len(idx), 1))))

    def _remove_small_regions(self, records: MaskRecords) -> MaskRecords:
        """Fill small holes and drop small islands; changed masks lose NMS ties to unchanged ones."""
        import torch
        from pycocotools import mask as mask_utils
        from torchvision.ops import batched_nms

        new_masks, unchanged = [], []
        for rle in records.rles:
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed_holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            new_masks.append(mask)
            unchanged.append(float(not (changed_holes or changed_islands)))
        dense = torch.from_numpy(np.stack(new_masks))
        new_boxes = masks_to_boxes_xyxy(dense)
        scores = torch.tensor(unchanged)
        keep = batched_nms(new_boxes.float(), scores, torch.zeros(len(records)),
                           max(self.box_nms_thresh, self.crop_nms_thresh))
        records = MaskRecords(list(records.rles), records.boxes.clone(), records.iou, records.stability,
                              records.points, records.crop_boxes)
        for i in keep.tolist():
            if unchanged[i] == 0.0:
                records.rles[i] = coco_rles(np.ascontiguousarray(new_masks[i].T[None]).astype(np.uint8))[0]
                records.boxes[i] = new_boxes[i]
        return records.filter(keep)
