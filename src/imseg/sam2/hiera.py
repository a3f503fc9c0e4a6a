"""Hiera: the hierarchical ViT trunk of SAM 2 (multi-scale blocks, query pooling between stages).

Input (B, 3, 1024, 1024) -> one (B, C_i, H_i, W_i) feature map per stage, strides 4, 8, 16, 32 and
channels ``embed_dim * 2**i``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_gemm import apply_linear, attention
from .common import MLP


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, ws, ws, C), zero-padding H and W up to multiples of ``window_size``."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window_size, -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nWindows, ws, ws, C) -> (B, H, W, C)."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if hp > h or wp > w else x


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: (B, 3, H, W) -> channels-last (B, H/4, W/4, C)."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def _max_pool(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Channels-last (B, H, W, C) max pooling."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Self-attention on (B, H, W, C) whose queries may be max-pooled (then the output is pooled too)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = apply_linear(self.qkv, x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # (B, N, heads, c)
        if self.q_pool is not None:
            q = _max_pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # global blocks: oneDNN's products
        return apply_linear(self.proj, out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm (windowed or global) attention + MLP block; at a stage change it widens the channels
    (``proj`` of the shortcut) and halves the resolution with query pooling (``q_stride``)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0,
                 q_stride: tuple[int, int] | None = None, window_size: int = 0) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out); H' = H / q_stride when pooling."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = apply_linear(self.proj, x)
            if self.pool is not None:
                shortcut = _max_pool(shortcut, self.pool)
        window_size = self.window_size
        h, w = x.shape[1:3]
        if window_size > 0:
            x, padded_hw = window_partition(x, window_size)
        x = self.attn(x)
        if self.q_stride:  # the windows shrank with the queries
            window_size = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            padded_hw = (h + -h % window_size, w + -w % window_size) if window_size > 0 else (h, w)
        if self.window_size > 0:
            x = window_unpartition(x, window_size, padded_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hiera trunk.

    Args:
        embed_dim, num_heads: width and heads of stage 1 (both multiplied by 2 at each stage change).
        stages: blocks per stage.
        global_att_blocks: indices of blocks with global (not windowed) attention.
        window_pos_embed_bkg_spatial_size: grid of the interpolated background position embedding.
        window_spec: attention window size per stage.
        q_pool: how many stage changes pool the queries (halving the resolution).
    """

    def __init__(self, embed_dim: int = 96, num_heads: int = 1, stages: tuple[int, ...] = (2, 3, 16, 3),
                 global_att_blocks: tuple[int, ...] = (12, 16, 20),
                 window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
                 window_spec: tuple[int, ...] = (8, 4, 14, 7), q_pool: int = 3,
                 q_stride: tuple[int, int] = (2, 2), dim_mul: float = 2.0, head_mul: float = 2.0) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {window_spec} must have the same length")
        self.window_spec = tuple(window_spec)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.global_att_blocks = tuple(global_att_blocks)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        stage = 0
        for i in range(sum(stages)):
            dim_out = embed_dim
            # the first block of a stage still attends in the previous stage's windows (then pools)
            window_size = 0 if i in self.global_att_blocks else self.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(MultiScaleBlock(embed_dim, dim_out, num_heads,
                                               q_stride=q_stride if i in q_pool_blocks else None,
                                               window_size=window_size))
            embed_dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Background embedding interpolated to (h, w) plus the window embedding tiled over it: (1, h, w, C)."""
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        pos = pos + window.tile([a // b for a, b in zip(pos.shape, window.shape, strict=True)])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> per-stage features [(B, C, H/4, W/4), ..., (B, 8C, H/32, W/32)]."""
        x = self.patch_embed(x)
        x = x + self._pos_embed(tuple(x.shape[1:3]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
