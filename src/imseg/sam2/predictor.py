"""SAM2ImagePredictor: embed an image once, then predict masks for many prompts (official signatures)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError, PromptError, StateError
from ..io import read_image
from ..prompts import prompt_array
from .model import Sam2Model
from .transforms import postprocess_masks, preprocess, to_model_coords


def _rgb_array(image: Any, where: str) -> np.ndarray:
    """uint8 (H, W, 3) as given, anything else through :func:`imseg.read_image` (paths, PIL, gray, float)."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"{where} of shape {image.shape} has no pixels.")
        return image
    return read_image(image)


class SAM2ImagePredictor:
    """Drop-in for ``sam2.sam2_image_predictor.SAM2ImagePredictor``.

    Args:
        sam_model: a :class:`Sam2Model` (see :func:`imseg.sam2.build_sam2`).
        mask_threshold: logit threshold of the binary masks.
        max_hole_area, max_sprinkle_area: fill holes / remove sprinkles up to this many low-res pixels.
    """

    def __init__(self, sam_model: Sam2Model, mask_threshold: float = 0.0, max_hole_area: float = 0.0,
                 max_sprinkle_area: float = 0.0, **kwargs: Any) -> None:
        self.model = sam_model
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.reset_predictor()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_predictor(self) -> None:
        """Forget the image embeddings."""
        self._is_image_set = False
        self._features: dict[str, Any] | None = None
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_batch = False

    @torch.no_grad()
    def _embed(self, images: list[np.ndarray]) -> None:
        batch = torch.stack([preprocess(img, self.model.image_size, self.device) for img in images])
        image_embed, high_res = self.model.image_features(batch)
        self._features = {"image_embed": image_embed, "high_res_feats": high_res}
        self._orig_hw = [tuple(img.shape[:2]) for img in images]
        self._is_image_set = True

    def set_image(self, image: Any) -> None:
        """Embed one RGB image: (H, W, 3) uint8 array, PIL image, or a path/array :func:`imseg.read_image` reads."""
        self.reset_predictor()
        self._embed([_rgb_array(image, "image")])

    def set_image_batch(self, image_list: list[Any]) -> None:
        """Embed several RGB images (for :meth:`predict_batch`)."""
        self.reset_predictor()
        if not isinstance(image_list, (list, tuple)) or not image_list:
            raise InputError(f"set_image_batch takes a non-empty list of images; got {type(image_list).__name__}.")
        self._embed([_rgb_array(img, f"image {i}") for i, img in enumerate(image_list)])
        self._is_batch = True

    def get_image_embedding(self) -> torch.Tensor:
        """(B, 256, 64, 64) embedding of the image(s) set."""
        if not self._is_image_set:
            raise StateError("no image is set: call predictor.set_image(image) to get an embedding.")
        return self._features["image_embed"]  # type: ignore[index]

    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None,
                multimask_output: bool = True, return_logits: bool = False, normalize_coords: bool = True,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the image set. Points (N, 2) or (B, N, 2) XY with labels (N,) / (B, N)
        (1 foreground, 0 background); box (4,) or (B, 4) XYXY; mask_input (1, 256, 256) / (B, 1, 256, 256)
        low-res logits. Returns masks (M, H, W) (or (B, M, H, W)), IoU predictions (M,) and low-res logits
        (M, 256, 256); M = 3 with ``multimask_output`` else 1."""
        if not self._is_image_set:
            raise StateError("no image is set: call predictor.set_image(image) before predicting masks.")
        if len(self._orig_hw) > 1:  # type: ignore[arg-type]
            raise StateError(f"{len(self._orig_hw)} images are set (set_image_batch): use predict_batch, or "  # type: ignore[arg-type]
                             f"set_image(image) for one image.")
        prompts = self._prep_prompts(point_coords, point_labels, box, mask_input, normalize_coords, img_idx=0)
        masks, iou, low_res = self._predict(*prompts, multimask_output, return_logits=return_logits, img_idx=0)
        return (masks.squeeze(0).float().cpu().numpy(), iou.squeeze(0).float().cpu().numpy(),
                low_res.squeeze(0).float().cpu().numpy())

    def predict_batch(self, point_coords_batch: list | None = None, point_labels_batch: list | None = None,
                      box_batch: list | None = None, mask_input_batch: list | None = None,
                      multimask_output: bool = True, return_logits: bool = False, normalize_coords: bool = True,
                      ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for each image of :meth:`set_image_batch`, with one entry per image in each list."""
        if not self._is_image_set or not self._is_batch:
            raise StateError("predict_batch needs images set with predictor.set_image_batch([...]) first.")
        n = len(self._orig_hw)  # type: ignore[arg-type]
        for name, values in (("point_coords_batch", point_coords_batch), ("point_labels_batch", point_labels_batch),
                             ("box_batch", box_batch), ("mask_input_batch", mask_input_batch)):
            if values is not None and len(values) != n:
                raise PromptError(f"{name} has {len(values)} entries for {n} images; give one per image (or None).")
        out: tuple[list, list, list] = ([], [], [])
        for i in range(n):
            prompts = self._prep_prompts(*(None if v is None else v[i] for v in (
                point_coords_batch, point_labels_batch, box_batch, mask_input_batch)), normalize_coords, img_idx=i)
            results = self._predict(*prompts, multimask_output, return_logits=return_logits, img_idx=i)
            for store, value in zip(out, results, strict=True):
                store.append(value.squeeze(0).float().cpu().numpy())
        return out

    def _prep_prompts(self, point_coords: Any, point_labels: Any, box: Any, mask_logits: Any,
                      normalize_coords: bool, img_idx: int = 0,
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Prompts as model-frame tensors: coords (B, N, 2), labels (B, N), box corners (B, 2, 2), mask (B, 1, h, w)."""
        orig_hw = self._orig_hw[img_idx]  # type: ignore[index]
        size = self.model.image_size
        coords = labels = corners = mask = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels must be given with point_coords (1 = foreground, 0 = background).")
            pts = prompt_array(point_coords, "point_coords")
            lab = np.asarray(point_labels)
            if pts.ndim not in (2, 3) or pts.shape[-1] != 2 or lab.shape != pts.shape[:-1]:
                raise PromptError(f"point_coords must be (N, 2) or (B, N, 2) XY pixels with point_labels (N,) or "
                                  f"(B, N); got {pts.shape} and {lab.shape}.")
            if lab.dtype.kind not in "biuf" or not np.isin(lab, (-1, 0, 1, 2, 3)).all():
                raise PromptError("point_labels must be 1 (foreground), 0 (background), -1 (padding) or 2/3 "
                                  "(box corners).")
            coords = to_model_coords(torch.as_tensor(pts, dtype=torch.float, device=self.device), size, orig_hw,
                                     normalize_coords)
            labels = torch.as_tensor(lab, dtype=torch.int, device=self.device)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            bx = prompt_array(box, "box")
            if bx.shape[-1] != 4 or bx.ndim not in (1, 2):
                raise PromptError(f"box must be (4,) or (B, 4) XYXY pixels; got shape {bx.shape}.")
            corners = to_model_coords(torch.as_tensor(bx, dtype=torch.float, device=self.device).reshape(-1, 2, 2),
                                      size, orig_hw, normalize_coords)
        if mask_logits is not None:
            mask = torch.as_tensor(np.asarray(mask_logits), dtype=torch.float, device=self.device)
            if mask.ndim == 3:
                mask = mask[None]
            if mask.ndim != 4 or mask.shape[1] != 1:
                raise PromptError(f"mask_input must be (1, 256, 256) or (B, 1, 256, 256) low-res logits (e.g. a "
                                  f"previous low-res output); got shape {tuple(mask.shape)}.")
        return coords, labels, corners, mask

    @torch.no_grad()
    def _predict(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                 boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                 multimask_output: bool = True, return_logits: bool = False, img_idx: int = 0,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model-frame prompts -> masks (B, M, H, W), IoU (B, M), low-res logits (B, M, 256, 256) clamped to ±32."""
        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:  # box corners go first, as points labelled 2 (top-left) and 3 (bottom-right)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.shape[0], 1)
            if points is None:
                points = (boxes, box_labels)
            else:
                if points[0].shape[0] != boxes.shape[0]:
                    raise PromptError(f"{boxes.shape[0]} boxes for {points[0].shape[0]} point sets; give one box "
                                      f"per point set.")
                points = (torch.cat([boxes, points[0]], dim=1), torch.cat([box_labels, points[1]], dim=1))
        sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        features = self._features  # type: ignore[assignment]
        high_res = [level[img_idx].unsqueeze(0) for level in features["high_res_feats"]]
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=features["image_embed"][img_idx].unsqueeze(0),
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
            repeat_image=points is not None and points[0].shape[0] > 1, high_res_features=high_res)
        masks = postprocess_masks(low_res, self._orig_hw[img_idx], self.mask_threshold,  # type: ignore[index]
                                  self.max_hole_area, self.max_sprinkle_area)
        low_res = torch.clamp(low_res, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res
