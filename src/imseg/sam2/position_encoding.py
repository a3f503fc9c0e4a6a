"""Position encodings of SAM 2: 2-D sine encoding of feature maps and 2-D rotary (axial RoPE) encoding."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR-style 2-D sine encoding of a (B, C, H, W) map -> (B, num_pos_feats, H, W).

    The first half of the channels encodes y, the second x; coordinates are cell indices 1..H
    (1..W), normalised to (0, 2*pi] when ``normalize``. Results are cached per (H, W).
    """

    def __init__(self, num_pos_feats: int, temperature: int = 10000, normalize: bool = True,
                 scale: float | None = None) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("a scale needs normalize=True")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _encode(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ys = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        if self.normalize:
            eps = 1e-6
            ys = ys / (ys[-1] + eps) * self.scale
            xs = xs / (xs[-1] + eps) * self.scale
        steps = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        freqs = self.temperature ** (2 * (steps // 2) / self.num_pos_feats)

        def interleave(angles: torch.Tensor) -> torch.Tensor:  # (n, F) -> sin/cos pairs (n, F)
            return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

        pos_y = interleave(ys[:, None] / freqs)  # (h, F)
        pos_x = interleave(xs[:, None] / freqs)  # (w, F)
        grid = torch.cat([pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)], dim=-1)
        return grid.permute(2, 0, 1).contiguous()  # (2F, h, w)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (int(x.shape[-2]), int(x.shape[-1]), x.device)
        if key not in self._cache:
            self._cache[key] = self._encode(key[0], key[1], x.device)
        return self._cache[key][None].expand(x.shape[0], -1, -1, -1)


def axial_rope_angles(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations (end_x * end_y, dim // 2) for tokens in row-major order over an (end_y, end_x) grid:
    the first dim/4 frequencies rotate by the x index, the last dim/4 by the y index."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Rotate consecutive channel pairs of (B, heads, N, C) by ``rotations`` (N / repeat, C/2) complex.

    With ``repeat`` > 1 the N tokens are ``repeat`` stacked copies of the grid (memories of several
    frames) and each copy gets the same rotations.
    """
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    if repeat > 1:
        rotations = rotations.repeat(repeat, 1)
    out = torch.view_as_real(xc * rotations).flatten(3)
    return out.type_as(x)
