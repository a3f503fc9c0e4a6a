"""Small building blocks shared by the SAM 2 modules."""

from __future__ import annotations

import torch
from torch import nn

from ..cpu_gemm import apply_linear


class MLP(nn.Module):
    """``num_layers`` linear layers with ``activation`` between them (none after the last); optional sigmoid.

    (..., input_dim) -> (..., output_dim).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = apply_linear(layer, x)
            if i < self.num_layers - 1:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sine/cosine encoding of (...,) positions -> (..., dim): ``dim/2`` sines then ``dim/2`` cosines."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = temperature ** (2 * (steps // 2) / half)
    angles = positions.unsqueeze(-1) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
