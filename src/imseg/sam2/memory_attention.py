"""Memory attention: conditions the current frame's image tokens on memories of earlier frames.

Each layer: self-attention of the image tokens, cross-attention to the memory tokens (spatial
memories and object pointers), an MLP; attention uses 2-D rotary position encoding (RoPE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cpu_gemm import apply_linear, attention
from .position_encoding import apply_rope, axial_rope_angles


class RoPEAttention(nn.Module):
    """Multi-head attention with axial RoPE on queries and keys.

    Args:
        embedding_dim, num_heads, downsample_rate: width, heads and width reduction of the projections.
        kv_in_dim: width of the key/value inputs (memory channels) when different.
        rope_theta: RoPE base; feat_sizes: (w, h) token grid of the queries.
        rope_k_repeat: keys are several stacked copies of the query grid (memories of several frames).
        dropout: attention dropout in training.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, dropout: float = 0.0,
                 kv_in_dim: int | None = None, rope_theta: float = 10000.0, rope_k_repeat: bool = False,
                 feat_sizes: tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._rotations = axial_rope_angles(self.internal_dim // num_heads, feat_sizes[0], feat_sizes[1], rope_theta)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _rotations_for(self, num_queries: int, device: torch.device) -> Tensor:
        if self._rotations.shape[0] != num_queries:  # a square grid of another size
            side = int(math.sqrt(num_queries))
            self._rotations = axial_rope_angles(self.internal_dim // self.num_heads, side, side, self.rope_theta)
        self._rotations = self._rotations.to(device)
        return self._rotations

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        """q (B, Nq, C), k/v (B, Nk, kv_in_dim) -> (B, Nq, C). The last ``num_k_exclude_rope`` keys (object
        pointers) get no rotation."""
        q, k, v = (self._heads(apply_linear(proj, t)) for proj, t in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        rotations = self._rotations_for(q.shape[-2], q.device)
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError(f"{k.shape[-2]} keys for {q.shape[-2]} queries need rope_k_repeat=True")
        q = apply_rope(q, rotations)
        num_rope = k.shape[-2] - num_k_exclude_rope
        if num_rope > 0:
            repeat = num_rope // q.shape[-2] if self.rope_k_repeat else 1
            k = torch.cat([apply_rope(k[:, :, :num_rope], rotations, repeat), k[:, :, num_rope:]], dim=2)
        if self.training and self.dropout_p > 0:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p)
        else:  # inference: oneDNN's products where they are the faster (imseg.cpu_gemm)
            out = attention(q, k, v)
        return apply_linear(self.out_proj, out.transpose(1, 2).flatten(2))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to memory, and a feed-forward block (B, N, C) -> (B, N, C)."""

    def __init__(self, self_attention: RoPEAttention, cross_attention: RoPEAttention, d_model: int = 256,
                 dim_feedforward: int = 2048, dropout: float = 0.1, pos_enc_at_attn: bool = False,
                 pos_enc_at_cross_attn_keys: bool = True, pos_enc_at_cross_attn_queries: bool = False) -> None:
        super().__init__()
        self.d_model = d_model
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor | None = None, query_pos: Tensor | None = None,
                num_k_exclude_rope: int = 0) -> Tensor:
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, x))
        x = self.norm2(tgt)
        x = self.cross_attn_image(
            x + query_pos if self.pos_enc_at_cross_attn_queries else x,
            memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            memory,
            num_k_exclude_rope=num_k_exclude_rope,
        )
        tgt = tgt + self.dropout2(x)
        x = apply_linear(self.linear2, self.dropout(F.relu(apply_linear(self.linear1, self.norm3(tgt)))))
        return tgt + self.dropout3(x)


class MemoryAttention(nn.Module):
    """A stack of :class:`MemoryAttentionLayer` and a final LayerNorm.

    forward(curr (N, B, C), memory (M, B, C_mem), curr_pos (N, B, C), memory_pos (M, B, C_mem),
    num_obj_ptr_tokens) -> (N, B, C): sequence-first in and out, as the SAM 2 memory bank stores tokens.
    """

    def __init__(self, d_model: int, pos_enc_at_input: bool, layers: list[MemoryAttentionLayer]) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input

    def forward(self, curr: Tensor, memory: Tensor, curr_pos: Tensor | None = None, memory_pos: Tensor | None = None,
                num_obj_ptr_tokens: int = 0) -> Tensor:
        if isinstance(curr, list):
            curr, curr_pos = curr[0], curr_pos[0]  # type: ignore[index]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"batch of current tokens ({curr.shape[1]}) and memory ({memory.shape[1]}) differ")
        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos
        output = output.transpose(0, 1)
        query_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
        memory_b = memory.transpose(0, 1)
        memory_pos_b = memory_pos.transpose(0, 1) if memory_pos is not None else None
        for layer in self.layers:
            output = layer(output, memory_b, pos=memory_pos_b, query_pos=query_pos,
                           num_k_exclude_rope=num_obj_ptr_tokens)
        return self.norm(output).transpose(0, 1)


def build_memory_attention(d_model: int = 256, mem_dim: int = 64, num_layers: int = 4,
                           dim_feedforward: int = 2048, dropout: float = 0.1) -> MemoryAttention:
    """The SAM 2.1 memory attention: 4 layers, single-head RoPE self- and cross-attention on a 64x64 grid."""
    def layer() -> MemoryAttentionLayer:
        return MemoryAttentionLayer(
            RoPEAttention(d_model, 1, dropout=dropout, feat_sizes=(64, 64)),
            RoPEAttention(d_model, 1, dropout=dropout, kv_in_dim=mem_dim, rope_k_repeat=True, feat_sizes=(64, 64)),
            d_model=d_model, dim_feedforward=dim_feedforward, dropout=dropout,
            pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False)

    return MemoryAttention(d_model, pos_enc_at_input=True, layers=[layer() for _ in range(num_layers)])
