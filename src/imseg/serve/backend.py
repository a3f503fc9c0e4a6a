"""The model side of the server: workers over a segmenter's public engine calls, and the caches.

The server talks to a :class:`SamBackend`, never to a model class directly. A backend makes
*workers*; each worker owns one engine (a promptable :class:`~imseg.segmenter.Segmenter`'s
``worker_copy()``: its own image state, the model weights or ONNX Runtime sessions shared), so N
workers can serve N requests at once. Workers use only the engine's public ``embed``, ``decode``
and ``everything`` calls.

The image embedding of an upload is computed once, kept as an :class:`Embedding` in an
:class:`EmbeddingCache` (LRU, bounded by entry count and bytes); a segment request decodes its
prompts on that embedding (prompt encoder + mask decoder only). Prompt mode follows the official
``SamPredictor.predict``: ``multimask`` gives SAM's three candidates, otherwise its single-mask
output, best score first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..masks import Masks
from ..segmenter import Candidates, Prompts
from ..segmenter import Embedding as ImageEmbedding


def low_res_size_of(engine: Any) -> tuple[int, int] | None:
    """(h, w) of the low-resolution mask logits an engine takes as ``mask_input`` and returns as
    ``low_res_logits``: a quarter of its model's input side (256 x 256 for SAM and SAM 2.1 at 1024 px, 64 x 64
    for a SAM 2.1 fine-tuned or exported at 256 px). None when the engine does not say.

    Read from what each engine has: its own ``low_res_size``; a SAM 2 ONNX export's ``low_res`` (from its
    manifest); a torch model's prompt encoder (``mask_input_size``: SAM, SAM 2.1 at any image size, fine-tuned
    runs); a SAM ONNX / OpenVINO export's ``img_size`` (from its manifest).
    """
    declared = getattr(engine, "low_res_size", None)
    if declared is not None:
        return _pair(declared)
    predictor = getattr(engine, "predictor", None)
    low = getattr(predictor, "low_res", None)
    if isinstance(low, (int, np.integer)):
        return _pair(int(low))
    for model in (getattr(engine, "model", None), getattr(predictor, "model", None)):
        for name in ("sam_prompt_encoder", "prompt_encoder"):
            size = getattr(getattr(model, name, None), "mask_input_size", None)
            if size is not None:
                return _pair(size)
    img_size = getattr(predictor, "img_size", None)
    if isinstance(img_size, (int, np.integer)):
        return _pair(int(img_size) // 4)
    return None


def _pair(size: Any) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    return int(h), int(w)


def estimate_embedding_bytes(model: Any) -> int | None:
    """Bytes of one image embedding (float32, ``embed_dim`` x (img_size/16)^2) of a SAM-style model (SAM 2:
    with its stride-4 and stride-8 feature maps), or None when the model does not say its sizes."""
    grid = getattr(model, "sam_image_embedding_size", None)
    if grid is not None and hasattr(model, "hidden_dim"):  # SAM 2: embedding plus the two high-res feature maps
        return 16 * int(model.hidden_dim) * int(grid) ** 2
    img_size = getattr(getattr(model, "image_encoder", None), "img_size", None)
    if img_size is None:
        return None
    embed_dim = getattr(getattr(model, "prompt_encoder", None), "embed_dim", 256)
    return 4 * int(embed_dim) * (int(img_size) // 16) ** 2


def _nbytes(value: Any) -> int:
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch tensor
        return int(value.element_size() * value.nelement())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, ImageEmbedding):
        return _nbytes(value.features)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


@dataclass
class Embedding:
    """An upload's image embedding, plus the upload it came from.

    ``state`` holds ``{"embedding": ImageEmbedding}`` (the engine's
    :class:`imseg.segmenter.Embedding`; empty for one-shot everything mode); ``source`` is the encoded
    upload (kept instead of the decoded pixels, which are larger), used again by everything mode;
    ``height``/``width`` are the original image size in pixels.
    """

    state: dict[str, Any]
    source: bytes
    height: int
    width: int
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(_nbytes(v) for v in self.state.values()) + len(self.source)


class SamWorker:
    """One engine (``embed``/``decode``/``everything``) used by one request at a time."""

    def __init__(self, engine: Any, everything_options: dict[str, Any] | None = None,
                 supports_everything: bool = True, low_res_size: tuple[int, int] | None = None) -> None:
        self.engine = engine
        self.everything_options = dict(everything_options or {})
        self.supports_everything = supports_everything
        #: (h, w) of ``mask_input`` and ``low_res_logits`` (the engine's own when not given)
        self.low_res_size = low_res_size or low_res_size_of(engine)

    @property
    def predictor(self) -> Any:
        """The engine's predictor (its image state is this worker's own)."""
        return getattr(self.engine, "predictor", None)

    def embed(self, image: np.ndarray, source: bytes) -> Embedding:
        """Run the image encoder on an RGB uint8 (H, W, 3) image."""
        embedding = self.engine.embed(image)
        return Embedding(state={"embedding": embedding}, source=source, height=int(image.shape[0]),
                         width=int(image.shape[1]))

    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> Masks:
        """Prompt mode on a cached embedding.

        Args:
            points: (N, 2) float XY pixels; labels: (N,) int 1 = foreground, 0 = background.
            box: (4,) XYXY pixels. mask_input: (1, h, w) float low-resolution logits, (h, w) =
            ``low_res_size`` (256 x 256 for SAM at 1024 px).
        Returns:
            ``Masks`` with 3 candidates (``multimask``) or 1, best score first, ``scores`` = predicted
            IoU, and the field ``low_res_logits`` (C, h, w) float32 to feed back as ``mask_input``.
        """
        if points is None and box is None and mask_input is None:
            raise PromptError("no prompt given: pass points (with labels), a box, or mask_input.")
        boxes = None if box is None else np.asarray(box, np.float32).reshape(1, 4)
        mask = None if mask_input is None else self._mask_input(mask_input)
        prompts = Prompts(points, labels, boxes, mask)
        c = self.engine.decode(embedding.state["embedding"], prompts, multimask_output=multimask)
        order = np.argsort(-c.iou[0], kind="stable")
        return Masks(c.masks[0][order], scores=c.iou[0][order], low_res_logits=c.low_res_logits[0][order])

    def _mask_input(self, mask_input: np.ndarray) -> np.ndarray:
        """``mask_input`` as (1, h, w) float32, or a :class:`PromptError` when it is not this model's size."""
        mask = np.asarray(mask_input, np.float32)
        h, w = self.low_res_size or mask.shape[-2:]
        if mask.size != h * w:
            raise PromptError(f"mask_input has shape {tuple(mask.shape)}; this model takes {h}x{w} low-res logits "
                              f"(a previous low_res_logits of the same model).")
        return mask.reshape(1, h, w)

    def predict_boxes(self, embedding: Embedding, boxes: np.ndarray) -> Masks:
        """One mask per XYXY box (B, 4) on a cached embedding, all boxes in one decoder call, in box order:
        SAM's single-mask output, ``scores`` = predicted IoU (what ``Segmenter.segment(box=boxes)`` gives)."""
        size = (embedding.height, embedding.width)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return Masks(np.zeros((0, *size), bool), image_size=size)
        c = self.engine.decode(embedding.state["embedding"], Prompts(boxes=boxes), multimask_output=False)
        return Masks(c.masks[:, 0], scores=c.iou[:, 0], image_size=size)

    def everything(self, image: np.ndarray) -> Masks:
        """Everything mode on an RGB uint8 (H, W, 3) image."""
        if not self.supports_everything:
            raise ConfigError("this model has no everything mode; send point or box prompts instead.")
        return self.engine.everything(image, **self.everything_options)


class OfficialSamEngine:
    """``embed``/``decode``/``everything`` over an official ``segment_anything`` / ``mobile_sam`` model,
    through its own ``SamPredictor`` and ``SamAutomaticMaskGenerator``."""

    #: predictor attributes that make up "the image is set" (official SamPredictor names)
    STATE_ATTRS = ("features", "interm_features", "original_size", "input_size", "orig_h", "orig_w",
                   "input_h", "input_w", "is_image_set")

    def __init__(self, model: Any) -> None:
        package = type(model).__module__.split(".")[0]
        if package == "mobile_sam":
            from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
        else:
            from segment_anything import SamAutomaticMaskGenerator, SamPredictor
        self.package = package
        self.model = model
        self.predictor = SamPredictor(model)
        self._generator_type = SamAutomaticMaskGenerator

    def embed(self, rgb: np.ndarray) -> ImageEmbedding:
        self.predictor.set_image(rgb)
        state = {n: getattr(self.predictor, n) for n in self.STATE_ATTRS if hasattr(self.predictor, n)}
        return ImageEmbedding(state, self.predictor.original_size, self.predictor.input_size)

    def decode(self, embedding: ImageEmbedding, prompts: Prompts, multimask_output: bool) -> Candidates:
        for name, value in embedding.features.items():
            setattr(self.predictor, name, value)
        if prompts.n_boxes > 1:
            return self._decode_boxes(prompts.boxes, multimask_output)
        box = None if prompts.boxes is None else prompts.boxes[0]
        masks, iou, low = self.predictor.predict(point_coords=prompts.points, point_labels=prompts.labels, box=box,
                                                 mask_input=prompts.mask_input, multimask_output=multimask_output)
        return Candidates(np.asarray(masks, bool)[None], np.asarray(iou, np.float32)[None],
                          np.asarray(low, np.float32)[None])

    def _decode_boxes(self, boxes: np.ndarray, multimask_output: bool) -> Candidates:
        """Several boxes in one batch, through the official ``predict_torch``."""
        import torch

        p = self.predictor
        coords = p.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32, device=p.device),
                                               p.original_size)
        with torch.inference_mode():
            masks, iou, low = p.predict_torch(None, None, boxes=coords, multimask_output=multimask_output)
        return Candidates(masks.cpu().numpy().astype(bool), iou.float().cpu().numpy(), low.float().cpu().numpy())

    def everything(self, rgb: np.ndarray, embedding: Any = None, **options: Any) -> Masks:
        records = self._generator_type(self.model, **options).generate(rgb)
        if not records:
            return Masks(rles=[], image_size=rgb.shape[:2])
        return Masks(
            np.stack([r["segmentation"] for r in records]),
            scores=[r["predicted_iou"] for r in records],
            stability_score=np.array([r["stability_score"] for r in records], np.float32),
        )


class SamBackend:
    """Makes workers that share one model. Build with :meth:`from_segmenter` or :meth:`from_official`."""

    def __init__(
        self,
        name: str,
        engine_factory: Callable[[], Any],
        everything_options: dict[str, Any] | None = None,
        summary: str = "",
        embedding_bytes: int | None = None,
        supports_everything: bool = True,
        low_res_size: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.summary = summary
        #: bytes of one image embedding (the cache must hold at least one); None = unknown
        self.embedding_bytes = embedding_bytes
        self._engine_factory = engine_factory
        self._everything_options = dict(everything_options or {})
        self._supports_everything = supports_everything
        #: (h, w) of the model's low-res logits: ``mask_input`` and ``low_res_logits`` have this size; when not
        #: given, one engine is built to read it (a model load for factories that load one)
        self.low_res_size = _pair(low_res_size) if low_res_size is not None else self._engine_low_res_size()

    def _engine_low_res_size(self) -> tuple[int, int]:
        size = low_res_size_of(self._engine_factory())
        if size is None:
            raise ConfigError(
                f"cannot tell the low-res mask size of model {self.name!r} (its engine has no low_res_size, prompt "
                f"encoder or img_size); pass SamBackend(..., low_res_size=(h, w)): a quarter of the model's input "
                f"side, (256, 256) for SAM at 1024 px."
            )
        return size

    @property
    def supports_everything(self) -> bool:
        return self._supports_everything

    @property
    def supports_prompts(self) -> bool:
        """Always: every engine decodes point and box prompts (what text prompts need)."""
        return True

    def make_worker(self) -> SamWorker:
        return SamWorker(self._engine_factory(), self._everything_options, self._supports_everything,
                         self.low_res_size)

    @classmethod
    def from_official(cls, model: Any, name: str = "mobile-sam", **everything_options: Any) -> SamBackend:
        """Wrap an official ``segment_anything`` / ``mobile_sam`` ``Sam`` model.

        ``everything_options`` go to ``SamAutomaticMaskGenerator`` (``points_per_side``, thresholds).
        """
        package = type(model).__module__.split(".")[0]
        return cls(name, lambda: OfficialSamEngine(model), everything_options, summary=f"official {package} model",
                   embedding_bytes=estimate_embedding_bytes(model),
                   low_res_size=_pair(tuple(model.prompt_encoder.mask_input_size)))

    @classmethod
    def from_segmenter(cls, segmenter: Any, **everything_options: Any) -> SamBackend:
        """Wrap a promptable segmenter (``imseg.load("mobile-sam" | "sam-vit-b" | "sam2.1-hiera-t", ...)`` on
        torch, or an ONNX export ``imseg.load(EXPORT_DIR)``): each worker gets ``segmenter.worker_copy()``."""
        if not (getattr(segmenter, "supports_prompts", False) and hasattr(segmenter, "worker_copy")
                and hasattr(segmenter, "embed") and hasattr(segmenter, "decode")):
            raise ConfigError(
                f"{type(segmenter).__name__} has no SAM engine (embed/decode); the server needs a SAM model: "
                f"imseg.load('mobile-sam' | 'sam-vit-b', checkpoint=...), an ONNX export (imseg.load(EXPORT_DIR)) "
                f"or an official Sam model."
            )
        predictor = getattr(segmenter, "predictor", None)
        model = getattr(predictor, "model", None)
        on_ort = hasattr(predictor, "decode_prompts")
        # a --single-mask export has no multimask outputs, which everything mode needs
        everything = not getattr(predictor, "single_mask", False)
        kind = f"{type(predictor).__name__} (ONNX Runtime)" if on_ort else type(predictor).__name__
        return cls(
            getattr(segmenter, "name", "sam"),
            segmenter.worker_copy,
            everything_options,
            summary=f"imseg {kind}",
            embedding_bytes=getattr(segmenter, "embedding_bytes", None) or estimate_embedding_bytes(model),
            supports_everything=everything,
            low_res_size=low_res_size_of(segmenter),
        )


class EmbeddingCache:
    """LRU cache of :class:`Embedding` bounded by entry count and total bytes. Thread-safe."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ConfigError(f"cache limits must be >= 1 (got items={max_items}, bytes={max_bytes}).")
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Embedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item: Embedding) -> bool:
        """Insert (or refresh) ``key``; evicts least recently used entries. False if it cannot fit."""
        if item.nbytes > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = item
            self.bytes += item.nbytes
            while len(self._items) > self.max_items or self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1
            return True
