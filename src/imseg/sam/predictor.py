"""``SamPredictor``: encode an image once, then predict masks for many prompts.

Same API, return shapes and dtypes as the official ``segment_anything.SamPredictor``, plus
:meth:`SamPredictor.predict_batch` (many prompt sets in one decoder call) and input validation
with :mod:`imseg.errors` exceptions instead of asserts.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError, PromptError, StateError
from ..io import read_image
from ..precision import to_bf16
from ..prompts import prompt_array, validate_box, validate_points
from .batch_decoder import PromptBatchDecoder
from .common import plain_modules, weights_key
from .model import Sam
from .transforms import SAM_LABELS, ResizeLongestSide

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": None, "fp32": None}


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        dtype = _DTYPES[dtype.lower()]
    if dtype in (None, torch.float32):
        return None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ConfigError(f"dtype must be bfloat16, float16 or float32, got {dtype}.")
    return dtype


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``device``: None means exact fp32. Autocast only on CUDA (on CPU, bfloat16 runs
    the encoder with bfloat16 weights instead: :func:`encoder_dtype`)."""
    dtype = _check_dtype(dtype)
    if dtype is None:
        return None
    if device.type != "cuda":
        if not (device.type == "cpu" and dtype == torch.bfloat16):
            warnings.warn(f"dtype={dtype} ignored on {device.type}: SAM runs in exact float32 there.", stacklevel=3)
        return None
    return dtype


def encoder_dtype(dtype: Any, device: torch.device) -> torch.dtype | None:
    """bfloat16 when ``dtype`` asks for it on CPU: the image encoder then runs on a bfloat16 copy of its
    weights in its fast eager path (autocast would cast every weight per call and disable that path)."""
    dtype = _check_dtype(dtype)
    return dtype if device.type == "cpu" and dtype == torch.bfloat16 else None


class SamPredictor:
    """Holds one image's embedding and predicts masks from prompts.

    Args:
        sam_model: a :class:`~imseg.sam.model.Sam`.
        dtype: ``None`` (fp32) or ``"bfloat16"``/``"float16"``: the image encoder under autocast on CUDA; on
            CPU ``"bfloat16"`` runs the encoder on a bfloat16 copy of its weights (float16 is ignored there).
            Prompts are encoded and masks decoded in float32 from the float32 embedding; they cost little.
        decoder_batch: prompts per decoder call in :meth:`predict_batch` with ``mask_input`` (bounds memory;
            sparse-only prompts are decoded by :class:`~imseg.sam.batch_decoder.PromptBatchDecoder`, one at a
            time on CPU, 64 at a time on other devices).
    """

    def __init__(self, sam_model: Sam, dtype: Any = None, decoder_batch: int = 16) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.autocast_dtype = resolve_dtype(dtype, torch.device(sam_model.device))
        self.encoder_dtype = encoder_dtype(dtype, torch.device(sam_model.device))
        self._low_encoder: tuple[tuple, torch.nn.Module] | None = None  # (weights key, bfloat16 copy)
        self.decoder_batch = int(decoder_batch)
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None  # (weights key, dense positional encoding)
        self._decoder: tuple[tuple, PromptBatchDecoder] | None = None  # ((features, weights key), decoder)
        self.reset_image()

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self._decoder = None  # the batch decoder holds image-side tensors of the old embedding
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.autocast_dtype)

    def _weights_dtype(self, module: torch.nn.Module | None = None) -> torch.dtype:
        """The parameter dtype of ``module`` (default: the mask decoder): float32, or half precision for a
        model cast with ``.to(dtype)`` (the embedding is handed out as float32 either way and cast back for
        the decoder)."""
        return next((module or self.model.mask_decoder).parameters()).dtype

    def _image_encoder(self) -> torch.nn.Module:
        """The model's image encoder, or (``encoder_dtype``) its bfloat16 copy, made again when the model's
        encoder weights change; the caller's model is never cast."""
        encoder = self.model.image_encoder
        if self.encoder_dtype is None or self._weights_dtype(encoder) == self.encoder_dtype:
            return encoder
        key = weights_key(encoder)
        if self._low_encoder is None or self._low_encoder[0] != key:
            self._low_encoder = None  # drop the old copy before making the new one
            self._low_encoder = (key, to_bf16(copy.deepcopy(encoder)).eval())
        return self._low_encoder[1]

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise StateError("no image is set: call predictor.set_image(image) before predicting masks.")

    # ------------------------------------------------------------------ image
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Compute the embedding of ``image``: (H, W, 3) uint8 array in ``image_format`` ("RGB" or
        "BGR"); other arrays, paths or PIL images are read with :func:`imseg.read_image` (RGB)."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}.")
        is_plain = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        if is_plain:
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise InputError(f"image of shape {image.shape} has no pixels.")
            if image_format != self.model.image_format:
                image = image[..., ::-1]
        else:
            in_memory = isinstance(image, np.ndarray) or hasattr(image, "detach")  # arrays keep their channel order
            image = read_image(image)  # uint8 (H, W, 3): gray/RGBA/16-bit/float handled
            if in_memory and image_format != self.model.image_format:
                image = image[..., ::-1]
        input_image = np.array(self.transform.apply_image(np.ascontiguousarray(image)))  # writable copy
        tensor = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()  # as the official: outputs are ordinary tensors (autograd-usable, editable in place)
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed a (1, 3, h, w) tensor already resized so max(h, w) == img_size; ``original_image_size``
        is (H, W) of the image before resizing."""
        size = self.model.image_encoder.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != size:
            raise InputError(f"set_torch_image expects (B, 3, h, w) with max(h, w) == {size}; got {shape}. "
                             f"Use predictor.transform.apply_image first, or call set_image.")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(shape[2]), int(shape[3]))
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        encoder = self._image_encoder()
        x = x.to(self._weights_dtype(encoder))
        with self._autocast():
            features = encoder(x)
        self.features = features.float().contiguous()
        self.is_image_set = True

    def use_embedding(self, features: torch.Tensor, original_size: tuple[int, int],
                      input_size: tuple[int, int]) -> None:
        """Make ``features`` (1, 256, 64, 64) of an ``original_size`` (H, W) image, resized to ``input_size``
        (h, w), the current image, as after ``set_image`` (nothing is encoded)."""
        if self.is_image_set and self.features is features:
            return
        self.reset_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size
        self.features = features
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """(1, 256, 64, 64) embedding of the current image."""
        self._require_image()
        assert self.features is not None
        return self.features

    # ------------------------------------------------------------------ prompts
    def _batch_decoder(self) -> PromptBatchDecoder:
        """The re-associated decoder for the current embedding (built once per image)."""
        assert self.features is not None
        key = (self.features, weights_key(self.model.mask_decoder, self.model.prompt_encoder))
        if self._decoder is None or self._decoder[0][0] is not key[0] or self._decoder[0][1] != key[1]:
            embedding = self.features.to(self._weights_dtype())
            decoder = PromptBatchDecoder(self.model, embedding, cpu_layout=self._uses_cpu_layout())
            self._decoder = (key, decoder)  # rebuilt for a new image or changed decoder weights
        return self._decoder[1]

    def _uses_cpu_layout(self) -> bool:
        """Sparse prompts split across single-threaded workers, one per decoder pass, postprocessed one at a
        time (CPU); or every prompt of a call in each pass and each postprocessing op (accelerators). By the
        embedding's device (tests patch it to check the accelerator layout's answers on CPU)."""
        assert self.features is not None
        return self.features.device.type == "cpu"

    def _dense_positional(self) -> torch.Tensor:
        key = weights_key(self.model.prompt_encoder)
        if self._dense_pe is None or self._dense_pe[0] != key:
            self._dense_pe = (key, self.model.prompt_encoder.get_dense_pe())  # device/dtype moves change the key
        return self._dense_pe[1]

    def _check_mask_input(self, mask_input: Any, batch: int | None) -> np.ndarray:
        arr = np.asarray(mask_input, dtype=np.float32)
        low = self.model.prompt_encoder.mask_input_size
        want = (1, *low) if batch is None else (batch, 1, *low)
        if arr.shape != want:
            raise PromptError(f"mask_input must have shape {want} (low-res logits, e.g. a previous low_res output "
                              f"{'[best][None]' if batch is None else ''}); got {arr.shape}.")
        return arr

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set on the current image.

        Args:
            point_coords: (N, 2) XY pixels of the original image; point_labels: (N,) 1 fg / 0 bg.
            box: (4,) XYXY pixels. mask_input: (1, 256, 256) low-res logits from a previous call.
        Returns:
            masks (C, H, W) bool (float32 logits with ``return_logits``), iou (C,) float32,
            low_res (C, 256, 256) float32; C = 3 with ``multimask_output`` else 1.
        """
        self._require_image()
        if point_coords is not None and point_labels is None:
            raise PromptError("point_labels must be given with point_coords (1 = foreground, 0 = background).")
        coords, labels = validate_points(point_coords, point_labels, self.original_size, SAM_LABELS)
        boxes = validate_box(box, self.original_size)
        if boxes is not None and boxes.ndim == 2:
            if len(boxes) != 1:
                raise PromptError(f"predict takes one box; got {len(boxes)}. Use predict_batch for several boxes.")
            boxes = boxes[0]
        coords_t = labels_t = box_t = mask_t = None
        if coords is not None:
            coords_t = torch.as_tensor(self.transform.apply_coords(coords, self.original_size),
                                       dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if boxes is not None:
            box_t = torch.as_tensor(self.transform.apply_boxes(boxes, self.original_size),
                                    dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_t = torch.as_tensor(self._check_mask_input(mask_input, None), device=self.device)[None]
        masks, iou, low_res = self.predict_torch(coords_t, labels_t, box_t, mask_t, multimask_output, return_logits)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the model frame (see ``predictor.transform``):
        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256).
        Returns masks (B, C, H, W) bool (or logits), iou (B, C), low_res (B, C, 256, 256)."""
        self._require_image()
        if point_coords is not None and point_labels is None:
            raise PromptError("point_labels must be given with point_coords.")
        if point_coords is not None and (point_coords.ndim != 3 or point_coords.shape[-1] != 2
                                         or tuple(point_labels.shape) != tuple(point_coords.shape[:2])):
            raise PromptError(f"point_coords must be (B, N, 2) and point_labels (B, N); got "
                              f"{tuple(point_coords.shape)} and {tuple(point_labels.shape)}.")
        if boxes is not None and (boxes.ndim != 2 or boxes.shape[-1] != 4):
            raise PromptError(f"boxes must be (B, 4) XYXY; got {tuple(boxes.shape)}.")
        points = (point_coords, point_labels) if point_coords is not None else None
        # no autocast here: the embedding is float32, and the decoder's in-place products need one dtype
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        # the re-associated decoder reads the decoder's weights directly: only for unwrapped, hook-free modules
        sparse_only = mask_input is None and self.features.shape[0] == 1 and plain_modules(self.model.mask_decoder)
        if sparse_only and self._uses_cpu_layout():
            return self._decode_on_cpu(sparse, multimask_output, return_logits)
        if sparse_only:  # the same decoder function, image tokens never projected per prompt
            low_res, iou = self._batch_decoder()(sparse, multimask_output)
        else:  # mask prompts change the image tokens per prompt: the official decoder layout
            low_res, iou = self.model.mask_decoder(
                image_embeddings=self.features.to(self._weights_dtype()),
                image_pe=self._dense_positional(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        low_res, iou = low_res.float(), iou.float()
        return self._postprocess(low_res, return_logits), iou, low_res

    def _decode_on_cpu(self, sparse: torch.Tensor, multimask_output: bool,
                       return_logits: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse prompts on CPU: decode and postprocess prompt by prompt, the prompts split across
        single-threaded workers (one per torch thread) instead of every small op split across threads:
        no thread barrier per op, and each core keeps its own prompt's tensors in its cache. torch's thread
        count is process-wide: it is 1 while the workers run (other threads of the caller's that use torch
        meanwhile run single-threaded) and is restored afterwards."""
        assert self.original_size is not None and self.input_size is not None
        decoder = self._batch_decoder()
        b = sparse.shape[0]
        m = self.model.mask_decoder.num_mask_tokens - 1 if multimask_output else 1
        h, w = decoder.grid
        low = torch.empty(b, m, 4 * h, 4 * w)
        iou = torch.empty(b, m)
        masks = self._mask_buffer(b, m, return_logits)
        sparse = sparse.float()

        def run(sl: slice) -> None:
            _, iou[sl] = decoder(sparse[sl], multimask_output, out=low[sl])
            self._postprocess_into(low, masks, range(sl.start, sl.stop), return_logits)

        threads = torch.get_num_threads()
        workers = min(threads, b)
        if workers <= 1:
            run(slice(0, b))
            return masks, iou, low
        bounds = [b * k // workers for k in range(workers + 1)]
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def work(k: int) -> None:  # grad/inference mode are per thread: carry the caller's
            torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                run(slice(bounds[k], bounds[k + 1]))

        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="imseg-sam-decoder") as pool:
                list(pool.map(work, range(workers)))
        finally:
            torch.set_num_threads(threads)
        return masks, iou, low

    def _postprocess(self, low_res: torch.Tensor, return_logits: bool) -> torch.Tensor:
        """(B, M, 256, 256) logits -> (B, M, H, W) at the original size, thresholded unless ``return_logits``.

        On CPU one prompt at a time, so each full-size intermediate stays in cache (the whole batch's
        float logits would be B*M*H*W*4 bytes of memory traffic, twice)."""
        assert self.input_size is not None and self.original_size is not None
        if not self._uses_cpu_layout() or low_res.shape[0] <= 1:
            masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
            return masks if return_logits else masks > self.model.mask_threshold
        out = self._mask_buffer(*low_res.shape[:2], return_logits)
        self._postprocess_into(low_res, out, range(low_res.shape[0]), return_logits)
        return out

    def _mask_buffer(self, b: int, m: int, return_logits: bool) -> torch.Tensor:
        assert self.original_size is not None
        return torch.empty((b, m, *self.original_size), dtype=torch.float32 if return_logits else torch.bool)

    def _postprocess_into(self, low_res: torch.Tensor, out: torch.Tensor, prompts: range, return_logits: bool) -> None:
        """``out[i]`` = prompt i's masks at the original size (logits, or thresholded), one prompt at a time."""
        for i in prompts:
            full = self.model.postprocess_masks(low_res[i], self.input_size, self.original_size)
            if return_logits:
                out[i] = full
            else:
                torch.gt(full, self.model.mask_threshold, out=out[i])

    def predict_batch(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many prompt sets on the current image in batched decoder calls (no re-encoding).

        Args:
            point_coords: (B, N, 2) XY pixels (original image) and point_labels (B, N), or None.
            boxes: (B, 4) XYXY pixels, or None. mask_input: (B, 1, 256, 256) or None.
        Returns:
            masks (B, C, H, W) bool (or float32 logits), iou (B, C) float32, low_res (B, C, 256, 256).
        """
        self._require_image()
        assert self.original_size is not None
        batch = None
        coords_t = labels_t = boxes_t = mask_t = None
        if point_coords is not None:
            pc = prompt_array(point_coords, "point_coords")
            if pc.ndim != 3 or pc.shape[-1] != 2:
                raise PromptError(f"point_coords must be (B, N, 2); got shape {pc.shape}.")
            if point_labels is None:
                raise PromptError("point_labels (B, N) must be given with point_coords.")
            pl = np.asarray(point_labels)
            if pl.shape != pc.shape[:2]:
                raise PromptError(f"point_labels must be (B, N) = {pc.shape[:2]}; got {pl.shape}.")
            _, flat_labels = validate_points(pc.reshape(-1, 2), pl.reshape(-1), self.original_size, SAM_LABELS)
            batch = len(pc)
            coords_t = torch.as_tensor(self.transform.apply_coords(pc, self.original_size), dtype=torch.float,
                                       device=self.device)
            labels_t = torch.as_tensor(flat_labels.reshape(pl.shape), dtype=torch.int, device=self.device)
        if boxes is not None:
            bx = prompt_array(boxes, "boxes")
            if bx.size % 4:
                raise PromptError(f"boxes must be (B, 4) XYXY pixels; got shape {bx.shape}.")
            bx = validate_box(bx.reshape(-1, 4), self.original_size)
            if batch is not None and len(bx) != batch:
                raise PromptError(f"{len(bx)} boxes for {batch} point sets; give one box per prompt set.")
            batch = len(bx)
            boxes_t = torch.as_tensor(self.transform.apply_boxes(bx, self.original_size), dtype=torch.float,
                                      device=self.device)
        if mask_input is not None:
            if batch is None:
                batch = len(np.asarray(mask_input))
            mask_t = torch.as_tensor(self._check_mask_input(mask_input, batch), device=self.device)
        if batch is None:
            raise PromptError("predict_batch needs point_coords, boxes or mask_input.")
        if batch == 0:
            h, w = self.original_size
            c = 3 if multimask_output else 1
            low = self.model.prompt_encoder.mask_input_size
            return (np.zeros((0, c, h, w), np.float32 if return_logits else bool), np.zeros((0, c), np.float32),
                    np.zeros((0, c, *low), np.float32))
        outs = []
        # sparse prompts: the batch decoder bounds its own memory (it decodes a few prompts at a time)
        step = batch if mask_t is None else max(1, self.decoder_batch)
        for s in range(0, batch, step):
            sl = slice(s, s + step)
            outs.append(self.predict_torch(
                coords_t[sl] if coords_t is not None else None,
                labels_t[sl] if labels_t is not None else None,
                boxes_t[sl] if boxes_t is not None else None,
                mask_t[sl] if mask_t is not None else None,
                multimask_output, return_logits,
            ))
        masks, iou, low = (torch.cat([o[i] for o in outs]) if len(outs) > 1 else outs[0][i] for i in range(3))
        masks, iou, low = masks.cpu().numpy(), iou.cpu().numpy(), low.cpu().numpy()
        return masks, iou, low
