"""ONNX Runtime backend: run exported models with the same ``segment()`` API and ``Masks`` output.

``load_exported(dir)`` reads ``imseg_export.json`` and returns :class:`OrtSamSegmenter` or
:class:`OrtSemanticSegmenter`; ``load_registry_model(spec, checkpoint=...)`` exports a registry
model into the cache once and loads that. :class:`OrtSamPredictor` mirrors the official
``SamPredictor`` (``set_image``, ``predict``, ``predict_torch``, ``transform``, ``original_size``).
Everything mode runs our :class:`imseg.sam.automatic.SamAutomaticMaskGenerator` on the same
sessions through :class:`OrtAmgBackend` (its ``AmgBackend`` seam: embed a crop, decode point batches).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CheckpointError,
    ConfigError,
    DependencyError,
    ExportError,
    InputError,
    ModelNotFoundError,
    PromptError,
    StateError,
    require,
)
from ..io import ResizeLongestSide, letterbox_rgb, longest_side_shape, read_image
from ..masks import Masks
from ..prompts import validate_box, validate_points
from ..registry import Segmenter
from .onnx import DECODER_INPUTS, MANIFEST

PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# ============================================================================ sessions
def onnxruntime():
    """Import onnxruntime or raise :class:`DependencyError` naming ``pip install 'imseg[export]'``."""
    return require("onnxruntime", "export", "The ONNX Runtime backend")


def select_providers(device: str = "auto", providers: list[str] | None = None) -> list[str]:
    """Execution providers for ``device`` ("auto" | "cpu" | "cuda" | "tensorrt"), best first.

    ``auto`` takes TensorRT, then CUDA, when onnxruntime reports them, and always ends with CPU.
    Explicit ``providers`` win; unknown or unavailable ones raise :class:`ConfigError`.
    """
    ort = onnxruntime()
    available = ort.get_available_providers()
    if providers is not None:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ConfigError(f"ONNX Runtime providers {missing} are not available here; available: {available}.")
        return list(providers)
    device = (device or "auto").lower().split(":")[0]
    if device == "auto":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    if device not in PROVIDER_ALIASES:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'tensorrt' for the onnxruntime backend; got {device!r}.")
    chosen = PROVIDER_ALIASES[device]
    if chosen[0] not in available:
        raise ConfigError(
            f"device {device!r} needs {chosen[0]}, which this onnxruntime build lacks (available: {available}). "
            f"Install onnxruntime-gpu for CUDA/TensorRT, or use device='cpu'."
        )
    return [p for p in chosen if p in available]


def make_session(path: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` with the chosen providers and intra-op threads."""
    ort = onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found; export the model again with `imseg export`.")
    options = ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=select_providers(device, providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: ONNX Runtime could not load the model ({exc}). Re-export it.") from exc


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The ``imseg_export.json`` of an export directory, checked (:func:`check_manifest`)."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise ModelNotFoundError(
            f"{path}: no {MANIFEST} found, so this is not an imseg export directory. "
            f"Create one with `imseg export --model NAME --checkpoint P --out DIR` or `imseg export --run RUN`."
        )
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{file}: unreadable export manifest ({exc}); export again.") from exc
    check_manifest(manifest, file)
    return manifest


#: files each model family lists in its manifest
MANIFEST_FILES = {"sam": ("encoder", "decoder"), "semantic": ("model",)}


def check_manifest(manifest: Any, file: str | os.PathLike = MANIFEST) -> None:
    """Raise :class:`ExportError` naming ``file`` and the fix unless ``manifest`` has the keys the
    ONNX Runtime backend reads: ``format``, ``family``, ``files`` (per family), ``normalization``
    (``mean``/``std``, 3 numbers each) and, for semantic models, ``class_names``."""
    fix = "export the model again with `imseg export` (or restore the manifest it wrote)"

    def bad(what: str) -> ExportError:
        return ExportError(f"{file}: {what}; {fix}.")

    if not isinstance(manifest, dict):
        raise bad(f"the export manifest must be a JSON object, got a JSON {type(manifest).__name__}")
    family = manifest.get("family")
    if family not in MANIFEST_FILES:
        raise bad(f"unknown model family {family!r} (expected 'sam' or 'semantic')")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("the manifest has no 'files' object naming the .onnx files")
    wanted = MANIFEST_FILES[family]
    missing = [role for role in wanted if not isinstance(files.get(role), str) or not files.get(role)]
    if missing:
        others = {f: r for f, r in MANIFEST_FILES.items() if f != family and all(k in files for k in r)}
        hint = f" (the files {sorted(files)} are those of a {next(iter(others))!r} export: is 'family' wrong?)" if others else ""
        raise bad(f"family {family!r} needs files {list(wanted)}, but 'files' lists {sorted(files)}{hint}")
    for role, name in files.items():
        if isinstance(name, str) and (Path(name).is_absolute() or ".." in Path(name).parts):
            raise bad(f"files.{role} = {name!r} must be a file name inside the export directory")
    norm = manifest.get("normalization")
    if not isinstance(norm, dict):
        raise bad("the manifest has no 'normalization' object (mean, std)")
    for key in ("mean", "std"):
        value = norm.get(key)
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad(f"normalization.{key} must be 3 numbers (R, G, B), got {value!r}")
    if any(v == 0 for v in norm["std"]):
        raise bad(f"normalization.std must not contain 0, got {norm['std']!r}")
    if family == "semantic":
        names = manifest.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise bad(f"class_names must be a non-empty list of strings, got {names!r}")


def _io_signature(session) -> tuple[dict[str, tuple[str, list]], dict[str, tuple[str, list]]]:
    """({input name: (type, shape)}, {output name: (type, shape)}) of an ONNX Runtime session."""
    return ({i.name: (i.type, list(i.shape)) for i in session.get_inputs()},
            {o.name: (o.type, list(o.shape)) for o in session.get_outputs()})


def check_session(session, path: str | os.PathLike, role: str, inputs: dict[str, tuple[str, int]],
                  outputs: dict[str, tuple[str, int]], hint: str = "") -> None:
    """Raise :class:`ExportError` unless ``session`` has exactly the ``inputs`` and at least the
    ``outputs`` given as ``{name: (onnx type, rank)}``: the file at ``path`` is not the ``role`` model."""
    have_in, have_out = _io_signature(session)

    def describe(sig: dict[str, tuple[str, list]]) -> str:
        return ", ".join(f"{n} {t.replace('tensor(', '').rstrip(')')}{s}" for n, (t, s) in sig.items()) or "none"

    def wrong(what: str) -> ExportError:
        fix = hint or " Point the manifest's 'files' at the right file, or export again with `imseg export`."
        return ExportError(
            f"{path}: this is not the {role} model this export's {MANIFEST} describes ({what}; the file has inputs "
            f"[{describe(have_in)}] and outputs [{describe(have_out)}]).{fix}"
        )

    if set(have_in) != set(inputs):
        raise wrong(f"expected inputs {sorted(inputs)}")
    missing = [name for name in outputs if name not in have_out]
    if missing:
        raise wrong(f"expected outputs {sorted(outputs)}")
    for kind, want, have in (("input", inputs, have_in), ("output", outputs, have_out)):
        for name, (dtype, rank) in want.items():
            got_type, got_shape = have[name]
            if got_type != dtype or len(got_shape) != rank:
                raise wrong(f"{kind} '{name}' should be {dtype} of rank {rank}, not {got_type} of rank {len(got_shape)}")


# ============================================================================ SAM
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
        self.encoder = make_session(export_dir / files["encoder"], device=device, providers=providers, threads=threads)
        self._check_encoder(export_dir / files["encoder"])
        self.decoder = make_session(export_dir / files["decoder"], device=device, providers=providers, threads=threads)
        self._check_decoder(export_dir / files["decoder"])
        norm = self.manifest["normalization"]
        self.pixel_mean = np.asarray(norm["mean"], np.float32)
        self.pixel_std = np.asarray(norm["std"], np.float32)
        self.transform = ResizeLongestSide(self.img_size)
        self.model = _ModelInfo(float(self.manifest.get("mask_threshold", 0.0)), self.img_size)
        self.device = "cpu"  # tensors handed to/returned from predict_torch live on the CPU
        self.reset_image()

    def _check_encoder(self, path: Path) -> None:
        image = _io_signature(self.encoder)[0].get("image")
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
        count = _io_signature(self.decoder)[1]["iou_predictions"][1][1]
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
        low = self.img_size // 4
        feeds = {
            "image_embeddings": features,
            "point_coords": np.ascontiguousarray(coords, np.float32),
            "point_labels": np.ascontiguousarray(labels, np.float32),
            "mask_input": np.zeros((1, 1, low, low), np.float32) if mask_input is None
            else np.ascontiguousarray(mask_input, np.float32).reshape(-1, 1, low, low),
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
            "orig_im_size": np.array(original_size, np.float32),
        }
        return self.decoder.run(outputs, feeds)

    def _prompt_arrays(self, coords, labels, boxes):
        """Append box corners (labels 2, 3) or the padding point (label -1), as the official encoder does.

        Single-mask decoders exported before ``single_mask_box`` pick their output by the number of
        points only (one point plus padding: the best multimask candidate; more: the single-mask
        token), so a box alone (2 corners) would get a multimask candidate: there it gets a padding
        point too, which selects the single-mask answer (close to, not bit-equal with, torch's)."""
        batch = coords.shape[0] if coords is not None else boxes.shape[0]
        parts_c, parts_l = [], []
        if coords is not None:
            parts_c.append(coords)
            parts_l.append(labels)
        if boxes is not None:
            parts_c.append(boxes.reshape(batch, 2, 2))
            parts_l.append(np.tile(np.array([[2.0, 3.0]], np.float32), (batch, 1)))
        box_only = boxes is not None and (coords is None or coords.shape[1] == 0)
        if boxes is None or (box_only and self.single_mask and not self.single_mask_box):
            parts_c.append(np.zeros((batch, 1, 2), np.float32))
            parts_l.append(-np.ones((batch, 1), np.float32))
        return np.concatenate(parts_c, axis=1), np.concatenate(parts_l, axis=1)

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
        coords = labels = boxes = None
        if point_coords is not None:
            if point_labels is None:
                raise PromptError("point_labels must be given with point_coords (1 = foreground, 0 = background).")
            pts, labs = validate_points(point_coords, point_labels, self.original_size)
            coords = self.transform.apply_coords(pts, self.original_size)[None].astype(np.float32)
            labels = np.asarray(labs, np.float32)[None]
        if box is not None:
            b = validate_box(box, self.original_size)
            boxes = self.transform.apply_boxes(np.asarray(b, np.float32).reshape(1, 4), self.original_size).astype(np.float32)
        if coords is None and boxes is None and mask_input is None:
            raise PromptError("predict needs at least one prompt: points, a box or a mask_input.")
        if coords is None and boxes is None:
            coords, labels = np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.float32)
        coords, labels = self._prompt_arrays(coords, labels, boxes)
        masks, iou, low_res = self._select(*self.decode(coords, labels, mask_input), multimask_output)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks[0], iou[0], low_res[0]

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

    def decode(self, state: tuple[np.ndarray, tuple[int, int]], coords: np.ndarray) -> _OrtPointBatch:
        features, crop_size = state
        b = len(coords)
        points = np.zeros((b, 2, 2), np.float32)
        points[:, 0] = coords
        labels = np.tile(np.array([[1.0, -1.0]], np.float32), (b, 1))
        runs = [
            self.predictor.run_decoder(features, crop_size, points[i : i + self.max_batch],
                                       labels[i : i + self.max_batch], outputs=["iou_predictions", "low_res_masks"])
            for i in range(0, b, self.max_batch)
        ]
        return _OrtPointBatch(np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs]))


class OrtSamSegmenter(Segmenter):
    """SAM on ONNX Runtime: prompt mode (points/labels/box) and everything mode (automatic masks)."""

    supports_prompts = True

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, **amg_options: Any) -> None:
        self.predictor = OrtSamPredictor(export_dir, device=device, providers=providers, threads=threads)
        self.name = str(self.predictor.manifest.get("model", "sam"))
        self.amg_options = amg_options

    def segment(self, image, *, points=None, labels=None, box=None, multimask_output: bool | None = None,
                **kwargs: Any) -> Masks:
        """Everything mode without prompts; prompt mode returns the candidate masks sorted by IoU score.

        ``multimask_output`` defaults to True for a single point without a box (ambiguous prompt).
        """
        image = read_image(image)
        if points is None and box is None:
            return self.automatic_generator(**kwargs).generate_masks(image)
        if kwargs:
            raise ConfigError(f"unexpected options for prompt mode: {sorted(kwargs)}")
        self.predictor.set_image(image)
        if multimask_output is None:
            multimask_output = box is None and points is not None and len(np.asarray(points).reshape(-1, 2)) == 1
        masks, iou, _ = self.predictor.predict(points, labels, box, multimask_output=multimask_output)
        order = np.argsort(-iou, kind="stable")
        return Masks(masks[order], scores=iou[order], image_size=image.shape[:2])

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


# ============================================================================ semantic
def _pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """(N, C, H, W) -> padded bottom/right to multiples of ``multiple`` (reflect, as the torch
    segmenter does; edge replication when the image is smaller than the padding)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def semantic_preprocess(image: np.ndarray, mean, std, pad_multiple: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (1, 3, H', W') float32 normalised (x/255 - mean)/std, padded to the multiple."""
    x = (image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return _pad_to_multiple(np.ascontiguousarray(x.transpose(2, 0, 1)[None]), int(pad_multiple))


class OrtSemanticSegmenter(Segmenter):
    """A semantic model on ONNX Runtime: ``segment(image)`` -> one mask per class present (``labels`` set).

    Images are seen as the torch segmenter (and training's validation) sees them: with ``resize`` (the
    run's default, recorded in the manifest's ``inference``) the longer side is letterboxed to ``imgsz``
    with black padding and the probabilities scaled back; ``resize=False`` runs the whole image at its
    native size (padded to the multiple of 32; no tiling on this backend).
    """

    supports_prompts = False

    def __init__(self, export_dir: str | os.PathLike, *, device: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, files: dict[str, str] | None = None, resize: bool | None = None,
                 imgsz: int | None = None) -> None:
        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        if self.manifest.get("family") != "semantic":
            raise ExportError(f"{export_dir}: not a semantic export (family={self.manifest.get('family')!r}).")
        files = files or self.manifest["files"]
        self.session = make_session(export_dir / files["model"], device=device, providers=providers,
                                    threads=threads)
        self.name = str(self.manifest.get("model", "semantic"))
        self.class_names = list(self.manifest["class_names"])
        self._check_session(export_dir / files["model"])
        self.mean = self.manifest["normalization"]["mean"]
        self.std = self.manifest["normalization"]["std"]
        self.pad_multiple = int(self.manifest.get("pad_multiple", 32))
        inference = self.manifest.get("inference") or {}
        self.imgsz = int(imgsz or inference.get("imgsz") or 0) or None
        self.resize = bool(inference.get("resize", False) if resize is None else resize)
        if self.resize and self.imgsz is None:
            raise ConfigError(f"{export_dir}: resize needs the training imgsz, which this export does not record; "
                              f"pass imgsz=... or resize=False.")

    def _check_session(self, path: Path) -> None:
        outputs = _io_signature(self.session)[1]
        if "image_embeddings" in outputs:
            raise ExportError(
                f"{path}: this looks like a SAM image encoder (it outputs image_embeddings), not the semantic "
                f"segmentation model {MANIFEST} describes; point files.model at the semantic model's .onnx, or "
                f"export again with `imseg export --run RUN`."
            )
        first = next(iter(outputs), None)
        check_session(self.session, path, "semantic segmentation", {"image": ("tensor(float)", 4)},
                      {first or "logits": ("tensor(float)", 4)})
        channels = outputs[first][1][1]
        n = len(self.class_names)
        if isinstance(channels, int) and channels != n and not (channels == 1 and n == 2):
            raise ExportError(
                f"{path}: the model outputs {channels} class channel(s) but {MANIFEST} lists {n} class_names "
                f"{self.class_names}; fix class_names or export again."
            )

    def _logits(self, image: np.ndarray) -> np.ndarray:
        x = semantic_preprocess(image, self.mean, self.std, self.pad_multiple)
        return self.session.run(None, {"image": x})[0][0]

    def predict_probs(self, image) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the image's own size (one-channel models: [1 - p, p])."""
        image = read_image(image)
        h, w = image.shape[:2]
        if self.resize:
            canvas, (new_h, new_w) = letterbox_rgb(image, self.imgsz)
            logits = self._logits(canvas)[:, :new_h, :new_w]
        else:
            logits = self._logits(image)[:, :h, :w]
        if logits.shape[0] == 1:
            p = 1.0 / (1.0 + np.exp(-logits))
            probs = np.concatenate([1.0 - p, p])
        else:
            e = np.exp(logits - logits.max(0, keepdims=True))
            probs = e / e.sum(0, keepdims=True)
        if probs.shape[1:] != (h, w):
            import cv2

            hwc = np.ascontiguousarray(probs.transpose(1, 2, 0), dtype=np.float32)
            probs = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1).transpose(2, 0, 1)
        return np.ascontiguousarray(probs, dtype=np.float32)

    def predict_logits(self, image) -> np.ndarray:
        """(C, H, W) float32 logits of one image at its native size (no letterbox)."""
        image = read_image(image)
        return self._logits(image)[:, : image.shape[0], : image.shape[1]]

    def predict_labels(self, image) -> np.ndarray:
        """(H, W) int64 class map: argmax of :meth:`predict_probs`."""
        return self.predict_probs(image).argmax(axis=0).astype(np.int64)

    def segment(self, image, *, points=None, labels=None, box=None, **kwargs: Any) -> Masks:
        if points is not None or box is not None:
            from ..errors import PromptError

            raise PromptError(f"{self.name}: semantic models take no prompts; call segment(image) without points/box.")
        label_map = self.predict_labels(image)
        return Masks.from_label_map(label_map, background=None, class_names=self.class_names)


# ============================================================================ entry points
def load_exported(path: str | os.PathLike, device: str = "auto", providers: list[str] | None = None,
                  threads: int | None = None, checkpoint: Any = None, **kwargs: Any) -> Segmenter:
    """Load an export directory (with ``imseg_export.json``) as an ONNX Runtime segmenter."""
    onnxruntime()
    manifest = read_manifest(path)
    family = manifest.get("family")
    if manifest.get("format") != "onnx":
        raise ExportError(
            f"{path}: export format {manifest.get('format')!r} cannot run on ONNX Runtime; export with --format onnx."
        )
    if family == "sam":
        return OrtSamSegmenter(path, device=device, providers=providers, threads=threads, **kwargs)
    if family == "semantic":
        unknown = sorted(set(kwargs) - {"resize", "imgsz"})
        if unknown:
            raise ConfigError(f"unexpected options for a semantic export: {unknown} (it takes resize=, imgsz=)")
        return OrtSemanticSegmenter(path, device=device, providers=providers, threads=threads, **kwargs)
    raise ExportError(f"{path}: unknown model family {family!r} in {MANIFEST}.")


def export_cache_dir(spec_name: str, checkpoint: str | os.PathLike) -> Path:
    """Cache directory of the ONNX export of ``checkpoint`` (keyed by its path, size and mtime)."""
    from ..registry import cache_dir

    ckpt = Path(checkpoint).resolve()
    stat = ckpt.stat()
    key = hashlib.sha256(f"{ckpt}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{spec_name}-{key}"


def load_registry_model(spec, checkpoint: str | os.PathLike | None = None, device: str = "auto",
                        providers: list[str] | None = None, threads: int | None = None, **kwargs: Any) -> Segmenter:
    """A registry model on ONNX Runtime: export ``checkpoint`` to the cache once, then load it."""
    onnxruntime()
    if spec.family != "sam":
        raise ConfigError(
            f"model {spec.name!r} ({spec.family}) has no ONNX Runtime backend; use backend='torch'. "
            f"Semantic runs: `imseg export --run RUN --format onnx`, then imseg.load(EXPORT_DIR)."
        )
    if checkpoint is None:
        from ..registry import find_weights

        checkpoint = find_weights(spec.name)
        if checkpoint is None:
            raise CheckpointError(
                f"no checkpoint for {spec.name!r}: pass checkpoint=PATH, run `imseg weights download {spec.name}`, "
                f"or export once with `imseg export --model {spec.name} --checkpoint P --out DIR` and load DIR."
            )
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found.")
    target = export_cache_dir(spec.name, checkpoint)
    if not (target / MANIFEST).is_file():
        from . import export_sam_checkpoint

        try:
            export_sam_checkpoint(spec, checkpoint, target)
        except DependencyError:
            raise
        except ExportError as exc:
            raise ExportError(
                f"{exc}\nExport it explicitly with `imseg export --model {spec.name} --checkpoint {checkpoint} --out DIR`, "
                f"then imseg.load(DIR, backend='onnxruntime')."
            ) from exc
    return load_exported(target, device=device, providers=providers, threads=threads, **kwargs)
