"""Memory encoder: fuses a frame's image features with its predicted mask into a memory (B, 64, 64, 64)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..cpu_gemm import apply_linear
from ..sam.common import LayerNorm2d
from .position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Strided convolutions (each multiplying channels by stride**2, then LayerNorm2d + GELU) down to
    ``total_stride``, then a 1x1 projection: (B, 1, H, W) -> (B, embed_dim, H/16, W/16)."""

    def __init__(self, embed_dim: int = 256, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 total_stride: int = 16) -> None:
        super().__init__()
        num_layers = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_layers != total_stride:
            raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
        self.encoder = nn.Sequential()
        chans = 1
        for _ in range(num_layers):
            out = chans * stride**2
            self.encoder.append(nn.Conv2d(chans, out, kernel_size=kernel_size, stride=stride, padding=padding))
            self.encoder.append(LayerNorm2d(out))
            self.encoder.append(nn.GELU())
            chans = out
        self.encoder.append(nn.Conv2d(chans, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depth-wise 7x7 conv, LayerNorm, pointwise MLP (x4), layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, padding: int = 3, layer_scale_init_value: float = 1e-6,
                 use_dwconv: bool = True) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = apply_linear(self.pwconv2, self.act(apply_linear(self.pwconv1, y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """``num_layers`` CXBlocks (after an optional 1x1 input projection)."""

    def __init__(self, dim: int, num_layers: int, input_projection: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """forward(pix_feat (B, 256, 64, 64), masks (B, 1, 1024, 1024) logits) ->
    {"vision_features": (B, out_dim, 64, 64), "vision_pos_enc": [(B, out_dim, 64, 64)]}."""

    def __init__(self, out_dim: int = 64, in_dim: int = 256, fuser_layers: int = 2) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim, kernel_size=3, stride=2, padding=1)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, fuser_layers)
        self.position_encoding = PositionEmbeddingSine(out_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False) -> dict:
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}
