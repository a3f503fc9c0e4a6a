"""SAM 2.1 on ONNX Runtime: :class:`OrtSam2Predictor` (the ``SAM2ImagePredictor`` prompt API on the exported
encoder/decoder sessions) and :class:`OrtSam2Segmenter` (the engine behind the one ``Segmenter.segment``).

Prompt mode needs no torch: the image is squashed to the model square with Pillow's antialiased bilinear
resize in float (what ``torch.nn.functional.interpolate(antialias=True)`` computes), and the mask choice
(multimask tokens, or the single-mask token with SAM 2's stability fallback) runs in numpy. Everything
mode runs :mod:`imseg.sam.automatic`, which needs torch.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DependencyError, ExportError, PromptError, StateError
from ..io import read_image
from ..masks import Masks
from ..segmenter import Candidates, Embedding, Prompts, Segmenter
from .onnx import MANIFEST
from .onnx_sam2 import SAM2_DECODER_INPUTS, SAM2_ENCODER_OUTPUTS, check_sam2_image_size, low_res_size
from .prompt_feeds import box_corners, decode_single_points, decoder_prompt_feeds, join_prompts, padding_point
from .sessions import check_session, io_signature, make_session, read_manifest


@dataclass
class OrtSam2Embedding(Embedding):
    """``features``: ``{"image_embed": (1, 256, g, g), "high_res_feats": [(1, 32, 4g, 4g), (1, 64, 2g, 2g)]}``
    float32 arrays, g = input side / 16; ``input_size`` is the model square every image is squashed to."""

    @property
    def nbytes(self) -> int:
        return int(self.features["image_embed"].nbytes + sum(f.nbytes for f in self.features["high_res_feats"]))


def squash(image: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (1, 3, size, size) float32: x/255 resized to the square (antialiased bilinear,
    aspect ratio not kept, as SAM 2 does), then (x - mean) / std."""
    from PIL import Image

    x = image.astype(np.float32) / 255.0
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F").resize(
        (size, size), Image.BILINEAR)) for c in range(3)]
    out = (np.stack(channels) - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(out[None], np.float32)


def stability_scores(logits: np.ndarray, delta: float) -> np.ndarray:
    """(B, h, w) -> (B,): area(logit > delta) / area(logit > -delta), 1 where both are empty."""
    flat = logits.reshape(len(logits), -1)
    inner = np.sum(flat > delta, axis=1).astype(np.float32)
    outer = np.sum(flat > -delta, axis=1).astype(np.float32)
    return np.where(outer > 0, inner / np.maximum(outer, 1.0), np.float32(1.0))


class OrtSam2Predictor:
    """SAM 2.1 prompt decoding on ONNX Runtime sessions of an ``imseg export`` directory (family ``sam2``).

    ``set_image(image)`` embeds an RGB image; ``predict`` takes points (N, 2) XY image pixels with labels
    (N,), a box XYXY (4,) or boxes (B, 4), and/or low-res logits (1, L, L), and returns masks (M, H, W),
    IoU predictions (M,) and low-res logits (M, L, L) as ``SAM2ImagePredictor.predict`` does; L = ``low_res``,
    a quarter of the export's input size ``image_size`` (``img_size`` in its manifest: 256 at 1024 px).
    """

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        if self.manifest.get("family") != "sam2":
            raise ExportError(f"{export_dir}: not a SAM 2 export (family={self.manifest.get('family')!r}).")
        files = self.manifest["files"]
        self.image_size = check_sam2_image_size(self.manifest.get("img_size", 1024), export_dir / MANIFEST)
        self.low_res = low_res_size(self.image_size)
        self.mask_threshold = float(self.manifest.get("mask_threshold", 0.0))
        self.dynamic_stability = bool(self.manifest.get("dynamic_multimask_via_stability", True))
        self.stability_delta = float(self.manifest.get("stability_delta", 0.05))
        self.stability_thresh = float(self.manifest.get("stability_thresh", 0.98))
        norm = self.manifest["normalization"]
        self.pixel_mean = np.asarray(norm["mean"], np.float32)
        self.pixel_std = np.asarray(norm["std"], np.float32)
        self.encoder = make_session(export_dir / files["encoder"], device=device, providers=providers, threads=threads)
        check_session(self.encoder, export_dir / files["encoder"], "SAM 2 image encoder",
                      {"image": ("tensor(float)", 4)}, {n: ("tensor(float)", 4) for n in SAM2_ENCODER_OUTPUTS})
        self.decoder = make_session(export_dir / files["decoder"], device=device, providers=providers, threads=threads)
        ranks = dict(zip(SAM2_DECODER_INPUTS, (4, 4, 4, 3, 2, 4, 1, 1), strict=True))
        check_session(self.decoder, export_dir / files["decoder"], "SAM 2 prompt decoder",
                      {n: ("tensor(float)", r) for n, r in ranks.items()},
                      {"masks": ("tensor(float)", 4), "iou_predictions": ("tensor(float)", 2),
                       "low_res_masks": ("tensor(float)", 4), "object_score_logits": ("tensor(float)", 2)})
        self._check_sizes(export_dir)
        self.reset_predictor()

    def _check_sizes(self, export_dir: Path) -> None:
        """The sessions' static image and mask-prompt sides agree with the manifest's ``img_size``."""
        files = self.manifest["files"]
        checks = ((self.encoder, "encoder", "image", self.image_size),
                  (self.decoder, "decoder", "mask_input", self.low_res))
        for session, role, name, side in checks:
            shape = io_signature(session)[0][name][1]
            if all(isinstance(d, int) for d in shape[2:]) and shape[2:] != [side, side]:
                raise ExportError(f"{export_dir / files[role]}: the {role}'s {name} is {shape}, but {MANIFEST} says "
                                  f"img_size={self.image_size} ({name} side {side}); fix img_size there or export "
                                  f"again.")

    def worker_copy(self) -> OrtSam2Predictor:
        """A predictor sharing these sessions (thread-safe) with its own image state."""
        clone = copy.copy(self)
        clone.reset_predictor()
        return clone

    def reset_predictor(self) -> None:
        self._is_image_set = False
        self._features: dict[str, Any] | None = None
        self._orig_hw: tuple[int, int] | None = None

    def embed(self, image: np.ndarray) -> dict[str, Any]:
        """The image state of an RGB uint8 (H, W, 3) image (stateless)."""
        feed = squash(np.ascontiguousarray(image), self.image_size, self.pixel_mean, self.pixel_std)
        embed, feat_s0, feat_s1 = self.encoder.run(list(SAM2_ENCODER_OUTPUTS), {"image": feed})
        return {"image_embed": embed, "high_res_feats": [feat_s0, feat_s1]}

    def set_image(self, image: Any) -> None:
        """Embed one RGB image (an array, PIL image or path :func:`imseg.read_image` reads)."""
        rgb = read_image(image)
        self.reset_predictor()
        self._features = self.embed(rgb)
        self._orig_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        self._is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        if not self._is_image_set:
            raise StateError("no image is set: call predictor.set_image(image) to get an embedding.")
        return self._features["image_embed"]  # type: ignore[index]

    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None,
                multimask_output: bool = True, return_logits: bool = False):
        """``SAM2ImagePredictor.predict`` on ONNX Runtime (see the class docstring)."""
        if not self._is_image_set:
            raise StateError("no image is set: call predictor.set_image(image) before predicting masks.")
        points = labels = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels must be given with point_coords (1 = foreground, 0 = background).")
            points = np.asarray(point_coords, np.float32).reshape(-1, 2)
            labels = np.asarray(point_labels).reshape(-1)
            if len(labels) != len(points):
                raise PromptError(f"{len(points)} points but {len(labels)} labels; give one label per point.")
        boxes = None if box is None else np.asarray(box, np.float32).reshape(-1, 4)
        masks, iou, low = self.decode_prompts(self._features, self._orig_hw, points, labels, boxes,  # type: ignore[arg-type]
                                              mask_input, multimask_output, return_logits)
        return (masks[0], iou[0], low[0]) if len(masks) == 1 else (masks, iou, low)

    def _prompt_arrays(self, hw: tuple[int, int], points, labels, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Model-frame coords (B, N, 2) and labels (B, N): box corners (labels 2, 3) first, then the points,
        then the padding point (label -1) the predictor's prompt encoder appends; none without any."""
        scale = np.array([self.image_size / hw[1], self.image_size / hw[0]], np.float32)
        batch = 1 if boxes is None else len(boxes)
        parts = []
        if boxes is not None:
            corners, corner_labels = box_corners(boxes, batch)
            parts.append((corners * scale, corner_labels))
        if points is not None:
            parts.append((np.broadcast_to(points[None] * scale, (batch, *points.shape)),
                          np.broadcast_to(np.asarray(labels, np.float32)[None], (batch, len(labels)))))
        if parts:
            return join_prompts([*parts, padding_point(batch)])
        return np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.float32)

    def run_decoder(self, features: dict[str, Any], orig_hw: tuple[int, int], coords: np.ndarray, labels: np.ndarray,
                    mask_input: np.ndarray | None = None, outputs: list[str] | None = None) -> list[np.ndarray]:
        """One decoder run: coords (B, N, 2) model-frame pixels, labels (B, N) -> the ``outputs`` (default all:
        masks (B, 4, H, W), iou (B, 4), low-res (B, 4, L, L), object-score logits (B, 1))."""
        feat_s0, feat_s1 = features["high_res_feats"]
        feeds = {"image_embed": features["image_embed"], "high_res_feats_0": feat_s0, "high_res_feats_1": feat_s1,
                 **decoder_prompt_feeds(coords, labels, mask_input, orig_hw, self.low_res)}
        return self.decoder.run(outputs, feeds)

    def select(self, masks: np.ndarray, iou: np.ndarray, low: np.ndarray, multimask_output: bool):
        """The three multimask tokens, or per prompt the single-mask token (falling back to the best multimask
        token where the single mask is unstable, when the model does that)."""
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], low[:, 1:]
        choice = np.zeros(len(iou), np.int64)
        if self.dynamic_stability:
            stable = stability_scores(low[:, 0], self.stability_delta) >= self.stability_thresh
            choice = np.where(stable, 0, 1 + np.argmax(iou[:, 1:], axis=1))
        rows = np.arange(len(iou))
        return masks[rows, choice][:, None], iou[rows, choice][:, None], low[rows, choice][:, None]

    def decode_prompts(self, features: dict[str, Any], orig_hw: tuple[int, int], points: np.ndarray | None,
                       labels: np.ndarray | None, boxes: np.ndarray | None, mask_input: Any,
                       multimask_output: bool, return_logits: bool = False):
        """Prompts in image pixels -> masks (B, M, H, W), IoU (B, M), low-res logits (B, M, L, L) clamped to
        ±32; B = number of boxes (or 1), M = 3 with ``multimask_output`` else 1."""
        if points is None and boxes is None and mask_input is None:
            raise PromptError("predict needs at least one prompt: points, a box or a mask_input.")
        if boxes is not None and len(boxes) > 1 and (points is not None or mask_input is not None):
            raise PromptError(f"{len(boxes)} boxes cannot be combined with points or mask_input; give one box.")
        if mask_input is not None:
            mask_input = np.asarray(mask_input, np.float32)
            side = self.low_res
            if mask_input.shape not in ((1, side, side), (1, 1, side, side)):
                raise PromptError(f"mask_input must have shape (1, {side}, {side}) (low-res logits of this "
                                  f"{self.image_size} px export, e.g. a previous low-res output); got "
                                  f"{mask_input.shape}.")
        coords, labs = self._prompt_arrays(orig_hw, points, labels, boxes)
        masks, iou, low, _ = self.run_decoder(features, orig_hw, coords, labs, mask_input)
        masks, iou, low = self.select(masks, iou, low, multimask_output)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, np.clip(low, -32.0, 32.0)


class _OrtSam2PointBatch:
    """Decoder outputs of a batch of single-point prompts: IoU (B, 3) and low-res logits (B, 3, L, L)."""

    def __init__(self, iou: Any, low_res: Any) -> None:
        self.iou, self._low = iou, low_res

    def low_res(self, ids: Any) -> Any:
        return self._low[ids]


class OrtSam2AmgBackend:
    """:class:`imseg.sam.automatic.AmgBackend` on the sessions of an :class:`OrtSam2Predictor`, laid out as
    :class:`imseg.sam2.automatic.Sam2AmgBackend` (points and sizes in the L x L low-res frame)."""

    def __init__(self, predictor: OrtSam2Predictor, min_region_area: float = 0.0, max_batch: int = 16) -> None:
        self.predictor = predictor
        self.img_size = predictor.low_res
        self.mask_threshold = predictor.mask_threshold
        self.min_region_area = float(min_region_area)
        self.max_batch = int(max_batch)

    def embed(self, crop: np.ndarray) -> tuple[Any, tuple[int, int]]:
        return self.predictor.embed(crop), (self.img_size, self.img_size)

    def state_for(self, embedding: Embedding) -> Any:
        return embedding.features

    def decode(self, state: Any, coords: np.ndarray) -> _OrtSam2PointBatch:
        import torch

        side = self.img_size
        scale = self.predictor.image_size / side
        iou, low = decode_single_points(self.predictor.run_decoder, state, (side, side),
                                        np.asarray(coords, np.float32) * scale, self.max_batch)
        iou, low = torch.from_numpy(iou[:, 1:].copy()), torch.from_numpy(low[:, 1:].copy())
        if self.min_region_area > 0:
            from ..sam2.transforms import postprocess_masks

            low = postprocess_masks(low, (side, side), self.mask_threshold, self.min_region_area,
                                    self.min_region_area)
        return _OrtSam2PointBatch(iou, low)


class OrtSam2Segmenter(Segmenter):
    """SAM 2.1 on ONNX Runtime as a :class:`~imseg.segmenter.Segmenter` (the rules of ``segment`` live there):
    ``embed`` runs encoder.onnx, ``decode`` decoder.onnx, ``everything`` the automatic generator on both."""

    supports_prompts = True

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, embedding_cache_size: int = 1, **amg_options: Any) -> None:
        self.predictor = OrtSam2Predictor(export_dir, device=device, providers=providers, threads=threads)
        self.name = str(self.predictor.manifest.get("model", "sam2"))
        self.amg_options = amg_options
        self.embedding_cache_size = int(embedding_cache_size)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of one image embedding (image embedding + both high-resolution feature maps, float32)."""
        grid = self.predictor.image_size // 16
        return 16 * 256 * grid * grid

    def worker_copy(self) -> OrtSam2Segmenter:
        clone = copy.copy(self)
        clone.predictor = self.predictor.worker_copy()
        clone.clear_embeddings()
        return clone

    def embed(self, rgb: np.ndarray) -> OrtSam2Embedding:
        size = self.predictor.image_size
        return OrtSam2Embedding(self.predictor.embed(rgb), (int(rgb.shape[0]), int(rgb.shape[1])), (size, size))

    def decode(self, embedding: Embedding, prompts: Prompts, multimask_output: bool) -> Candidates:
        masks, iou, low = self.predictor.decode_prompts(embedding.features, tuple(embedding.original_size),
                                                        prompts.points, prompts.labels, prompts.boxes,
                                                        prompts.mask_input, multimask_output)
        return Candidates(np.asarray(masks, bool), np.asarray(iou, np.float32), np.asarray(low, np.float32))

    def everything(self, rgb: np.ndarray, embedding: Embedding | None = None, **options: Any) -> Masks:
        try:
            from ..sam.automatic import SamAutomaticMaskGenerator
        except ImportError as exc:
            raise DependencyError(
                f"everything mode on ONNX Runtime runs imseg.sam.automatic, which needs torch and torchvision "
                f"({exc}); install them, or use prompt mode (points=/box=)."
            ) from exc
        # SAM 2's generator keeps masks from a predicted IoU of 0.8 (SAM's: 0.88)
        options = {"pred_iou_thresh": 0.8, **self.amg_options, **options}
        if options.pop("use_m2m", False):
            raise ConfigError("use_m2m=True (mask-to-mask refinement) is not implemented; use use_m2m=False.")
        if not options.pop("multimask_output", True):
            raise ConfigError("everything mode on a SAM 2 export uses the three multimask outputs; drop "
                              "multimask_output=False.")
        backend = OrtSam2AmgBackend(self.predictor, float(options.pop("min_mask_region_area", 0) or 0))
        backend.mask_threshold = float(options.pop("mask_threshold", backend.mask_threshold))
        generator = SamAutomaticMaskGenerator(backend, **options)
        if embedding is not None:  # the generator reads the input size in the backend's low-res frame
            side = self.predictor.low_res
            embedding = OrtSam2Embedding(embedding.features, embedding.original_size, (side, side))
        return generator.generate_masks(rgb, embedding=embedding)
