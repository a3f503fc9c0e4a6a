"""SAM 2 image encoder: the Hiera trunk and an FPN neck that projects every stage to ``d_model`` channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hiera import Hiera
from .position_encoding import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """1x1 lateral convolutions to ``d_model`` channels, with a top-down (upsample-and-sum) path only into
    the levels in ``fpn_top_down_levels`` (the finest levels are the plain laterals).

    Levels are indexed fine to coarse; ``backbone_channel_list`` is coarse to fine (as the trunk reports it).
    """

    def __init__(self, position_encoding: nn.Module, d_model: int, backbone_channel_list: list[int],
                 fpn_top_down_levels: list[int] | None = None, fpn_interp_model: str = "bilinear",
                 fuse_type: str = "sum") -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk features fine to coarse -> (features, position encodings), both fine to coarse."""
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [None] * (n + 1)  # type: ignore[list-item]
        pos: list[torch.Tensor] = [None] * (n + 1)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                align = None if self.fpn_interp_model == "nearest" else False
                top_down = F.interpolate(prev.to(torch.float32), scale_factor=2.0, mode=self.fpn_interp_model,
                                         align_corners=align, antialias=False)
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos


class ImageEncoder(nn.Module):
    """Trunk + neck; ``scalp`` drops that many coarsest levels.

    forward (B, 3, 1024, 1024) -> {"vision_features": (B, 256, 64, 64), "vision_pos_enc": [per level],
    "backbone_fpn": [(B, 256, 256, 256), (B, 256, 128, 128), (B, 256, 64, 64)]} for SAM 2.1 (scalp 1).
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk channels {trunk.channel_list} do not match neck channels "
                             f"{neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, sample: torch.Tensor) -> dict:
        features, pos = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


def build_image_encoder(embed_dim: int, num_heads: int, stages: tuple[int, ...], global_att_blocks: tuple[int, ...],
                        window_pos_embed_bkg_spatial_size: tuple[int, int], window_spec: tuple[int, ...],
                        d_model: int = 256) -> ImageEncoder:
    """The SAM 2.1 encoder layout: Hiera trunk, nearest-neighbour FPN into the two coarse levels, scalp 1."""
    trunk = Hiera(embed_dim=embed_dim, num_heads=num_heads, stages=stages, global_att_blocks=global_att_blocks,
                  window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size, window_spec=window_spec)
    neck = FpnNeck(PositionEmbeddingSine(d_model), d_model, trunk.channel_list, fpn_top_down_levels=[2, 3],
                   fpn_interp_model="nearest")
    return ImageEncoder(trunk, neck, scalp=1)
