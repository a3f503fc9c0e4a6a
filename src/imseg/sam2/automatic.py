"""Segment everything with SAM 2.1: the SAM automatic mask generator's pipeline on a SAM 2.1 backend.

The algorithm (point grid, crops, IoU and stability filters, crop-edge filter, NMS, RLEs) is the one of
:mod:`imseg.sam.automatic`; what differs in SAM 2 lives in :class:`Sam2AmgBackend`: the crop is squashed
to a 1024x1024 square, points are scaled per axis, the decoder uses the high-resolution features, and
small holes / sprinkles are cleaned on the low-res logits (``min_mask_region_area``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..sam.automatic import SamAutomaticMaskGenerator
from .model import Sam2Model
from .transforms import postprocess_masks, preprocess


class _Sam2PointBatch:
    """Decoder outputs for a batch of single-point prompts: IoU (B, M) and low-res logits (B, M, L, L)."""

    def __init__(self, low_res: torch.Tensor, iou: torch.Tensor) -> None:
        self._low_res, self.iou = low_res, iou.float()

    def low_res(self, ids: torch.Tensor) -> torch.Tensor:
        return self._low_res[ids]


class Sam2AmgBackend:
    """:class:`~imseg.sam.automatic.AmgBackend` for a :class:`Sam2Model`.

    SAM 2 resizes low-res logits straight to the crop size (one bilinear step), whereas SAM resizes them
    to the padded model input first. The generator resizes logits to ``img_size`` and crops them to the
    input size before resizing to the crop; reporting ``img_size`` and the input size as the low-res side
    (L = a quarter of the model's input side: 256 at 1024 px) makes that first resize an exact identity, so the
    shared pipeline does the SAM 2 resize. Points therefore arrive in that L x L frame and are scaled to the
    model frame here.
    """

    def __init__(self, model: Sam2Model, mask_threshold: float = 0.0, multimask_output: bool = True,
                 min_region_area: float = 0.0) -> None:
        self.model = model
        self.img_size = int(model.image_size) // 4
        self.mask_threshold = float(mask_threshold)
        self.multimask_output = bool(multimask_output)
        self.min_region_area = float(min_region_area)

    def embed(self, crop: np.ndarray) -> tuple[Any, tuple[int, int]]:
        """(h, w, 3) uint8 crop -> (image embedding, high-res features), and the low-res frame size."""
        x = preprocess(crop, self.model.image_size, self.model.device)[None]
        return self.model.image_features(x), (self.img_size, self.img_size)

    def decode(self, state: Any, coords: np.ndarray) -> _Sam2PointBatch:
        """(B, 2) XY points in the low-res frame -> one foreground point prompt each."""
        embed, high_res = state
        scale = self.model.image_size / self.img_size
        points = torch.as_tensor(np.asarray(coords) * scale, dtype=torch.float, device=embed.device)[:, None]
        labels = torch.ones(points.shape[:2], dtype=torch.int, device=embed.device)
        sparse, dense = self.model.sam_prompt_encoder(points=(points, labels), boxes=None, masks=None)
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=embed, image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output, repeat_image=True, high_res_features=high_res)
        if self.min_region_area > 0:  # same size in and out: only the hole/sprinkle cleanup applies
            low_res = postprocess_masks(low_res, (self.img_size, self.img_size), self.mask_threshold,
                                        self.min_region_area, self.min_region_area)
        return _Sam2PointBatch(low_res.float(), iou)


class SAM2AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """Drop-in for ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` (official arguments, defaults
    and ``generate()`` records). ``min_mask_region_area`` fills holes and removes sprinkles of at most that
    many low-res pixels before upsampling, as the official generator asks its predictor to.
    ``use_m2m`` (mask-to-mask refinement) is not implemented."""

    def __init__(self, model: Sam2Model, points_per_side: int | None = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.8, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, mask_threshold: float = 0.0, box_nms_thresh: float = 0.7,
                 crop_n_layers: int = 0, crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, output_mode: str = "binary_mask", use_m2m: bool = False,
                 multimask_output: bool = True, *, max_pixels: int | None = None, **kwargs: Any) -> None:
        if use_m2m:
            raise ConfigError("use_m2m=True (mask-to-mask refinement) is not implemented by imseg.sam2; "
                              "use the default use_m2m=False.")
        if not isinstance(model, Sam2Model):
            raise ConfigError(f"model must be an imseg.sam2 model (imseg.sam2.build_sam2(...)); got "
                              f"{type(model).__name__}.")
        backend = Sam2AmgBackend(model, mask_threshold, multimask_output, min_mask_region_area)
        super().__init__(backend, points_per_side=points_per_side, points_per_batch=points_per_batch,
                         pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                         stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
                         crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
                         crop_overlap_ratio=crop_overlap_ratio,
                         crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
                         min_mask_region_area=0,  # the backend cleans low-res logits instead
                         output_mode=output_mode, max_pixels=max_pixels)
        self.model = model
        self.mask_threshold = float(mask_threshold)
        self.multimask_output = bool(multimask_output)
        self.use_m2m = False

    @property
    def predictor(self):
        """A :class:`~imseg.sam2.predictor.SAM2ImagePredictor` on the same model."""
        if self._predictor is None:
            from .predictor import SAM2ImagePredictor

            self._predictor = SAM2ImagePredictor(self.model, mask_threshold=self.mask_threshold,
                                                 max_hole_area=self.backend.min_region_area,
                                                 max_sprinkle_area=self.backend.min_region_area)
        return self._predictor
