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

import math
import os
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, InputError
from ..io import longest_side_shape
from ..masks import Masks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .batch_decoder import PromptBatchDecoder

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
#: Images above this many pixels need crop layers (tiling); see ``max_pixels``.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Bytes of float32 full-resolution logits held at once while upsampling candidates.
CHUNK_BYTES = 128 * 1024 * 1024


# ----------------------------------------------------------------------------- grids and crops
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) XY points in [0, 1], cell centres of an n x n grid, row by row."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``n_per_side / downscale**i`` points per side."""
    return [build_point_grid(int(n_per_side / (downscale**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes (pixels) and their layer index: the full image, then 2^i x 2^i overlapping crops."""
    h, w = image_size
    boxes: list[list[int]] = [[0, 0, w, h]]
    layers = [0]
    short_side = min(h, w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + w) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + h) / per_side)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
            layers.append(layer)
    return boxes, layers


# ----------------------------------------------------------------------------- small mask helpers
def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(N,) IoU between the masks at ``threshold + offset`` and ``threshold - offset``; logits (N, H, W)."""
    import torch

    high = (logits > threshold + offset).flatten(1).sum(1)
    low = (logits > threshold - offset).flatten(1).sum(1)
    return torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(high, dtype=torch.float32)).float()


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY boxes with inclusive max corner (official SAM convention) of (N, H, W) bool masks.

    Empty masks get [0, 0, 0, 0].
    """
    import torch

    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.long, device=masks.device)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ys, -1).amax(1)
    y0 = torch.where(rows, ys, h).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def box_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0):
    """(N,) bool: boxes (XYXY, crop frame) within ``atol`` px of a crop edge that is not an image edge."""
    import torch

    offset = torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], device=boxes.device)
    boxes = (boxes + offset).float()
    crop = torch.tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.tensor(image_box, dtype=torch.float, device=boxes.device)
    near_crop = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, image[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area`` px.

    8-connected components (OpenCV). When every island is small, the largest one is kept.
    Returns the new (H, W) bool mask and whether it changed.
    """
    import cv2

    fill_holes = mode == "holes"
    work = (mask ^ fill_holes).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(work, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:  # label 0 is the mask itself; add the small background components to it
        return np.isin(regions, np.concatenate([[0], small])), True
    keep = np.setdiff1d(np.arange(1, n_labels), small)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, keep), True


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of an (H, W) bool mask (column-major runs, zeros first)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return counts


def _encode_rles(masks: np.ndarray) -> list[dict]:
    """pycocotools RLEs (counts as bytes) of (N, W, H) C-contiguous uint8 masks (transposed layout)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    return mask_utils.encode(masks.transpose(2, 1, 0))  # (H, W, N) Fortran view, no copy


# ----------------------------------------------------------------------------- the fast decoder
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
    """Decoder tokens of a batch; masks are made only for the prompts asked for."""

    def __init__(self, decoder: PromptBatchDecoder, iou: torch.Tensor, hs: torch.Tensor, keys: torch.Tensor) -> None:
        self.decoder, self.hs, self.keys = decoder, hs, keys
        self.iou = iou[:, 1:].float()  # multimask output: tokens 1..3

    def low_res(self, ids: torch.Tensor) -> torch.Tensor:
        n_masks = self.iou.shape[1]
        return self.decoder.masks(self.hs[ids], self.keys[ids], list(range(1, 1 + n_masks)))


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
        features = self.model.image_encoder(x.to(dtype))
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
        iou, (hs, keys) = state.predict(sparse.to(dtype))
        return _TorchPointBatch(state, iou, hs, keys)


# ----------------------------------------------------------------------------- per-crop results
@dataclass
class _Candidates:
    """Masks kept so far, in the original image frame."""

    rles: list = field(default_factory=list)
    boxes: list = field(default_factory=list)  # torch (n, 4) XYXY chunks
    iou: list = field(default_factory=list)
    stability: list = field(default_factory=list)
    points: list = field(default_factory=list)  # np (n, 2)
    crop_boxes: list = field(default_factory=list)  # np (n, 4)

    def cat(self):
        import torch

        boxes = torch.cat(self.boxes) if self.boxes else torch.zeros((0, 4), dtype=torch.long)
        iou = torch.cat(self.iou) if self.iou else torch.zeros(0)
        stab = torch.cat(self.stability) if self.stability else torch.zeros(0)
        points = np.concatenate(self.points) if self.points else np.zeros((0, 2))
        crops = np.concatenate(self.crop_boxes) if self.crop_boxes else np.zeros((0, 4), np.int64)
        return self.rles, boxes, iou, stab, points, crops


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

        result = self._generate(image)
        rles, boxes, iou, stab, points, crops = result
        records = []
        areas = mask_utils.area(rles) if rles else []
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
        rles, _, iou, stab, points, crops = self._generate(array, embedding)
        return Masks(
            rles=[{"size": list(r["size"]), "counts": r["counts"]} for r in rles],
            image_size=array.shape[:2],
            scores=np.asarray(iou, np.float32),
            stability_score=np.asarray(stab, np.float32),
            point_coords=np.asarray(points, np.float32).reshape(-1, 2),
            crop_box=np.asarray(crops, np.int64).reshape(-1, 4),
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
        kept = _Candidates()
        with torch.inference_mode():
            for crop_box, layer in zip(crop_boxes, layers, strict=True):
                self._process_crop(image, crop_box, layer, kept, embedding)
            rles, boxes, iou, stab, points, crops = kept.cat()
            if len(crop_boxes) > 1 and len(rles):
                crop_t = torch.as_tensor(crops, dtype=torch.float)
                area = (crop_t[:, 2] - crop_t[:, 0]) * (crop_t[:, 3] - crop_t[:, 1])
                keep = batched_nms(boxes.float(), 1 / area, torch.zeros(len(boxes)), self.crop_nms_thresh)
                rles, boxes, iou, stab, points, crops = _take(keep, rles, boxes, iou, stab, points, crops)
            if self.min_mask_region_area > 0 and len(rles):
                rles, boxes, iou, stab, points, crops = self._remove_small_regions(
                    rles, boxes, iou, stab, points, crops
                )
        return rles, boxes.numpy(), iou.numpy(), stab.numpy(), points, crops

    def _embed(self, crop: np.ndarray, embedding: Any = None) -> tuple[Any, tuple[int, int]]:
        """The backend's per-crop image state and the crop's resized input size (h', w'); a given whole-image
        ``embedding`` is reused when the backend can take one (``state_for``)."""
        state_for = getattr(self.backend, "state_for", None)
        if embedding is not None and state_for is not None and tuple(embedding.original_size) == crop.shape[:2]:
            return state_for(embedding), tuple(embedding.input_size)
        return self.backend.embed(crop)

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int, kept: _Candidates,
                      embedding: Any = None) -> None:
        import torch
        from torchvision.ops import batched_nms

        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        ch, cw = crop.shape[:2]
        whole = crop_box == [0, 0, image.shape[1], image.shape[0]]
        state, input_size = self._embed(crop, embedding if whole else None)
        points = self.point_grids[layer] * np.array([[cw, ch]], dtype=np.float64)
        scale = np.array([[input_size[1] / cw, input_size[0] / ch]])
        part = _Candidates()
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            self._process_batch(state, batch, batch * scale, input_size, crop_box, image.shape[:2], part)
        del state
        rles, boxes, iou, stab, pts, _ = part.cat()
        if not len(rles):
            return
        keep = batched_nms(boxes.float(), iou, torch.zeros(len(boxes)), self.box_nms_thresh)
        rles, boxes, iou, stab, pts = _take(keep, rles, boxes, iou, stab, pts)
        offset = torch.tensor([x0, y0, x0, y0])
        kept.rles.extend(rles)
        kept.boxes.append(boxes + offset)
        kept.iou.append(iou)
        kept.stability.append(stab)
        kept.points.append(pts + np.array([[x0, y0]]))
        kept.crop_boxes.append(np.tile(np.array(crop_box, np.int64), (len(rles), 1)))

    def _process_batch(self, state, points, model_points, input_size, crop_box, image_size, part) -> None:
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
        self._postprocess(low, cand_iou, points[prompt_of], input_size, crop_box, image_size, part)

    def _postprocess(self, low, iou, points, input_size, crop_box, image_size, part: _Candidates) -> None:
        """Upsample low-res logits chunk by chunk; stability filter, threshold, boxes, edge filter, RLE."""
        import torch
        import torch.nn.functional as F

        x0, y0, x1, y1 = crop_box
        ch, cw = y1 - y0, x1 - x0
        img_h, img_w = image_size
        size = int(self.backend.img_size)
        threshold = float(self.backend.mask_threshold)
        per_mask = 4 * (ch * cw + size * size)
        chunk = max(1, min(len(low), CHUNK_BYTES // per_mask))
        for start in range(0, len(low), chunk):
            part_low = low[start : start + chunk, None]
            up = F.interpolate(part_low, (size, size), mode="bilinear", align_corners=False)
            up = up[..., : input_size[0], : input_size[1]]
            logits = F.interpolate(up, (ch, cw), mode="bilinear", align_corners=False)[:, 0]
            del up
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
            part.rles.extend(_encode_rles(full))
            part.boxes.append(boxes.cpu())
            part.iou.append(iou[idx].cpu())
            part.stability.append(stab[local].cpu())
            part.points.append(points[idx.cpu().numpy()])
            part.crop_boxes.append(np.tile(np.array(crop_box, np.int64), (len(idx), 1)))

    def _remove_small_regions(self, rles, boxes, iou, stab, points, crops):
        """Fill small holes and drop small islands; changed masks lose NMS ties to unchanged ones."""
        import torch
        from pycocotools import mask as mask_utils
        from torchvision.ops import batched_nms

        new_masks, unchanged = [], []
        for rle in rles:
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed_holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            new_masks.append(mask)
            unchanged.append(float(not (changed_holes or changed_islands)))
        dense = torch.from_numpy(np.stack(new_masks))
        new_boxes = masks_to_boxes_xyxy(dense)
        scores = torch.tensor(unchanged)
        keep = batched_nms(new_boxes.float(), scores, torch.zeros(len(rles)), max(self.box_nms_thresh, self.crop_nms_thresh))
        rles = list(rles)
        boxes = boxes.clone()
        for i in keep.tolist():
            if unchanged[i] == 0.0:
                rles[i] = _encode_rles(np.ascontiguousarray(new_masks[i].T[None]).astype(np.uint8))[0]
                boxes[i] = new_boxes[i]
        return _take(keep, rles, boxes, iou, stab, points, crops)


def _take(keep, rles, *arrays):
    """Select ``keep`` indices from a list of RLEs and matching torch/numpy arrays."""
    idx = keep.cpu().numpy() if hasattr(keep, "cpu") else np.asarray(keep)
    out = [[rles[i] for i in idx]]
    for arr in arrays:
        out.append(arr[keep] if hasattr(arr, "cpu") else arr[idx])
    return tuple(out)
