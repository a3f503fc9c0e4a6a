"""The model side of the server: a small adapter over any SAM-style predictor, and the caches.

The server talks to a :class:`SamBackend`, never to a model class directly. A backend makes
*workers*; each worker owns one predictor (the official ``SamPredictor`` API: ``set_image``,
``predict``, plus its image state ``features`` / ``original_size`` / ``input_size``) and shares the
model weights with the other workers, so N workers can serve N requests at once.

The image embedding of an upload is computed once, snapshotted as an :class:`Embedding` and
kept in an :class:`EmbeddingCache` (LRU, bounded by entry count and bytes); a segment request
restores the snapshot into a worker's predictor and runs only the prompt encoder + mask decoder.
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

#: Predictor attributes that make up "the image is set" state (official SamPredictor names).
_STATE_ATTRS = (
    "features",
    "interm_features",
    "original_size",
    "input_size",
    "orig_h",
    "orig_w",
    "input_h",
    "input_w",
    "is_image_set",
)

#: Low-resolution mask logits size used by SAM for ``mask_input`` (H, W).
LOW_RES_SIZE = (256, 256)


def estimate_embedding_bytes(model: Any) -> int | None:
    """Bytes of one image embedding (float32, ``embed_dim`` x (img_size/16)^2) of a SAM-style model,
    or None when the model does not say its sizes."""
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
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


@dataclass
class Embedding:
    """A snapshot of a predictor after ``set_image``, plus the upload it came from.

    ``state`` holds the predictor attributes (``features`` is a (1, 256, 64, 64) float tensor for
    SAM); ``source`` is the encoded upload (kept instead of the decoded pixels, which are larger),
    used again by everything mode; ``height``/``width`` are the original image size in pixels.
    """

    state: dict[str, Any]
    source: bytes
    height: int
    width: int
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(_nbytes(v) for v in self.state.values()) + len(self.source)


class SamWorker:
    """One predictor (plus an optional everything-mode function) used by one request at a time."""

    def __init__(self, predictor: Any, everything: Callable[[np.ndarray], Masks] | None = None) -> None:
        self.predictor = predictor
        self._everything = everything

    def embed(self, image: np.ndarray, source: bytes) -> Embedding:
        """Run the image encoder on an RGB uint8 (H, W, 3) image and snapshot the result."""
        self.predictor.set_image(image)
        state = {name: getattr(self.predictor, name) for name in _STATE_ATTRS if hasattr(self.predictor, name)}
        return Embedding(state=state, source=source, height=int(image.shape[0]), width=int(image.shape[1]))

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
            box: (4,) XYXY pixels. mask_input: (1, 256, 256) float low-resolution logits.
        Returns:
            ``Masks`` with 3 candidates (``multimask``) or 1, ``scores`` = predicted IoU, and the
            field ``low_res_logits`` (C, 256, 256) float32 to feed back as ``mask_input``.
        """
        if points is None and box is None and mask_input is None:
            raise PromptError("no prompt given: pass points (with labels), a box, or mask_input.")
        for name, value in embedding.state.items():
            setattr(self.predictor, name, value)
        masks, scores, low_res = self.predictor.predict(
            point_coords=points,
            point_labels=labels,
            box=box,
            mask_input=mask_input,
            multimask_output=multimask,
        )
        return Masks(
            np.asarray(masks, bool),
            scores=np.asarray(scores, np.float32),
            low_res_logits=np.asarray(low_res, np.float32),
        )

    def everything(self, image: np.ndarray) -> Masks:
        """Everything mode on an RGB uint8 (H, W, 3) image."""
        if self._everything is None:
            raise ConfigError("this model has no everything mode; send point or box prompts instead.")
        return self._everything(image)


class SamBackend:
    """Makes workers that share one model. Build with :meth:`from_segmenter` or :meth:`from_official`."""

    def __init__(
        self,
        name: str,
        predictor_factory: Callable[[], Any],
        everything_factory: Callable[[], Callable[[np.ndarray], Masks]] | None = None,
        summary: str = "",
        embedding_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.summary = summary
        #: bytes of one image embedding (the cache must hold at least one); None = unknown
        self.embedding_bytes = embedding_bytes
        self._predictor_factory = predictor_factory
        self._everything_factory = everything_factory

    @property
    def supports_everything(self) -> bool:
        return self._everything_factory is not None

    def make_worker(self) -> SamWorker:
        everything = self._everything_factory() if self._everything_factory is not None else None
        return SamWorker(self._predictor_factory(), everything)

    @classmethod
    def from_official(cls, model: Any, name: str = "mobile-sam", **everything_options: Any) -> SamBackend:
        """Wrap an official ``segment_anything`` / ``mobile_sam`` ``Sam`` model.

        ``everything_options`` go to ``SamAutomaticMaskGenerator`` (``points_per_side``, thresholds).
        """
        package = type(model).__module__.split(".")[0]
        if package == "mobile_sam":
            from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
        else:
            from segment_anything import SamAutomaticMaskGenerator, SamPredictor

        def everything_factory() -> Callable[[np.ndarray], Masks]:
            generator = SamAutomaticMaskGenerator(model, **everything_options)

            def run(image: np.ndarray) -> Masks:
                records = generator.generate(image)
                if not records:
                    return Masks(rles=[], image_size=image.shape[:2])
                return Masks(
                    np.stack([r["segmentation"] for r in records]),
                    scores=[r["predicted_iou"] for r in records],
                    stability_score=np.array([r["stability_score"] for r in records], np.float32),
                )

            return run

        return cls(name, lambda: SamPredictor(model), everything_factory, summary=f"official {package} model",
                   embedding_bytes=estimate_embedding_bytes(model))

    @classmethod
    def from_segmenter(cls, segmenter: Any, **everything_options: Any) -> SamBackend:
        """Wrap an ``imseg.load("mobile-sam" | "sam-vit-b", ...)`` segmenter (needs ``.predictor``),
        on torch or on ONNX Runtime (``imseg.load(EXPORT_DIR)``)."""
        predictor = getattr(segmenter, "predictor", None)
        if predictor is None or not hasattr(predictor, "set_image"):
            raise ConfigError(
                f"{type(segmenter).__name__} has no SAM predictor; the server needs a SAM model "
                f"(--model mobile-sam or sam-vit-b)."
            )
        model = getattr(predictor, "model", None)
        if hasattr(predictor, "worker_copy"):  # ONNX Runtime: workers share the sessions, not the image state
            return cls._from_ort(segmenter, predictor, model, everything_options)
        if not hasattr(model, "prompt_encoder"):
            raise ConfigError(
                f"{type(segmenter).__name__}'s predictor ({type(predictor).__name__}) has no SAM model with a "
                f"prompt encoder; serve an imseg.load('mobile-sam' | 'sam-vit-b', checkpoint=...) segmenter, an "
                f"ONNX export (imseg.load(EXPORT_DIR)) or an official Sam model."
            )
        predictor_type = type(predictor)

        def everything_factory() -> Callable[[np.ndarray], Masks]:
            from ..sam.automatic import SamAutomaticMaskGenerator

            generator = SamAutomaticMaskGenerator(model, **everything_options)
            return generator.generate_masks

        return cls(
            getattr(segmenter, "name", "sam"),
            lambda: predictor_type(model),
            everything_factory,
            summary=f"imseg {predictor_type.__name__}",
            embedding_bytes=estimate_embedding_bytes(model),
        )

    @classmethod
    def _from_ort(cls, segmenter: Any, predictor: Any, model: Any, everything_options: dict[str, Any]) -> SamBackend:
        """An ``OrtSamSegmenter``: each worker gets ``predictor.worker_copy()`` (shared sessions);
        everything mode unless the export was made with ``--single-mask``."""
        everything_factory = None
        if not getattr(predictor, "single_mask", False) and hasattr(segmenter, "automatic_generator"):

            def everything_factory() -> Callable[[np.ndarray], Masks]:
                return segmenter.automatic_generator(**everything_options).generate_masks

        return cls(
            getattr(segmenter, "name", "sam"),
            predictor.worker_copy,
            everything_factory,
            summary=f"imseg {type(predictor).__name__} (ONNX Runtime)",
            embedding_bytes=estimate_embedding_bytes(model),
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
