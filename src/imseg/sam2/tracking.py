"""Per-frame steps of SAM 2 video tracking on a :class:`Sam2Model`: memory attention of a frame to the memory
bank, prompt decoding with object scores and object pointers, mask prompts taken as outputs, encoding a frame's
prediction into a memory, and the mask post-processing (hole filling, non-overlap). The video predictor keeps the
per-object memory bank over frames and calls these."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import Sam2Model

#: mask logit given to frames where the object-score head says the object is absent
NO_OBJ_SCORE = -1024.0


@dataclass
class FrameOutput:
    """Decoder results of one frame for B objects; M = 3 with multimask output else 1."""

    low_res_multimasks: torch.Tensor  #: (B, M, 256, 256) logits
    high_res_multimasks: torch.Tensor  #: (B, M, 1024, 1024) logits
    ious: torch.Tensor  #: (B, M) predicted IoU
    low_res_masks: torch.Tensor  #: (B, 1, 256, 256) the best mask (highest predicted IoU)
    high_res_masks: torch.Tensor  #: (B, 1, 1024, 1024)
    obj_ptr: torch.Tensor  #: (B, C) object pointer
    object_score_logits: torch.Tensor  #: (B, 1)


def decode_frame(model: Sam2Model, backbone_features: torch.Tensor, point_coords: torch.Tensor | None = None,
                 point_labels: torch.Tensor | None = None, mask_inputs: torch.Tensor | None = None,
                 high_res_features: list[torch.Tensor] | None = None, multimask_output: bool = False,
                 ) -> FrameOutput:
    """Prompt decoding of one frame. backbone_features (B, 256, 64, 64) (memory-conditioned), points (B, P, 2) in
    the 1024 frame with labels (B, P), mask_inputs (B, 1, H, W) (resized to 256 with antialiasing), high-res
    features as :meth:`Sam2Model.image_features` gives them. Absent objects get ``NO_OBJ_SCORE`` logits."""
    b, device = backbone_features.shape[0], backbone_features.device
    if point_coords is None:  # a single padding point: no sparse prompt
        point_coords = torch.zeros(b, 1, 2, device=device)
        point_labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
    masks = None
    if mask_inputs is not None:
        masks = mask_inputs
        if tuple(mask_inputs.shape[-2:]) != tuple(model.sam_prompt_encoder.mask_input_size):
            masks = F.interpolate(mask_inputs.float(), size=model.sam_prompt_encoder.mask_input_size,
                                  mode="bilinear", align_corners=False, antialias=True)
    sparse, dense = model.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=masks)
    low_res, ious, sam_tokens, object_score_logits = model.sam_mask_decoder(
        image_embeddings=backbone_features, image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
        repeat_image=False, high_res_features=high_res_features)
    appearing = object_score_logits > 0
    low_res = torch.where(appearing[:, None, None], low_res, NO_OBJ_SCORE).float()
    high_res = F.interpolate(low_res, size=(model.image_size, model.image_size), mode="bilinear",
                             align_corners=False)
    token = sam_tokens[:, 0]
    if multimask_output:
        best = torch.argmax(ious, dim=-1)
        rows = torch.arange(b, device=device)
        low_best, high_best = low_res[rows, best].unsqueeze(1), high_res[rows, best].unsqueeze(1)
        if sam_tokens.shape[1] > 1:
            token = sam_tokens[rows, best]
    else:
        low_best, high_best = low_res, high_res
    return FrameOutput(low_res, high_res, ious, low_best, high_best,
                       model.object_pointer(token, object_score_logits), object_score_logits)


def encode_memory(model: Sam2Model, pix_feat: torch.Tensor, high_res_masks: torch.Tensor,
                  object_score_logits: torch.Tensor, binarize: bool = False,
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A frame's memory: pix_feat (B, 256, 64, 64), high_res_masks (B, 1, 1024, 1024) logits, object scores (B, 1)
    -> memory features (B, 64, 64, 64) and [position encoding]. ``binarize``: use the thresholded mask instead
    of its sigmoid (the video predictor does so for masks from point prompts). Frames without the object get
    the learned ``no_obj_embed_spatial`` added."""
    mask = (high_res_masks > 0).float() if binarize else torch.sigmoid(high_res_masks)
    mask = mask * model.config.sigmoid_scale_for_mem_enc + model.config.sigmoid_bias_for_mem_enc
    out = model.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
    features = out["vision_features"]
    absent = 1 - (object_score_logits > 0).float()
    features = features + absent[..., None, None] * model.no_obj_embed_spatial[..., None, None]
    return features, out["vision_pos_enc"]


@dataclass
class Memory:
    """One spatial memory of an object: features (B, 64, h, w) (stored in bfloat16), their position encoding
    (B, 64, h, w) and ``t_pos``: 0 for conditioning frames, else 1 (oldest) .. num_maskmem - 1 (latest)."""

    t_pos: int
    features: torch.Tensor
    pos: torch.Tensor


def condition_on_memory(model: Sam2Model, vision_feat: torch.Tensor, vision_pos: torch.Tensor,
                        memories: list[Memory] | None, pointers: list[tuple[int, torch.Tensor]],
                        max_obj_ptrs: int) -> torch.Tensor:
    """Memory attention of the current frame's top-level features (B, C, H, W) (position encoding alike) to
    the spatial ``memories`` and the object ``pointers`` ((signed frame offset, (B, C)) pairs). ``memories`` None:
    an initial conditioning frame, which gets the no-memory embedding instead. Returns (B, C, H, W)."""
    b, c, h, w = vision_feat.shape
    curr = vision_feat.flatten(2).permute(2, 0, 1)
    if memories is None:
        return (curr + model.no_mem_embed).permute(1, 2, 0).view(b, c, h, w)
    tokens, pos_tokens = [], []
    for mem in memories:  # memories are kept in bfloat16; attention runs in float32
        tokens.append(mem.features.float().flatten(2).permute(2, 0, 1))
        tpos = model.maskmem_tpos_enc[model.num_maskmem - mem.t_pos - 1]
        pos_tokens.append(mem.pos.flatten(2).permute(2, 0, 1) + tpos)
    num_ptr_tokens = 0
    if pointers:
        offsets = torch.tensor([p for p, _ in pointers], device=vision_feat.device)
        ptrs = torch.stack([ptr for _, ptr in pointers], dim=0)  # (P, B, C)
        ptr_pos = model.object_pointer_pos(offsets, max_obj_ptrs).unsqueeze(1).expand(-1, b, model.mem_dim)
        split = c // model.mem_dim  # each pointer becomes C / mem_dim memory tokens
        ptrs = ptrs.reshape(-1, b, split, model.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        tokens.append(ptrs)
        pos_tokens.append(ptr_pos.repeat_interleave(split, dim=0))
        num_ptr_tokens = ptrs.shape[0]
    out = model.memory_attention(curr, torch.cat(tokens, dim=0), vision_pos.flatten(2).permute(2, 0, 1),
                                 torch.cat(pos_tokens, dim=0), num_obj_ptr_tokens=num_ptr_tokens)
    return out.permute(1, 2, 0).view(b, c, h, w)


def mask_as_output(model: Sam2Model, pix_feat: torch.Tensor, high_res_features: list[torch.Tensor],
                   mask_inputs: torch.Tensor) -> FrameOutput:
    """A mask prompt (B, 1, S, S) in the model frame taken as the output itself (logits ±10); the decoder only
    gives the object pointer. The object counts as present when the mask has any pixel."""
    high_res = mask_inputs.float() * 20.0 - 10.0
    low_res = F.interpolate(high_res, size=(high_res.shape[-2] // 4, high_res.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
    ious = mask_inputs.new_ones(mask_inputs.shape[0], 1).float()
    decoded = decode_frame(model, pix_feat, mask_inputs=model.mask_downsample(mask_inputs.float()),
                           high_res_features=high_res_features)
    appearing = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None].float()
    scores = 20.0 * appearing - 10.0
    obj_ptr = appearing * decoded.obj_ptr + (1 - appearing) * model.no_obj_ptr
    return FrameOutput(low_res, high_res, ious, low_res, high_res, obj_ptr, scores)


def non_overlapping(masks: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) logits of N objects: where another object scores higher, clamp to at most -10."""
    if masks.shape[0] == 1:
        return masks
    best = torch.argmax(masks, dim=0, keepdim=True)
    keep = best == torch.arange(masks.shape[0], device=masks.device)[:, None, None, None]
    return torch.where(keep, masks, torch.clamp(masks, max=-10.0))


def fill_holes(masks: torch.Tensor, max_area: float) -> torch.Tensor:
    """(N, 1, h, w) logits: background regions (logit <= 0, 8-connected) of at most ``max_area`` pixels become
    foreground with logit 0.1 (the official CUDA post-processing, done with scipy on the CPU)."""
    from scipy import ndimage

    flat = masks.detach().reshape(-1, *masks.shape[-2:]).cpu().numpy()
    holes = np.zeros(flat.shape, bool)
    for i, logits in enumerate(flat):
        labels, n = ndimage.label(logits <= 0, structure=np.ones((3, 3)))
        if n:
            areas = np.bincount(labels.ravel())
            holes[i] = (labels > 0) & (areas[labels] <= max_area)
    if not holes.any():
        return masks
    return torch.where(torch.as_tensor(holes, device=masks.device).reshape(masks.shape), 0.1, masks)
