"""SAM on ONNX Runtime: :class:`OrtSamPredictor` (the official ``SamPredictor`` API on the exported
encoder/decoder sessions), :class:`OrtAmgBackend` (everything mode through our automatic generator)
and :class:`OrtSamSegmenter` (the engine behind the one ``Segmenter.segment``).

Prompt mode needs no torch; everything mode runs :mod:`imseg.sam.automatic`, which does.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DependencyError, ExportError, InputError, PromptError, StateError
from ..io import read_image
from ..masks import Masks
from ..prompts import validate_box, validate_points
from ..sam.transforms import SAM_LABELS, ResizeLongestSide, longest_side_shape
from ..segmenter import Candidates, Embedding, Prompts, Segmenter
from .onnx import DECODER_INPUTS, MANIFEST
from .prompt_feeds import box_corners, decode_single_points, decoder_prompt_feeds, join_prompts, padding_point
from .sessions import check_session, io_signature, make_session, read_manifest


class _ModelInfo:
    """What the automatic mask generator reads from ``predictor.model``."""

    def __init__(self, mask_threshold: float, img_size: int) -> None:
        self.mask_threshold = mask_threshold
        self.image_format = "RGB"
        self.device = "cpu"

        class _Encoder:
            pass

        self.image_encoder = _Encoder()
        self.image_encoder.img_size = img_size


class OrtSamPredictor:
    """``SamPredictor`` on ONNX Runtime sessions (encoder + official-interface decoder).

    ``set_image(image)`` embeds an RGB uint8 (H, W, 3) image; ``predict`` takes points (N, 2) XY in
    image pixels, labels (N,), a box XYXY (4,) and/or a low-res mask (1, 256, 256) and returns
    masks (C, H, W) bool, iou predictions (C,) and low-res logits (C, 256, 256).
    """

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, files: dict[str, str] | None = None) -> None:
        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        if self.manifest.get("family") != "sam":
            raise ExportError(f"{export_dir}: not a SAM export (family={self.manifest.get('family')!r}).")
        files = files or self.manifest["files"]
        self.img_size = int(self.manifest.get("img_size", 1024))
        self.raw_input = bool(self.manifest.get("raw_input", False))
        self.single_mask = bool(self.manifest.get("single_mask", False))
        #: exports before this field existed let a resized side round to 0 px (aspect ratios above 2048:1)
        self.min_resized_side = int(self.manifest.get("min_resized_side", 0))
        #: single-mask decoders before this field chose by point count only: a box alone needs a padding point
        self.single_mask_box = bool(self.manifest.get("single_mask_box", False))
        self.encoder = self.open_session(export_dir / files["encoder"], "encoder", device, providers, threads)
        self._check_encoder(export_dir / files["encoder"])
        self.decoder = self.open_session(export_dir / files["decoder"], "decoder", device, providers, threads)
        self._check_decoder(export_dir / files["decoder"])
        norm = self.manifest["normalization"]
        self.pixel_mean = np.asarray(norm["mean"], np.float32)
        self.pixel_std = np.asarray(norm["std"], np.float32)
        self.transform = ResizeLongestSide(self.img_size)
        self.model = _ModelInfo(float(self.manifest.get("mask_threshold", 0.0)), self.img_size)
        self.device = "cpu"  # tensors handed to/returned from predict_torch live on the CPU
        self.reset_image()

    def open_session(self, path: Path, role: str, device: str, providers: list[str] | None, threads: int | None):
        """The inference session of one graph (``role``: "encoder" or "decoder"); engines on other runtimes
        override this and hand back an object with the ONNX Runtime session interface."""
        return make_session(path, device=device, providers=providers, threads=threads)

    def _check_encoder(self, path: Path) -> None:
        image = io_signature(self.encoder)[0].get("image")
        hint = ""
        if image is not None and (image[0] == "tensor(uint8)") != self.raw_input:
            raw = image[0] == "tensor(uint8)"
            hint = (f" The encoder takes {'a raw uint8 (H, W, 3) image' if raw else 'a preprocessed float32 (1, 3, S, S) tensor'}"
                    f", but the manifest says raw_input={str(self.raw_input).lower()}: set \"raw_input\": "
                    f"{str(raw).lower()} in {MANIFEST}, or export again with `imseg export`.")
        if self.raw_input:
            inputs = {"image": ("tensor(uint8)", 3)}
            outputs = {"image_embeddings": ("tensor(float)", 4), "input_size": ("tensor(int64)", 1)}
        else:
            inputs = {"image": ("tensor(float)", 4)}
            outputs = {"image_embeddings": ("tensor(float)", 4)}
        check_session(self.encoder, path, "SAM image encoder", inputs, outputs, hint)
        if not self.raw_input:
            dims = image[1]
            if all(isinstance(d, int) for d in dims[1:]) and dims[1:] != [3, self.img_size, self.img_size]:
                raise ExportError(
                    f"{path}: the encoder takes images of shape {dims}, but {MANIFEST} says img_size={self.img_size} "
                    f"(expected [1, 3, {self.img_size}, {self.img_size}]); fix img_size or export again."
                )

    def _check_decoder(self, path: Path) -> None:
        ranks = {"image_embeddings": 4, "point_coords": 3, "point_labels": 2, "mask_input": 4, "has_mask_input": 1,
                 "orig_im_size": 1}
        check_session(self.decoder, path, "SAM prompt decoder", {n: ("tensor(float)", ranks[n]) for n in DECODER_INPUTS},
                      {"masks": ("tensor(float)", 4), "iou_predictions": ("tensor(float)", 2),
                       "low_res_masks": ("tensor(float)", 4)})
        count = io_signature(self.decoder)[1]["iou_predictions"][1][1]
        if isinstance(count, int) and count != (1 if self.single_mask else 4):
            raise ExportError(
                f"{path}: the decoder returns {count} mask(s) per prompt, but {MANIFEST} says "
                f"single_mask={str(self.single_mask).lower()}: set \"single_mask\": {str(count == 1).lower()} there, "
                f"or export again."
            )

    def worker_copy(self) -> OrtSamPredictor:
        """A predictor that shares this one's ONNX Runtime sessions (thread-safe) but has its own
        image state: one per server worker or thread."""
        clone = copy.copy(self)
        clone.reset_image()
        return clone

    # ---------------------------------------------------------------- image
    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> (1, 3, S, S) float32: resize, normalise, zero-pad."""
        resized = self.transform.apply_image(image)
        x = (resized.astype(np.float32) - self.pixel_mean) / self.pixel_std
        padded = np.zeros((self.img_size, self.img_size, 3), np.float32)
        padded[: x.shape[0], : x.shape[1]] = x
        return np.ascontiguousarray(padded.transpose(2, 0, 1)[None])

    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Compute the image embedding (1, 256, 64, 64) of an RGB image (any ``read_image`` source)."""
        image = read_image(image)
        if image_format.upper() == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        elif image_format.upper() != "RGB":
            raise ConfigError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        self.features, self.input_size = self.embed(image)
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.is_image_set = True

    def embed(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(1, 256, 64, 64) float32 embedding of an RGB uint8 (H, W, 3) image and its resized size (h, w).

        Stateless: the image set with :meth:`set_image` is left as it is.
        """
        image = np.ascontiguousarray(image)
        h, w = int(image.shape[0]), int(image.shape[1])
        if self.min_resized_side < 1 and min(h, w) * self.img_size / max(h, w) < 0.5:
            raise InputError(
                f"the {w}x{h} image would be resized to 0 pixels on its short side by this export's graphs "
                f"(made before imseg clamped that side to 1 px); export the model again with this imseg version "
                f"(`imseg export`), or pad/crop the image to an aspect ratio below 2048:1."
            )
        size = longest_side_shape(h, w, self.img_size)
        feed = image if self.raw_input else self.preprocess(image)
        return self.encoder.run(["image_embeddings"], {"image": feed})[0], size

    def get_image_embedding(self) -> np.ndarray:
        if not self.is_image_set:
            raise StateError("no image set: call set_image(image) before get_image_embedding().")
        return self.features

    # ---------------------------------------------------------------- decoding
    def decode(self, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None):
        """Run the decoder. coords (B, N, 2) in the resized frame, labels (B, N) -> masks logits
        (B, M, H, W), iou (B, M), low-res logits (B, M, 256, 256); M = 4 (or 1 for single-mask exports)."""
        if not self.is_image_set:
            raise StateError("no image set: call set_image(image) before predict().")
        return self.run_decoder(self.features, self.original_size, coords, labels, mask_input)

    def run_decoder(self, features: np.ndarray, original_size: tuple[int, int], coords: np.ndarray,
                    labels: np.ndarray, mask_input: np.ndarray | None = None, outputs: list[str] | None = None):
        """One decoder run on ``features`` (1, 256, 64, 64) of an image of ``original_size`` (H, W):
        coords (B, N, 2) in the resized frame, labels (B, N) -> the ``outputs`` (default all three)."""
        feeds = {"image_embeddings": features,
                 **decoder_prompt_feeds(coords, labels, mask_input, original_size, self.img_size // 4)}
        return self.decoder.run(outputs, feeds)

    def _prompt_arrays(self, coords, labels, boxes):
        """Append box corners (labels 2, 3) or the padding point (label -1), as the official encoder does.

        Single-mask decoders exported before ``single_mask_box`` pick their output by the number of
        points only (one point plus padding: the best multimask candidate; more: the single-mask
        token), so a box alone (2 corners) would get a multimask candidate: there it gets a padding
        point too, which selects the single-mask answer (close to, not bit-equal with, torch's)."""
        batch = coords.shape[0] if coords is not None else boxes.shape[0]
        parts = []
        if coords is not None:
            parts.append((coords, labels))
        if boxes is not None:
            parts.append(box_corners(boxes, batch))
        box_only = boxes is not None and (coords is None or coords.shape[1] == 0)
        if boxes is None or (box_only and self.single_mask and not self.single_mask_box):
            parts.append(padding_point(batch))
        return join_prompts(parts)

    def _select(self, masks, iou, low_res, multimask_output: bool):
        if self.single_mask:
            return masks, iou, low_res
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl], low_res[:, sl]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """Official ``SamPredictor.predict`` semantics on ONNX Runtime (see class docstring)."""
        if not self.is_image_set:
            raise StateError("no image set: call set_image(image) before predict().")
        pts = labs = boxes = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels must be given with point_coords (1 = foreground, 0 = background).")
            pts, labs = validate_points(point_coords, point_labels, self.original_size, SAM_LABELS)
        if box is not None:
            boxes = np.asarray(validate_box(box, self.original_size), np.float32).reshape(1, 4)
        masks, iou, low_res = self.decode_prompts(self.features, self.original_size, pts, labs, boxes, mask_input,
                                                  multimask_output, return_logits)
        return masks[0], iou[0], low_res[0]

    def decode_prompts(self, features: np.ndarray, original_size: tuple[int, int], points: np.ndarray | None,
                       labels: np.ndarray | None, boxes: np.ndarray | None, mask_input: np.ndarray | None,
                       multimask_output: bool, return_logits: bool = False):
        """Checked prompts in original-image pixels -> masks (B, C, H, W), iou (B, C), low-res (B, C, 256, 256).

        One prompt set (points (N, 2) + labels (N,), at most one box (1, 4), mask_input (1, 256, 256)), or
        B boxes (B, 4) alone; C = 3 with ``multimask_output``, else 1 (always 1 for single-mask exports)."""
        coords = labs = bx = None
        if points is not None:
            coords = self.transform.apply_coords(points, original_size)[None].astype(np.float32)
            labs = np.asarray(labels, np.float32)[None]
        if boxes is not None:
            bx = self.transform.apply_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), original_size)
            bx = bx.astype(np.float32)
        if coords is None and bx is None and mask_input is None:
            raise PromptError("predict needs at least one prompt: points, a box or a mask_input.")
        if coords is None and bx is None:
            coords, labs = np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.float32)
        if mask_input is not None:
            low = self.img_size // 4
            mask_input = np.asarray(mask_input, np.float32)
            if mask_input.shape != (1, low, low):
                raise PromptError(f"mask_input must have shape (1, {low}, {low}) (low-res logits, e.g. a previous "
                                  f"low_res output [best][None]); got {mask_input.shape}.")
        coords, labs = self._prompt_arrays(coords, labs, bx)
        masks, iou, low_res = self._select(*self.run_decoder(features, original_size, coords, labs, mask_input),
                                           multimask_output)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        """Batched prompts as torch tensors in the resized frame (official ``predict_torch``):
        coords (B, N, 2), labels (B, N), boxes (B, 4) -> masks (B, C, H, W), iou (B, C), low-res (B, C, 256, 256)."""
        import torch

        def np_or_none(t):
            return None if t is None else t.detach().cpu().numpy().astype(np.float32)

        coords, labels, bx = np_or_none(point_coords), np_or_none(point_labels), np_or_none(boxes)
        coords, labels = self._prompt_arrays(coords, labels, bx)
        masks, iou, low_res = self._select(*self.decode(coords, labels, np_or_none(mask_input)), multimask_output)
        masks_t = torch.from_numpy(masks)
        if not return_logits:
            masks_t = masks_t > self.model.mask_threshold
        return masks_t, torch.from_numpy(iou), torch.from_numpy(low_res)


class _OrtPointBatch:
    """Decoder outputs of a batch of single-point prompts (multimask outputs 1..3), as torch tensors."""

    def __init__(self, iou: np.ndarray, low_res: np.ndarray) -> None:
        import torch

        self.iou = torch.from_numpy(np.ascontiguousarray(iou[:, 1:]))  # (B, 3)
        self._low = torch.from_numpy(np.ascontiguousarray(low_res[:, 1:]))  # (B, 3, 256, 256)

    def low_res(self, ids):
        return self._low[ids]


class OrtAmgBackend:
    """:class:`imseg.sam.automatic.AmgBackend` on the exported sessions of an :class:`OrtSamPredictor`.

    ``embed(crop)`` runs encoder.onnx; ``decode(features_and_size, coords)`` runs decoder.onnx on
    (B, 2) points in the resized crop frame (one foreground point per prompt plus the official
    padding point) and returns the IoU (B, 3) and low-res logits (B, 3, 256, 256). The exported
    decoder repeats the image embedding per prompt, so prompts go through it ``max_batch`` at a time
    (peak memory ~50 MB per prompt; 16 is also a little faster than 64 on CPU).
    """

    def __init__(self, predictor: OrtSamPredictor, max_batch: int = 16) -> None:
        if predictor.single_mask:
            raise ConfigError(
                "everything mode needs the decoder's three multimask outputs, but this export was made with "
                "--single-mask; export again without it (imseg export --model NAME --checkpoint P --out DIR)."
            )
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}.")
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self.img_size = predictor.img_size
        self.mask_threshold = float(predictor.model.mask_threshold)

    def embed(self, crop: np.ndarray) -> tuple[tuple[np.ndarray, tuple[int, int]], tuple[int, int]]:
        features, input_size = self.predictor.embed(crop)
        return (features, (int(crop.shape[0]), int(crop.shape[1]))), input_size

    def state_for(self, embedding: Embedding) -> tuple[np.ndarray, tuple[int, int]]:
        """The per-crop state of a whole-image :class:`~imseg.segmenter.Embedding` computed elsewhere."""
        return embedding.features, tuple(embedding.original_size)

    def decode(self, state: tuple[np.ndarray, tuple[int, int]], coords: np.ndarray) -> _OrtPointBatch:
        features, crop_size = state
        return _OrtPointBatch(*decode_single_points(self.predictor.run_decoder, features, crop_size, coords,
                                                    self.max_batch))


class OrtSamSegmenter(Segmenter):
    """SAM on ONNX Runtime as a :class:`~imseg.segmenter.Segmenter` (the rules of ``segment`` live there):
    ``embed`` runs encoder.onnx, ``decode`` decoder.onnx, ``everything`` the automatic generator on both."""

    supports_prompts = True

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, embedding_cache_size: int = 1, files: dict[str, str] | None = None,
                 predictor: OrtSamPredictor | None = None, **amg_options: Any) -> None:
        self.predictor = predictor or OrtSamPredictor(export_dir, device=device, providers=providers, threads=threads,
                                                      files=files)
        self.name = str(self.predictor.manifest.get("model", "sam"))
        self.amg_options = amg_options
        self.embedding_cache_size = int(embedding_cache_size)

    def worker_copy(self) -> OrtSamSegmenter:
        """A segmenter sharing this one's sessions with its own predictor state and embedding cache."""
        clone = copy.copy(self)
        clone.predictor = self.predictor.worker_copy()
        clone.clear_embeddings()
        return clone

    def embed(self, rgb: np.ndarray) -> Embedding:
        features, input_size = self.predictor.embed(rgb)
        return Embedding(features, (int(rgb.shape[0]), int(rgb.shape[1])), input_size)

    def decode(self, embedding: Embedding, prompts: Prompts, multimask_output: bool) -> Candidates:
        masks, iou, low = self.predictor.decode_prompts(embedding.features, embedding.original_size, prompts.points,
                                                        prompts.labels, prompts.boxes, prompts.mask_input,
                                                        multimask_output)
        return Candidates(np.asarray(masks, bool), np.asarray(iou, np.float32), np.asarray(low, np.float32))

    def everything(self, rgb: np.ndarray, embedding: Embedding | None = None, **options: Any) -> Masks:
        return self.automatic_generator(**options).generate_masks(rgb, embedding=embedding)

    def automatic_generator(self, **options: Any):
        """Our :class:`~imseg.sam.automatic.SamAutomaticMaskGenerator` on this export's sessions;
        ``options`` (points_per_side, thresholds, ...) override those given at load time."""
        try:
            from ..sam.automatic import SamAutomaticMaskGenerator
        except ImportError as exc:
            raise DependencyError(
                f"everything mode on ONNX Runtime runs imseg.sam.automatic, which needs torch and torchvision "
                f"({exc}); install them, or use prompt mode (points=/box=)."
            ) from exc
        return SamAutomaticMaskGenerator(OrtAmgBackend(self.predictor), **{**self.amg_options, **options})


