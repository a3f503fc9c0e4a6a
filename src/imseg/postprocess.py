"""Post-processing of segmentations: morphology, small regions and holes, largest component, dense CRF.

Every mask operation accepts and returns the same kind of thing, so calls chain:

* :class:`~imseg.masks.Masks` -> ``Masks`` (each mask processed on its own; masks that end up
  empty are dropped; scores, labels and extra fields follow their mask);
* a bool mask (H, W) -> bool (H, W); a bool stack (N, H, W) -> bool (N, H, W);
* an integer label map (H, W) -> label map (each label processed on its own, 0 = background).

``dense_crf`` and ``threshold`` work on probabilities. The pipeline form
``apply_pipeline(masks, "remove_small=64,fill_holes=64,crf", image=img)`` is what the CLI's
``--post`` option uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .errors import ConfigError, InputError, require
from .masks import Masks

__all__ = [
    "Pipeline",
    "apply_pipeline",
    "closing",
    "crf_refine",
    "dense_crf",
    "dilate",
    "erode",
    "fill_holes",
    "keep_largest",
    "opening",
    "parse_pipeline",
    "remove_small",
    "remove_small_regions",
    "smooth_boundaries",
    "split_touching",
    "threshold",
]

Target = Union[Masks, np.ndarray]  # noqa: UP007 (runtime alias)
MaskOp = Callable[[np.ndarray], np.ndarray]


# ============================================================================ dispatch
def _rebuild(masks: Masks, stack: np.ndarray, keep_index: np.ndarray | None = None) -> Masks:
    """New Masks from (K, H, W) ``stack`` whose mask i came from ``masks[keep_index[i]]``; empties dropped."""
    if keep_index is None:
        keep_index = np.arange(len(stack))
    nonempty = stack.reshape(len(stack), -1).any(axis=1) if len(stack) else np.zeros(0, bool)
    stack, keep_index = stack[nonempty], keep_index[nonempty]
    dense = {"masks": stack} if len(stack) else {"rles": []}  # Masks takes no (0, H, W) dense array
    return Masks(
        **dense,
        scores=masks.scores[keep_index],
        labels=None if masks.labels is None else masks.labels[keep_index],
        class_names=masks.class_names,
        image_size=masks.image_size,
        **{k: v[keep_index] for k, v in masks.fields.items()},
    )


def _label_values(label_map: np.ndarray) -> np.ndarray:
    values = np.unique(label_map)
    return values[values != 0]


def _apply(target: Target, op: MaskOp, name: str) -> Target:
    """Apply a single-mask operation to Masks, a bool mask/stack or an integer label map."""
    if isinstance(target, Masks):
        stack = np.stack([op(m) for m in target.masks]) if len(target) else target.masks
        return _rebuild(target, stack.astype(bool, copy=False))
    array = np.asarray(target)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise InputError(
            f"{name}: expected Masks, a (H, W) mask or label map or an (N, H, W) mask stack with pixels; "
            f"got shape {array.shape}."
        )
    if array.dtype == bool:
        if array.ndim == 2:
            return op(array).astype(bool, copy=False)
        return np.stack([op(m) for m in array]).astype(bool, copy=False) if len(array) else array
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"{name}: a non-boolean array must be an integer (H, W) label map; got dtype {array.dtype}, "
            f"shape {array.shape}. Threshold probabilities first (imseg.postprocess.threshold)."
        )
    out = np.zeros_like(array)
    for value in _label_values(array):  # later labels win where grown regions meet
        out[op(array == value)] = value
    return out


def _check_nonnegative(name: str, **values: float | None) -> None:
    for key, value in values.items():
        if value is not None and (not np.isfinite(value) or value < 0):
            raise ConfigError(f"{name}: {key} must be a finite number >= 0, got {value}.")


# ============================================================================ regions and holes
def fill_holes(target: Target, max_area: int | None = None) -> Target:
    """Fill holes (background enclosed by the mask); only holes up to ``max_area`` pixels if given."""
    from scipy import ndimage as ndi
    from skimage import morphology

    _check_nonnegative("fill_holes", max_area=max_area)
    if max_area is None:
        return _apply(target, ndi.binary_fill_holes, "fill_holes")
    return _apply(target, lambda m: morphology.remove_small_holes(m, max_size=int(max_area)), "fill_holes")


def remove_small(target: Target, min_area: int = 64) -> Target:
    """Remove connected pieces smaller than ``min_area`` pixels (Masks left empty are dropped)."""
    from skimage import morphology

    _check_nonnegative("remove_small", min_area=min_area)
    if min_area <= 1:
        return _apply(target, lambda m: m, "remove_small")
    return _apply(target, lambda m: morphology.remove_small_objects(m, max_size=int(min_area) - 1), "remove_small")


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area`` px.

    8-connected components (OpenCV). When every island is small, the largest one is kept.
    Returns the new (H, W) bool mask and whether it changed.
    """
    import cv2

    fill_holes = mode == "holes"
    work = (mask ^ fill_holes).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(work, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:  # label 0 is the mask itself; add the small background components to it
        return np.isin(regions, np.concatenate([[0], small])), True
    keep = np.setdiff1d(np.arange(1, n_labels), small)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, keep), True


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from skimage import measure

    components = measure.label(mask, connectivity=2)
    if components.max() <= 1:
        return mask
    counts = np.bincount(components.ravel())
    counts[0] = 0
    return components == int(np.argmax(counts))


def keep_largest(target: Target) -> Target:
    """Keep only the largest 8-connected piece of each mask (of each label in a label map)."""
    return _apply(target, _largest_component, "keep_largest")


# ============================================================================ morphology
def _disk(radius: int) -> np.ndarray:
    import cv2

    size = 2 * int(radius) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _morph(target: Target, radius: int, kind: str) -> Target:
    import cv2

    _check_nonnegative(kind, radius=radius)
    if int(radius) == 0:
        return _apply(target, lambda m: m, kind)
    kernel = _disk(int(radius))
    code = {"erode": cv2.MORPH_ERODE, "dilate": cv2.MORPH_DILATE, "opening": cv2.MORPH_OPEN, "closing": cv2.MORPH_CLOSE}[
        kind
    ]

    def op(mask: np.ndarray) -> np.ndarray:
        if kind == "closing":  # pad so that closing does not glue a mask to the image border
            pad = int(radius)
            padded = cv2.copyMakeBorder(mask.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
            return cv2.morphologyEx(padded, code, kernel)[pad:-pad, pad:-pad].astype(bool)
        return cv2.morphologyEx(mask.astype(np.uint8), code, kernel).astype(bool)

    return _apply(target, op, kind)


def erode(target: Target, radius: int = 1) -> Target:
    """Binary erosion with a disk of ``radius`` pixels."""
    return _morph(target, radius, "erode")


def dilate(target: Target, radius: int = 1) -> Target:
    """Binary dilation with a disk of ``radius`` pixels."""
    return _morph(target, radius, "dilate")


def opening(target: Target, radius: int = 1) -> Target:
    """Opening (erode then dilate) with a disk of ``radius`` pixels: removes thin spurs and specks."""
    return _morph(target, radius, "opening")


def closing(target: Target, radius: int = 1) -> Target:
    """Closing (dilate then erode) with a disk of ``radius`` pixels: bridges small gaps and notches."""
    return _morph(target, radius, "closing")


def smooth_boundaries(target: Target, sigma: float = 2.0) -> Target:
    """Smooth jagged outlines: Gaussian-blur each mask (``sigma`` pixels) and re-threshold at 0.5."""
    import cv2

    _check_nonnegative("smooth_boundaries", sigma=sigma)
    if sigma == 0:
        return _apply(target, lambda m: m, "smooth_boundaries")

    def op(mask: np.ndarray) -> np.ndarray:
        blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)
        return blurred > 0.5

    return _apply(target, op, "smooth_boundaries")


# ============================================================================ splitting
def _split_mask(mask: np.ndarray, min_distance: int, distance_sigma: float) -> np.ndarray:
    """Label map (H, W) of the pieces of one mask, split by a watershed on its distance transform."""
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, segmentation

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndi.distance_transform_edt(mask)
    if distance_sigma > 0:
        distance = filters.gaussian(distance, sigma=distance_sigma, preserve_range=True)
    components = measure.label(mask)
    peaks = feature.peak_local_max(distance, min_distance=max(int(min_distance), 1), labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    unmarked = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for i, comp in enumerate(unmarked):  # every piece keeps at least one marker
        r, c = np.argwhere(components == comp)[0]
        markers[r, c] = len(peaks) + 1 + i
    return segmentation.watershed(-distance, markers, mask=mask).astype(np.int32)


def split_touching(target: Target, min_distance: int = 5, distance_sigma: float = 1.0) -> Target:
    """Split touching blobs with a watershed on the distance transform.

    One marker per distance-transform peak (peaks at least ``min_distance`` pixels apart, distance
    smoothed by ``distance_sigma`` pixels). Masks -> more Masks (each piece keeps its parent's
    score, label and fields); a bool mask or an integer label map -> an int32 instance label map
    (1..K); a bool stack (N, H, W) -> a bool stack of the pieces.
    """
    _check_nonnegative("split_touching", min_distance=min_distance, distance_sigma=distance_sigma)
    if isinstance(target, Masks):
        pieces, parents = [], []
        for i, mask in enumerate(target.masks):
            parts = _split_mask(mask, min_distance, distance_sigma)
            for value in range(1, int(parts.max()) + 1):
                pieces.append(parts == value)
                parents.append(i)
        stack = np.stack(pieces) if pieces else np.zeros((0, *target.image_size), bool)
        return _rebuild(target, stack, np.asarray(parents, np.int64))
    array = np.asarray(target)
    if array.dtype == bool and array.ndim == 3:
        parts = [_split_mask(m, min_distance, distance_sigma) for m in array]
        pieces = [p == v for p in parts for v in range(1, int(p.max()) + 1)]
        return np.stack(pieces) if pieces else np.zeros((0, *array.shape[1:]), bool)
    if array.ndim != 2 or 0 in array.shape or not (array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"split_touching: expected Masks, a bool mask or an integer label map; got {array.dtype} {array.shape}.")
    out = np.zeros(array.shape, np.int32)
    masks = [array] if array.dtype == bool else [array == v for v in _label_values(array)]
    for mask in masks:
        parts = _split_mask(mask, min_distance, distance_sigma)
        out[parts > 0] = parts[parts > 0] + out.max()
    return out


# ============================================================================ probabilities
def _check_probabilities(probabilities: Any, name: str) -> np.ndarray:
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.ndim not in (2, 3) or 0 in probs.shape:
        raise InputError(f"{name}: probabilities must be (H, W) or (C, H, W) with pixels; got shape {probs.shape}.")
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).sum())
        raise InputError(
            f"{name}: probabilities contain {bad} NaN/infinite value(s); fix the model output "
            f"(e.g. np.nan_to_num) before post-processing."
        )
    if probs.min() < 0 or probs.max() > 1:
        raise InputError(
            f"{name}: probabilities must lie in [0, 1]; got range [{probs.min():g}, {probs.max():g}]. "
            f"Apply a sigmoid/softmax to logits first."
        )
    return probs


def threshold(probabilities: Any, value: float = 0.5) -> np.ndarray:
    """Bool masks ``probabilities >= value``; shape kept ((H, W) or (C, H, W))."""
    probs = _check_probabilities(probabilities, "threshold")
    if not 0 <= value <= 1:
        raise ConfigError(f"threshold: value must lie in [0, 1], got {value}.")
    return probs >= value


def dense_crf(
    image: Any,
    probabilities: Any,
    iterations: int = 5,
    sxy: float = 50.0,
    srgb: float = 13.0,
    compat: float = 10.0,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
) -> np.ndarray:
    """Refine per-pixel class probabilities with a fully connected CRF (pydensecrf2).

    Args:
        image: the RGB image the probabilities belong to (anything :func:`imseg.io.read_image` reads).
        probabilities: (C, H, W) class probabilities summing to 1 over C, or (H, W) foreground
            probability (treated as 2 classes). Values in [0, 1]; NaN is an error.
        iterations: mean-field iterations.
        sxy: spatial std of the appearance (bilateral) kernel, pixels.
        srgb: colour std of the appearance kernel, RGB 0..255 units.
        compat: weight of the appearance kernel.
        gaussian_sxy, gaussian_compat: std (pixels) and weight of the smoothness kernel.
    Returns:
        refined probabilities, float32, same shape as ``probabilities``.
    """
    from .io import read_image

    dcrf = require("pydensecrf.densecrf", "crf", "Dense CRF post-processing")
    probs = _check_probabilities(probabilities, "dense_crf")
    rgb = np.ascontiguousarray(read_image(image))
    foreground_only = probs.ndim == 2
    if foreground_only:
        probs = np.stack([1.0 - probs, probs])
    n_classes, h, w = probs.shape
    if rgb.shape[:2] != (h, w):
        raise InputError(f"dense_crf: image is {rgb.shape[1]}x{rgb.shape[0]} but probabilities are {w}x{h}; they must match.")
    if n_classes < 2:
        raise InputError("dense_crf: needs at least 2 classes; pass (H, W) foreground probability or (C>=2, H, W).")
    if int(iterations) < 1:
        raise ConfigError(f"dense_crf: iterations must be >= 1, got {iterations}.")
    crf = dcrf.DenseCRF2D(w, h, n_classes)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(n_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=float(gaussian_sxy), compat=float(gaussian_compat))
    crf.addPairwiseBilateral(sxy=float(sxy), srgb=float(srgb), rgbim=rgb, compat=float(compat))
    refined = np.asarray(crf.inference(int(iterations)), np.float32).reshape(n_classes, h, w)
    return refined[1] if foreground_only else refined


def crf_refine(target: Target, image: Any, confidence: float = 0.8, iterations: int = 5, **crf_params: float) -> Target:
    """Snap each mask to image edges with :func:`dense_crf`.

    Each mask becomes a foreground probability of ``confidence`` inside and ``1 - confidence``
    outside, is refined, and re-thresholded at 0.5.
    """
    if not 0.5 < confidence < 1:
        raise ConfigError(f"crf: confidence must lie in (0.5, 1), got {confidence}.")
    from .io import read_image

    rgb = read_image(image)

    def op(mask: np.ndarray) -> np.ndarray:
        prior = np.where(mask, confidence, 1.0 - confidence).astype(np.float32)
        return dense_crf(rgb, prior, iterations=iterations, **crf_params) > 0.5

    return _apply(target, op, "crf")


# ============================================================================ pipelines
# step name -> (function, name of the parameter a bare value sets, needs the image)
_STEPS: dict[str, tuple[Callable[..., Any], str | None, bool]] = {
    "fill_holes": (fill_holes, "max_area", False),
    "remove_small": (remove_small, "min_area", False),
    "keep_largest": (keep_largest, None, False),
    "erode": (erode, "radius", False),
    "dilate": (dilate, "radius", False),
    "open": (opening, "radius", False),
    "close": (closing, "radius", False),
    "smooth": (smooth_boundaries, "sigma", False),
    "split_touching": (split_touching, "min_distance", False),
    "crf": (crf_refine, "iterations", True),
}
_ALIASES = {"opening": "open", "closing": "close", "smooth_boundaries": "smooth", "dense_crf": "crf", "split": "split_touching"}


def _number(text: str, where: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number.") from None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


@dataclass
class Pipeline:
    """Post-processing steps applied in order: ``Pipeline(...)(masks, image=img) -> Masks``."""

    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def needs_image(self) -> bool:
        return any(_STEPS[name][2] for name, _ in self.steps)

    def __call__(self, target: Target, image: Any = None) -> Target:
        if self.needs_image and image is None:
            raise ConfigError("the 'crf' post-processing step needs the image: pass image=... (the segmented image).")
        for name, kwargs in self.steps:
            function, _, needs_image = _STEPS[name]
            target = function(target, image, **kwargs) if needs_image else function(target, **kwargs)
        return target

    def __str__(self) -> str:
        return ",".join(name + ("=" + ";".join(f"{k}:{v}" for k, v in kw.items()) if kw else "") for name, kw in self.steps)


def parse_pipeline(spec: str) -> Pipeline:
    """Parse ``"remove_small=64,fill_holes=64,crf"`` into a :class:`Pipeline`.

    Steps are comma-separated: ``name``, ``name=VALUE`` (sets the step's main parameter) or
    ``name=key:value;key:value``. Steps: fill_holes[=max_area], remove_small[=min_area],
    keep_largest, erode|dilate|open|close[=radius], smooth[=sigma], split_touching[=min_distance],
    crf[=iterations] (needs the image; also confidence, sxy, srgb, compat).
    """
    import inspect

    if not isinstance(spec, str):
        raise ConfigError(
            f"a post-processing pipeline is a string such as 'remove_small=64,fill_holes'; got {type(spec).__name__}."
        )
    steps: list[tuple[str, dict[str, Any]]] = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        name, _, value = (s.strip() for s in raw.partition("="))
        key = _ALIASES.get(name.lower(), name.lower())
        if key not in _STEPS:
            import difflib

            close = difflib.get_close_matches(key, list(_STEPS) + list(_ALIASES), n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown post-processing step {name!r} in {spec!r}.{hint} Known steps: {', '.join(_STEPS)}.")
        function, main_param, _ = _STEPS[key]
        kwargs: dict[str, Any] = {}
        if value:
            if ":" in value:
                allowed = [p for p in inspect.signature(function).parameters if p not in ("target", "image", "crf_params")]
                if key == "crf":
                    allowed += ["sxy", "srgb", "compat", "gaussian_sxy", "gaussian_compat"]
                for pair in value.split(";"):
                    k, sep, v = (s.strip() for s in pair.partition(":"))
                    if not sep or k not in allowed:
                        raise ConfigError(f"post-processing step {key!r}: bad parameter {pair!r}; it takes {', '.join(allowed)}.")
                    kwargs[k] = _number(v, f"{key} {k}")
            elif main_param is None:
                raise ConfigError(f"post-processing step {key!r} takes no value; write just '{key}'.")
            else:
                kwargs[main_param] = _number(value, f"post-processing step {key!r}")
        for k, v in kwargs.items():
            if v < 0:
                raise ConfigError(f"post-processing step {key!r}: {k} must be >= 0, got {v}.")
        steps.append((key, kwargs))
    return Pipeline(steps)


def apply_pipeline(masks: Target, spec_string: str, image: Any = None) -> Target:
    """Apply a ``--post`` pipeline string to ``masks`` (Masks or a label map); ``image`` is needed for crf."""
    return parse_pipeline(spec_string)(masks, image=image)
