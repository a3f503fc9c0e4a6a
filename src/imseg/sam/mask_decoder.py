"""SAM's mask decoder: image embedding + prompt tokens -> low-res mask logits and IoU predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, plain_modules, tracing


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predicts masks from image and prompt embeddings with a two-way transformer.

    Args:
        transformer_dim: channel width of the transformer (256).
        transformer: the :class:`~imseg.sam.transformer.TwoWayTransformer`.
        num_multimask_outputs: candidate masks for ambiguous prompts (3).
        iou_head_depth, iou_head_hidden_dim: the IoU-prediction MLP.
    """

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 activation: type[nn.Module] = nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1|B, C, h, w), image_pe (1, C, h, w), sparse (B, N, C), dense (B|1, C, h, w)
        -> masks (B, M, 4h, 4w) logits and iou (B, M); M = 3 with ``multimask_output`` else 1."""
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks (B, T, 4h, 4w) and IoU predictions (B, T)."""
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(bs, -1, -1).to(sparse_prompt_embeddings.dtype),
                            sparse_prompt_embeddings], dim=1)
        if tracing():
            # Traced (TorchScript / ONNX export): no Python-level batch decisions, which would be
            # frozen to the example's sizes. The image tokens follow the prompt batch symbolically
            # (Expand on the traced batch size), so every attention below sees equal batches.
            src = (image_embeddings + dense_prompt_embeddings).expand(bs, -1, -1, -1)
        else:
            if image_embeddings.shape[0] not in (1, bs):
                image_embeddings = torch.repeat_interleave(image_embeddings, bs, dim=0)
            dense = dense_prompt_embeddings
            if dense.shape[0] > 1 and dense.stride(0) == 0:  # one "no mask" embedding expanded over the batch
                dense = dense[:1]
            src = image_embeddings + dense  # batch 1 when every prompt sees the same image tokens
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self._upscale(keys.reshape(bs, h, w, c))  # (B, h*w*16, C/8), sub-pixel order
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, T, C/8)
        masks = hyper_in @ upscaled.transpose(1, 2)  # (B, T, h*w*16)
        t = masks.shape[1]
        # (h, w, dy1, dx1, dy2, dx2) -> output row 4*y + 2*dy1 + dy2, column 4*x + 2*dx1 + dx2
        masks = masks.view(bs, t, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(bs, t, 4 * h, 4 * w)
        return masks, self.iou_prediction_head(iou_token_out)

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` on channels-last tokens (B, h, w, C) -> (B, h*w*16, C/8).

        A stride-2 kernel-2 transposed convolution is a per-pixel linear map to 2x2 sub-pixels, so
        both stages run as matrix products and the pixel shuffle is left to the (few) final masks.
        """
        b = x.shape[0]
        if not plain_modules(self.output_upscaling):  # wrapped or hooked: run the modules, then reorder
            h, w = x.shape[1:3]
            y = self.output_upscaling(x.permute(0, 3, 1, 2))  # (B, C2, 4h, 4w): row 4y + 2dy1 + dy2
            c2 = y.shape[1]
            return y.view(b, c2, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1).reshape(b, -1, c2)
        up1, norm, act1, up2, act2 = self.output_upscaling
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.weight.shape[0], -1)  # (C, 4*C1), (dy, dx, c1)
        y = F.linear(x.reshape(-1, x.shape[-1]), w1.t(), up1.bias.repeat(4))
        c1 = up1.weight.shape[1]
        y = act1(F.layer_norm(y.view(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, -1)  # (C1, 4*C2)
        y = act2(F.linear(y, w2.t(), up2.bias.repeat(4)))
        return y.view(b, -1, up2.weight.shape[1])
