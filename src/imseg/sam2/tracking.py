"""Per-frame steps of SAM 2 video tracking on a :class:`Sam2Model`: prompt decoding with object scores
and object pointers, and encoding a frame's prediction into a memory. (The video predictor that keeps
the per-object memory bank over frames builds on these.)"""

from __future__ import annotations

from dataclasses import dataclass

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
