"""MobileSAM's TinyViT image encoder (``vit_t``), with the parameter names of ``mobile_sam``.

Stage 0 is convolutional (MBConv); stages 1-3 are windowed attention blocks with a learned bias per
(|dy|, |dx|) offset inside a window, a depthwise "local" convolution and an MLP. Output:
(B, 256, 64, 64) for a 1024x1024 input, like the ViT encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_gemm import apply_linear
from .common import LayerNorm2d


class Conv2d_BN(nn.Sequential):  # noqa: N801 - official name, part of the state_dict layout
    """Conv2d without bias followed by BatchNorm2d (submodules ``c`` and ``bn``)."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, in_chans: int, embed_dim: int, resolution: int) -> None:
        super().__init__()
        self.patches_resolution = (resolution // 4, resolution // 4)
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) on (B, C, H, W)."""

    def __init__(self, in_chans: int, out_chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2d_BN(in_chans, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, out_chans, ks=1)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsample between stages: tokens (B, L, C) or (B, C, H, W) -> tokens (B, L', C_out)."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        stride = 1 if out_dim in (320, 448, 576) else 2  # the last stage keeps 64x64 in MobileSAM
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """Stage 0: ``depth`` MBConv blocks then an optional PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, out_dim: int,
                 downsample: bool, conv_expand_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, dim, conv_expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    """LayerNorm + two linear layers with GELU, on tokens (B, L, C)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.fc2, self.act(apply_linear(self.fc1, self.norm(x))))


def window_offset_index(resolution: tuple[int, int]) -> torch.Tensor:
    """(N, N) index into the per-offset bias table for the N = rh*rw positions of a window.

    Offsets (|dy|, |dx|) are numbered in first-seen order scanning position pairs row-major,
    which equals |dy| * rw + |dx| (the first query, (0, 0), meets every offset in that order).
    """
    rh, rw = resolution
    ys = torch.arange(rh).repeat_interleave(rw)
    xs = torch.arange(rw).repeat(rh)
    return (ys[:, None] - ys[None, :]).abs() * rw + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Window self-attention with LayerNorm in front and a learned bias per window offset."""

    def __init__(self, dim: int, key_dim: int, num_heads: int = 8, attn_ratio: float = 4,
                 resolution: tuple[int, int] = (14, 14)) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution[0] * resolution[1]))
        self.register_buffer("attention_bias_idxs", window_offset_index(resolution), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) tokens of B windows -> (B, N, C)."""
        b, n, _ = x.shape
        qkv = apply_linear(self.qkv, self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
        # gathered on every call (tiny), so a bias loaded after .eval() is never stale
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return apply_linear(self.proj, out.transpose(1, 2).reshape(b, n, self.dh))


class TinyViTBlock(nn.Module):
    """Window attention + depthwise local conv + MLP on tokens (B, H*W, C)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 mlp_ratio: float = 4.0, local_conv_size: int = 3) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        head_dim = dim // num_heads
        self.attn = Attention(dim, head_dim, num_heads, attn_ratio=1, resolution=(window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, n, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (-h) % ws, (-w) % ws
            if pad_b or pad_r:  # zero tokens are padded before the attention's own LayerNorm
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            hp, wp = h + pad_b, w + pad_r
            nh, nw = hp // ws, wp // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
            y = y[:, :h, :w].reshape(b, n, c)
        x = x + y
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 1-3: ``depth`` TinyViT blocks then an optional PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 out_dim: int, downsample: bool, mlp_ratio: float = 4.0, local_conv_size: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM image encoder: (B, 3, 1024, 1024) normalised -> (B, 256, 64, 64).

    ``norm_head``/``head`` are the unused ImageNet classifier kept only because the official
    checkpoint stores them.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], img_size)
        base = self.patch_embed.patches_resolution
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            down = 2 ** (i - 1 if i == 3 else i)  # the last merge keeps the resolution
            res = (base[0] // down, base[1] // down)
            out_dim = embed_dims[min(i + 1, len(embed_dims) - 1)]
            has_down = i < len(embed_dims) - 1
            if i == 0:
                layer: nn.Module = ConvLayer(dim, res, depths[i], out_dim, has_down, mbconv_expand_ratio)
            else:
                layer = BasicLayer(dim, res, depths[i], num_heads[i], window_sizes[i], out_dim, has_down,
                                   mlp_ratio, local_conv_size)
            self.layers.append(layer)
        self.final_resolution = res
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        h, w = self.final_resolution
        return self.neck(x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2))
