"""SAM 2 prompt encoder: SAM's, with box corners also accepted as points labelled 2 and 3.

The SAM 2 predictors pass boxes as two corner points (labels 2 = top-left, 3 = bottom-right) among
the point prompts; the weights and the layout are those of SAM's prompt encoder.
"""

from __future__ import annotations

import torch

from ..sam.prompt_encoder import PositionEmbeddingRandom
from ..sam.prompt_encoder import PromptEncoder as SamPromptEncoder

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PromptEncoder(SamPromptEncoder):
    """Point labels: -1 padding, 0 negative, 1 positive, 2 box top-left, 3 box bottom-right."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) model-frame pixels + (B, N) labels -> (B, N(+1), C)."""
        points = points + 0.5  # pixel centres
        if pad:  # a "not a point" token stands in for the missing box
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.to(emb.dtype), emb)
        for value, table in enumerate(self.point_embeddings):
            emb = emb + (lab == value).to(emb.dtype) * table.weight
        return emb
