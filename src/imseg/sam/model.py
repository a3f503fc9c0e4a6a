"""The ``Sam`` wrapper: encoders + decoder, pre- and post-processing."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


@lru_cache(maxsize=32)
@torch.inference_mode(False)  # cached: normal tensors even when first asked for inside inference mode
def _axis_resize_matrix(low: int, padded: int, valid: int, out: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(out, low) matrix doing, along one axis, what SAM's postprocessing does to mask logits:
    bilinear ``low -> padded``, crop the first ``valid`` samples, bilinear ``valid -> out``; the two steps'
    weights composed in float64."""
    up = _resize_weights(low, padded)[:valid]
    return (_resize_weights(valid, out) @ up).to(device=device, dtype=dtype)


def _resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of one axis of ``F.interpolate(mode="bilinear", align_corners=False)`` on a
    float32 map (bilinear is separable). The weights are float32's own: the official code resizes float32 logits,
    whose source positions carry float32 rounding (at ratios such as 768 -> 750 float64 positions differ from
    them by ~1e-5 of a logit)."""
    eye = torch.eye(n_in, dtype=torch.float32)[:, None, :, None]  # n_in one-hot columns (N, 1, n_in, 1)
    weights = F.interpolate(eye, (n_out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0]
    return weights.T.double()


@lru_cache(maxsize=32)
@torch.inference_mode(False)
def axis_resize_band(low: int, padded: int, valid: int, out: int, device: str,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_axis_resize_matrix` as a band: output i = sum_k weight[i, k] * input[index[i, k]].

    Bilinear steps without antialiasing give every output at most a few inputs (K <= 4 here), so
    the map costs K multiply-adds per output instead of ``low``."""
    matrix = _axis_resize_matrix(low, padded, valid, out, "cpu", torch.float64)
    nonzero = matrix != 0
    first = nonzero.to(torch.int8).argmax(1)
    last = low - 1 - nonzero.flip(1).to(torch.int8).argmax(1)
    k = int((last - first).max()) + 1
    index = first[:, None] + torch.arange(k)[None]
    inside = index <= last[:, None]
    index = index.clamp(max=low - 1)
    weight = torch.where(inside, matrix.gather(1, index), 0.0)
    return index.to(device), weight.to(device=device, dtype=dtype)


def _band_rows(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Apply an :func:`axis_resize_band` along the rows (dim -2) of ``x``: whole rows are gathered."""
    out = None
    for k in range(index.shape[1]):
        term = x.index_select(-2, index[:, k]).mul_(weight[:, k, None])
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


def band_resize(x: torch.Tensor, iy: torch.Tensor, wy: torch.Tensor, ix: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) through two bands: columns on the transposed (small) input, then rows."""
    cols = _band_rows(x.transpose(-1, -2).contiguous(), ix, wx)  # (..., W, h)
    return _band_rows(cols.transpose(-1, -2).contiguous(), iy, wy)


class Sam(nn.Module):
    """Segment Anything: image encoder + prompt encoder + mask decoder.

    The model is stateless; :class:`~imseg.sam.predictor.SamPredictor` keeps the image embedding.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.variant: str = "custom"

    @property
    def device(self) -> Any:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) RGB 0..255 -> normalised and zero-padded (B, 3, img_size, img_size)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """(B, C, 256, 256) logits -> (B, C, H, W) logits at the original image size.

        Same linear map as upsampling to the padded input, cropping and resizing to the original
        size, applied per axis as banded sums (a few taps per output pixel) instead of through a
        full-resolution intermediate.
        """
        low_h, low_w = masks.shape[-2:]
        dev, dt = str(masks.device), masks.dtype if masks.dtype in (torch.float32, torch.float64) else torch.float32
        iy, wy = axis_resize_band(low_h, self.img_size, int(input_size[0]), int(original_size[0]), dev, dt)
        ix, wx = axis_resize_band(low_w, self.img_size, int(input_size[1]), int(original_size[1]), dev, dt)
        return band_resize(masks.to(dt), iy, wy, ix, wx)

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Official end-to-end form: list of {'image' (3,h,w) resized, 'original_size', optional
        'point_coords' (B,N,2), 'point_labels' (B,N), 'boxes' (B,4), 'mask_inputs' (B,1,256,256)}
        -> list of {'masks' (B,C,H,W) bool, 'iou_predictions' (B,C), 'low_res_logits' (B,C,256,256)}."""
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        dense_pe = self.prompt_encoder.get_dense_pe()
        outputs = []
        for rec, emb in zip(batched_input, embeddings, strict=True):
            points = (rec["point_coords"], rec["point_labels"]) if "point_coords" in rec else None
            sparse, dense = self.prompt_encoder(points=points, boxes=rec.get("boxes"), masks=rec.get("mask_inputs"))
            low_res, iou = self.mask_decoder(emb[None], dense_pe, sparse, dense, multimask_output)
            masks = self.postprocess_masks(low_res, rec["image"].shape[-2:], rec["original_size"])
            outputs.append({"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs
