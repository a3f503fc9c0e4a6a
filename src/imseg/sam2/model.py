"""The SAM 2.1 model: image encoder, SAM prompt encoder and mask decoder, and the video-memory modules
(memory attention, memory encoder, object pointers). Stateless; predictors hold the image/video state."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, sine_encoding_1d
from .config import Sam2Config
from .image_encoder import ImageEncoder, build_image_encoder
from .mask_decoder import MaskDecoder, TwoWayTransformer
from .memory_attention import MemoryAttention, build_memory_attention
from .memory_encoder import MemoryEncoder
from .prompt_encoder import PromptEncoder

BACKBONE_STRIDE = 16
#: feature-map sizes (h, w) of the levels the decoder uses, fine to coarse, at image_size 1024
FEATURE_SIZES = ((256, 256), (128, 128), (64, 64))


class Sam2Model(nn.Module):
    """SAM 2.1 with the official parameter names, so official checkpoints load unchanged."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.config = config
        self.variant = config.variant
        self.image_size = config.image_size
        self.hidden_dim = d = config.d_model
        self.mem_dim = config.mem_dim
        self.num_maskmem = config.num_maskmem
        self.directly_add_no_mem_embed = True
        self.use_high_res_features_in_sam = True
        self.num_feature_levels = 3
        self.image_encoder: ImageEncoder = build_image_encoder(
            config.embed_dim, config.num_heads, config.stages, config.global_att_blocks,
            config.window_pos_embed_bkg_spatial_size, config.window_spec, d_model=d)
        self.memory_attention: MemoryAttention = build_memory_attention(d, config.mem_dim,
                                                                        config.memory_attention_layers)
        self.memory_encoder = MemoryEncoder(out_dim=config.mem_dim, in_dim=d)
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)  # masks -> obj-ptr memory resolution
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, config.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, d))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, d))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, config.mem_dim))
        grid = config.image_size // BACKBONE_STRIDE
        self.sam_prompt_embed_dim = d
        self.sam_image_embedding_size = grid
        self.sam_prompt_encoder = PromptEncoder(embed_dim=d, image_embedding_size=(grid, grid),
                                                input_image_size=(config.image_size, config.image_size),
                                                mask_in_chans=16)
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=d,
            transformer=TwoWayTransformer(depth=2, embedding_dim=d, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
            iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True,
            dynamic_multimask_via_stability=config.apply_postprocessing)
        self.obj_ptr_proj = MLP(d, d, d, 3)
        self.obj_ptr_tpos_proj = nn.Linear(d, config.mem_dim)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward_image(self, images: torch.Tensor) -> dict:
        """Normalised (B, 3, 1024, 1024) -> the encoder's output dict, with the two fine FPN levels already
        projected by the decoder's ``conv_s0``/``conv_s1`` (so prompts do not redo it)."""
        out = self.image_encoder(images)
        fpn = list(out["backbone_fpn"])
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        out["backbone_fpn"] = fpn
        return out

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised (B, 3, 1024, 1024) -> image embedding (B, 256, 64, 64) with the no-memory embedding added
        (a single image is a conditioning frame without memory) and the projected high-resolution features
        [(B, 32, 256, 256), (B, 64, 128, 128)]."""
        fpn = self.forward_image(images)["backbone_fpn"][-self.num_feature_levels:]
        embed = fpn[-1] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, fpn[:-1]

    def object_pointer(self, sam_output_token: torch.Tensor, object_score_logits: torch.Tensor) -> torch.Tensor:
        """(B, C) SAM output token + (B, 1) object-score logits -> (B, C) object pointer; frames where no object
        appears (logit <= 0) get the learned ``no_obj_ptr``."""
        appearing = (object_score_logits > 0).float()
        return appearing * self.obj_ptr_proj(sam_output_token) + (1 - appearing) * self.no_obj_ptr

    def object_pointer_pos(self, frame_offsets: torch.Tensor, max_obj_ptrs: int = 16) -> torch.Tensor:
        """(P,) signed frame offsets of object pointers -> (P, mem_dim) temporal position encodings."""
        pos = sine_encoding_1d(frame_offsets.float() / (max_obj_ptrs - 1), dim=self.hidden_dim)
        return self.obj_ptr_tpos_proj(pos)
