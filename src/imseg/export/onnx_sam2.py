"""ONNX export of SAM 2.1: the image encoder, the prompt decoder and (optionally) the memory attention.

Interfaces (float32 unless said otherwise), for a model of input size S (``img_size`` in the manifest; any
multiple of 32, 1024 for the official checkpoints) and g = S/16::

    encoder.onnx   image (1, 3, S, S) squashed to the square, (x/255 - mean) / std
                   -> image_embed (1, 256, g, g) (no-memory embedding added, as for a single image),
                      high_res_feats_0 (1, 32, 4g, 4g), high_res_feats_1 (1, 64, 2g, 2g)
    decoder.onnx   image_embed, high_res_feats_0, high_res_feats_1 (as above),
                   point_coords (B, N, 2) model-frame pixels (x/W*S, y/H*S), point_labels (B, N)
                   (1 fg, 0 bg, 2/3 box corners, -1 padding), mask_input (1|B, 1, S/4, S/4),
                   has_mask_input (1,), orig_im_size (2,) (H, W)
                   -> masks (B, 4, H, W) logits, iou_predictions (B, 4), low_res_masks (B, 4, S/4, S/4),
                      object_score_logits (B, 1)
    memory_attention.onnx (with ``memory_attention=True``)
                   curr (g*g, B, 256), curr_pos (g*g, B, 256), memory (M, B, 64), memory_pos (M, B, 64)
                   with M = g*g per remembered frame, obj_ptrs (P, B, 64), obj_ptrs_pos (P, B, 64)
                   -> pix_feat_with_mem (g*g, B, 256)

The decoder returns all four mask tokens (single-mask token first); the engine chooses among them
(multimask, or the single mask with SAM 2's stability fallback) so the choice stays one rule on host.
The memory attention's 2-D RoPE is exported with real cos/sin tables instead of complex numbers,
which ONNX has no type for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .onnx import (
    DEFAULT_OPSET,
    _torch_onnx_export,
    check_onnx,
    check_opset,
    prepare_out_dir,
    set_metadata,
    simplify,
    write_manifest,
)

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
SAM2_ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")
SAM2_DECODER_INPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                       "mask_input", "has_mask_input", "orig_im_size")
SAM2_DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks", "object_score_logits")
MEMORY_ATTENTION_INPUTS = ("curr", "curr_pos", "memory", "memory_pos", "obj_ptrs", "obj_ptrs_pos")
#: Hiera's coarsest stage has stride 32 and the FPN neck adds it, upsampled 2x, to the stride-16 level, so the
#: input side must divide by 32 (other sizes fail inside the encoder)
SAM2_SIZE_MULTIPLE = 32


def check_sam2_image_size(size: int, where: object) -> int:
    """``size`` if a SAM 2.1 model can run at it (a positive multiple of 32), else an :class:`ExportError`."""
    size = int(size)
    if size < SAM2_SIZE_MULTIPLE or size % SAM2_SIZE_MULTIPLE:
        nearest = max(SAM2_SIZE_MULTIPLE, round(size / SAM2_SIZE_MULTIPLE) * SAM2_SIZE_MULTIPLE)
        raise ExportError(f"{where}: SAM 2.1 runs at input sizes that are multiples of {SAM2_SIZE_MULTIPLE} (the Hiera "
                          f"encoder's coarsest stage has stride {SAM2_SIZE_MULTIPLE}); got {size} px. Use a model "
                          f"built or fine-tuned at e.g. {nearest} px.")
    return size


def low_res_size(image_size: int) -> int:
    """Side of the decoder's low-res mask logits and mask prompts: a quarter of the input side."""
    return int(image_size) // 4


def _modules():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Sam2EncoderOnnx(nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, image):
            embed, (feat_s0, feat_s1) = self.model.image_features(image)
            return embed, feat_s0, feat_s1

    class Sam2DecoderOnnx(nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.prompt_encoder = model.sam_prompt_encoder
            self.mask_decoder = model.sam_mask_decoder

        def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                    has_mask_input, orig_im_size):
            pe = self.prompt_encoder
            # the host appends the padding point the predictor's prompt encoder adds (label -1)
            sparse = pe._embed_points(point_coords, point_labels.to(torch.int64), pad=False)
            dense = has_mask_input * pe.mask_downscaling(mask_input)
            dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            low_res, iou, _, object_score = self.mask_decoder.predict_masks(
                image_embed, pe.get_dense_pe(), sparse, dense, repeat_image=True,
                high_res_features=[high_res_feats_0, high_res_feats_1])
            out_hw = orig_im_size.to(torch.int64)
            masks = F.interpolate(low_res, size=(out_hw[0], out_hw[1]), mode="bilinear", align_corners=False)
            return masks, iou, low_res, object_score

    return Sam2EncoderOnnx, Sam2DecoderOnnx


def rope_tables(attention) -> tuple[Any, Any]:
    """cos and sin (N, C/2) of a :class:`~imseg.sam2.memory_attention.RoPEAttention`'s complex rotations."""
    rotations = attention._rotations
    return rotations.real.contiguous(), rotations.imag.contiguous()


def rotate_real(x, cos, sin):
    """RoPE on (B, H, R*N, C) tokens (R stacked copies of an N-token grid) with cos/sin (N, C/2): each
    channel pair (a, b) -> (a cos - b sin, a sin + b cos); no complex numbers, so it exports to ONNX."""
    import torch

    b, h, _, c = x.shape
    n = cos.shape[0]
    pairs = x.reshape(b, h, -1, n, c // 2, 2)
    a, bb = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - bb * sin, a * sin + bb * cos), dim=-1)
    return out.reshape(x.shape)


def _attend(attention, q, k, v, num_rope_keys, cos, sin):
    """:class:`RoPEAttention` forward with real RoPE; the first ``num_rope_keys`` keys (spatial memories) are
    rotated, the rest (object pointers) are not."""
    import torch
    from torch.nn import functional as F

    q = attention._heads(attention.q_proj(q))
    k = attention._heads(attention.k_proj(k))
    v = attention._heads(attention.v_proj(v))
    q = rotate_real(q, cos, sin)
    if num_rope_keys is None:
        k = rotate_real(k, cos, sin)
    else:
        k = torch.cat([rotate_real(k[:, :, :num_rope_keys], cos, sin), k[:, :, num_rope_keys:]], dim=2)
    out = F.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(out.transpose(1, 2).flatten(2))


def _memory_attention_module(model):
    import torch
    from torch import nn

    tokens = (int(model.image_size) // 16) ** 2  # the RoPE tables cover the model's own token grid

    class MemoryAttentionOnnx(nn.Module):
        """The memory attention stack with real-valued RoPE; spatial memories and object pointers come apart
        so the number of rotated keys follows the input shapes."""

        def __init__(self, memory_attention) -> None:
            super().__init__()
            self.stack = memory_attention
            first = memory_attention.layers[0]
            for name, attn in (("self", first.self_attn), ("cross", first.cross_attn_image)):
                attn._rotations_for(tokens, torch.device("cpu"))
                cos, sin = rope_tables(attn)
                self.register_buffer(f"{name}_cos", cos, persistent=False)
                self.register_buffer(f"{name}_sin", sin, persistent=False)

        def forward(self, curr, curr_pos, memory, memory_pos, obj_ptrs, obj_ptrs_pos):
            stack = self.stack
            output = curr + 0.1 * curr_pos if stack.pos_enc_at_input else curr
            output, query_pos = output.transpose(0, 1), curr_pos.transpose(0, 1)
            mem = torch.cat([memory, obj_ptrs], dim=0).transpose(0, 1)
            mem_pos = torch.cat([memory_pos, obj_ptrs_pos], dim=0).transpose(0, 1)
            num_rope = memory.shape[0]
            for layer in stack.layers:
                x = layer.norm1(output)
                qk = x + query_pos if layer.pos_enc_at_attn else x
                output = output + _attend(layer.self_attn, qk, qk, x, None, self.self_cos, self.self_sin)
                x = layer.norm2(output)
                x = _attend(layer.cross_attn_image,
                            x + query_pos if layer.pos_enc_at_cross_attn_queries else x,
                            mem + mem_pos if layer.pos_enc_at_cross_attn_keys else mem,
                            mem, num_rope, self.cross_cos, self.cross_sin)
                output = output + x
                output = output + layer.linear2(torch.relu(layer.linear1(layer.norm3(output))))
            return stack.norm(output).transpose(0, 1)

    return MemoryAttentionOnnx(model.memory_attention).eval()


def export_sam2_encoder(model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    import torch

    encoder_cls, _ = _modules()
    size = int(model.image_size)
    path = Path(path)
    _torch_onnx_export(encoder_cls(model).eval(), (torch.randn(1, 3, size, size),), path, input_names=["image"],
                       output_names=SAM2_ENCODER_OUTPUTS, dynamic_axes=None, opset=opset)
    return path


def export_sam2_decoder(model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    import torch

    _, decoder_cls = _modules()
    size = int(model.image_size)
    d = int(model.hidden_dim)
    grid, low = size // 16, low_res_size(size)
    args = (
        torch.randn(1, d, grid, grid), torch.randn(1, d // 8, 4 * grid, 4 * grid), torch.randn(1, d // 4, 2 * grid, 2 * grid),
        torch.randint(0, size, (1, 5, 2)).to(torch.float32), torch.randint(-1, 4, (1, 5)).to(torch.float32),
        torch.randn(1, 1, low, low), torch.tensor([1.0]), torch.tensor([700.0, 1000.0]),
    )
    path = Path(path)
    _torch_onnx_export(
        decoder_cls(model).eval(), args, path, input_names=SAM2_DECODER_INPUTS, output_names=SAM2_DECODER_OUTPUTS,
        dynamic_axes={"point_coords": {0: "batch", 1: "num_points"}, "point_labels": {0: "batch", 1: "num_points"},
                      "mask_input": {0: "mask_batch"}, "masks": {0: "batch", 2: "height", 3: "width"},
                      "iou_predictions": {0: "batch"}, "low_res_masks": {0: "batch"},
                      "object_score_logits": {0: "batch"}},
        opset=opset,
    )
    return path


def export_sam2_memory_attention(model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET) -> Path:
    """The memory attention with real-valued RoPE (see the module docstring for the interface)."""
    import torch

    module = _memory_attention_module(model)
    d, mem = int(model.hidden_dim), int(model.mem_dim)
    tokens = (int(model.image_size) // 16) ** 2
    args = (torch.randn(tokens, 1, d), torch.randn(tokens, 1, d), torch.randn(2 * tokens, 1, mem),
            torch.randn(2 * tokens, 1, mem), torch.randn(8, 1, mem), torch.randn(8, 1, mem))
    path = Path(path)
    _torch_onnx_export(
        module, args, path, input_names=MEMORY_ATTENTION_INPUTS, output_names=["pix_feat_with_mem"],
        dynamic_axes={"curr": {1: "batch"}, "curr_pos": {1: "batch"}, "memory": {0: "memory_tokens", 1: "batch"},
                      "memory_pos": {0: "memory_tokens", 1: "batch"}, "obj_ptrs": {0: "pointer_tokens", 1: "batch"},
                      "obj_ptrs_pos": {0: "pointer_tokens", 1: "batch"}, "pix_feat_with_mem": {1: "batch"}},
        opset=opset,
    )
    return path


def export_sam2(model, out_dir: str | os.PathLike, *, model_name: str = "sam2.1-hiera-t", variant: str = "",
                memory_attention: bool = False, opset: int = DEFAULT_OPSET, simplify_graph: bool = False,
                check: bool = True) -> Path:
    """Export a :class:`~imseg.sam2.model.Sam2Model` to ``out_dir`` (``encoder.onnx``, ``decoder.onnx``,
    optionally ``memory_attention.onnx``, and ``imseg_export.json``); returns the manifest path."""
    check_opset(opset)
    size = check_sam2_image_size(model.image_size, f"{model_name} ({variant or model.variant})")
    out = prepare_out_dir(out_dir)
    model = model.eval()
    files = {"encoder": export_sam2_encoder(model, out / "encoder.onnx", opset=opset),
             "decoder": export_sam2_decoder(model, out / "decoder.onnx", opset=opset)}
    if memory_attention:
        files["memory_attention"] = export_sam2_memory_attention(model, out / "memory_attention.onnx", opset=opset)
    meta = {"imseg_model": model_name, "imseg_variant": variant, "pixel_mean": list(SAM2_MEAN),
            "pixel_std": list(SAM2_STD), "img_size": size}
    for path in files.values():
        if simplify_graph:
            simplify(path)
        set_metadata(path, meta)
        if check:
            check_onnx(path)
    decoder = model.sam_mask_decoder
    manifest = {
        "format": "onnx",
        "family": "sam2",
        "model": model_name,
        "variant": variant,
        "files": {role: path.name for role, path in files.items()},
        "opset": opset,
        "img_size": size,
        "low_res_size": low_res_size(size),
        "mask_threshold": 0.0,
        "dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
        "stability_delta": float(decoder.dynamic_multimask_stability_delta),
        "stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
        "normalization": {"mean": list(SAM2_MEAN), "std": list(SAM2_STD), "units": "0..1"},
        "inputs": {"encoder": {"name": "image", "dtype": "float32", "shape": [1, 3, size, size], "layout": "NCHW RGB",
                               "preprocessing": f"resize to {size}x{size} (bilinear, antialiased, aspect ratio not "
                                                f"kept), x/255, (x - mean) / std"},
                   "decoder": list(SAM2_DECODER_INPUTS)},
        "outputs": {"encoder": list(SAM2_ENCODER_OUTPUTS), "decoder": list(SAM2_DECODER_OUTPUTS)},
    }
    if memory_attention:
        manifest["inputs"]["memory_attention"] = list(MEMORY_ATTENTION_INPUTS)
        manifest["outputs"]["memory_attention"] = ["pix_feat_with_mem"]
    return write_manifest(out, manifest)
