"""Paired image + mask transforms for semantic segmentation (torchvision ``transforms.v2``).

Every geometric step moves the image and the mask together: the image is a ``tv_tensors.Image``
(uint8, (3, H, W)), the mask a ``tv_tensors.Mask`` ((H, W) class indices), resampled with nearest neighbour
at the pixel centres (never inventing class values, never shifted against its image: see :func:`resize_pair`).
Pixels created by padding, rotation or elastic warping get ``ignore_index`` in the mask (and 0 in the image).

Example::

    from imseg.semantic.transforms import build_transforms
    tf = build_transforms(512, {"hflip": 0.5, "scale": [0.5, 2.0], "rotate": 15}, train=True)
    image, mask = tf(rgb, label)   # rgb uint8 (H, W, 3), label int (H, W)
    # image: float32 (3, 512, 512) ImageNet-normalised; mask: int64 (512, 512)

Augmentation keys (``augment`` dict; missing keys take :data:`DEFAULT_AUGMENT`):

=============== ===========================================================================
``hflip``        probability of a horizontal flip
``vflip``        probability of a vertical flip
``scale``        ``[lo, hi]`` random scale relative to the letterbox size, then a random
                 ``imgsz`` crop (padded with ignore); ``None``/``[1, 1]`` = plain letterbox
``native``       True: no letterbox; each image is scaled relative to its own size by a
                 factor from ``scale`` (default ``[1, 1]``: native pixels), then a random
                 ``imgsz`` crop is taken (padded with ignore where the image is smaller).
                 Validation (``train=False``) takes the centre ``imgsz`` crop instead
``rotate90``     probability of a random multiple-of-90 degree rotation
``rotate``       maximum rotation in degrees (uniform in ``[-rotate, rotate]``)
``elastic``      probability of an elastic warp (``elastic_alpha`` scale, ``elastic_sigma`` px)
``color_jitter`` strength for brightness/contrast/saturation (float) or a dict with
                 ``brightness``, ``contrast``, ``saturation``, ``hue``
``clahe``        probability of OpenCV CLAHE on the lightness channel
``blur``         probability of a Gaussian blur (kernel 5, sigma 0.1-2.0 px)
``grayscale``    probability of turning the image grey (three equal channels)
``invert``       probability of inverting intensities (255 - value): dark objects on a light
                 background become light on dark, so either polarity teaches the other
=============== ===========================================================================

Validation/test pipelines (``native`` aside) only letterbox to ``imgsz`` (resize the longer side, keep the aspect
ratio, pad bottom/right with ignore) and normalise; ``imgsz=None`` keeps the native size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError, InputError
from ..io import letterbox_size

#: ImageNet channel statistics (RGB, for images scaled to [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Training augmentation used by ``augment="default"``; a user dict is merged over it.
DEFAULT_AUGMENT: dict[str, Any] = {
    "hflip": 0.5,
    "vflip": 0.0,
    "scale": [0.5, 2.0],
    "rotate90": 0.0,
    "rotate": 0.0,
    "elastic": 0.0,
    "elastic_alpha": 50.0,
    "elastic_sigma": 5.0,
    "color_jitter": 0.2,
    "clahe": 0.0,
    "blur": 0.0,
    "grayscale": 0.0,
    "invert": 0.0,
    "native": False,
}
#: ``augment="none"``: geometry and colour left alone (train pipeline = letterbox only).
NO_AUGMENT: dict[str, Any] = {
    "hflip": 0.0, "vflip": 0.0, "scale": None, "rotate90": 0.0, "rotate": 0.0, "elastic": 0.0,
    "elastic_alpha": 50.0, "elastic_sigma": 5.0, "color_jitter": 0.0, "clahe": 0.0, "blur": 0.0, "grayscale": 0.0,
    "invert": 0.0, "native": False,
}
_PROBABILITY_KEYS = ("hflip", "vflip", "rotate90", "elastic", "clahe", "blur", "grayscale", "invert")


def _size2(imgsz: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``imgsz`` as (H, W) or None."""
    if imgsz is None:
        return None
    if isinstance(imgsz, (int, np.integer)) and not isinstance(imgsz, bool):
        size = (int(imgsz), int(imgsz))
    elif isinstance(imgsz, Sequence) and len(imgsz) == 2 and all(isinstance(v, (int, np.integer)) for v in imgsz):
        size = (int(imgsz[0]), int(imgsz[1]))
    else:
        raise ConfigError(f"imgsz must be an int, (height, width) or None; got {imgsz!r}.")
    if min(size) < 8:
        raise ConfigError(f"imgsz {size} is too small; use at least 8 pixels per side (e.g. imgsz=512).")
    return size


def parse_augment(augment: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Resolve ``"default"``, ``"none"``/None or a dict (merged over the defaults) into a checked dict."""
    if augment is None or augment == "none" or augment is False:
        return dict(NO_AUGMENT)
    if augment == "default" or augment is True:
        return dict(DEFAULT_AUGMENT)
    if not isinstance(augment, Mapping):
        raise ConfigError(f"augment must be 'default', 'none' or a dict of settings; got {augment!r}.")
    unknown = sorted(set(augment) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ConfigError(
            f"unknown augmentation key(s) {unknown}; valid keys: {', '.join(DEFAULT_AUGMENT)}."
        )
    out = dict(DEFAULT_AUGMENT)
    if augment.get("native") and "scale" not in augment:
        out["scale"] = [1.0, 1.0]  # native crops keep each image's own pixel size unless told to zoom
    out.update(augment)
    if not isinstance(out["native"], bool):
        raise ConfigError(f"augment 'native' is true or false; got {out['native']!r}.")
    for key in _PROBABILITY_KEYS:
        value = out[key]
        if value is None:
            out[key] = 0.0
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"augment '{key}' is a probability in [0, 1]; got {value!r}.")
    scale = out["scale"]
    if scale is not None:
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            scale = [1.0 - float(scale), 1.0 + float(scale)]
        if not (isinstance(scale, Sequence) and len(scale) == 2) or not 0 < float(scale[0]) <= float(scale[1]):
            raise ConfigError(
                f"augment 'scale' must be [low, high] with 0 < low <= high (e.g. [0.5, 2.0]); got {out['scale']!r}."
            )
        out["scale"] = [float(scale[0]), float(scale[1])]
    rotate = out["rotate"]
    if isinstance(rotate, bool) or not isinstance(rotate, (int, float)) or not 0 <= float(rotate) <= 180:
        raise ConfigError(f"augment 'rotate' is a maximum angle in degrees in [0, 180]; got {rotate!r}.")
    for key in ("elastic_alpha", "elastic_sigma"):
        if isinstance(out[key], bool) or not isinstance(out[key], (int, float)) or float(out[key]) <= 0:
            raise ConfigError(f"augment '{key}' must be a positive number of pixels; got {out[key]!r}.")
    jitter = out["color_jitter"]
    if isinstance(jitter, Mapping):
        bad = sorted(set(jitter) - {"brightness", "contrast", "saturation", "hue"})
        if bad:
            raise ConfigError(f"augment 'color_jitter' keys must be brightness/contrast/saturation/hue; got {bad}.")
    elif jitter is None:
        out["color_jitter"] = 0.0
    elif isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= float(jitter) <= 1.0:
        raise ConfigError(f"augment 'color_jitter' is a strength in [0, 1] or a dict; got {jitter!r}.")
    return out


def letterbox_params(height: int, width: int, imgsz: int | Sequence[int]) -> tuple[float, int, int]:
    """Scale and resized size used by :class:`Letterbox` for an (height, width) input.

    Returns ``(scale, new_h, new_w)``: the content occupies ``[:new_h, :new_w]`` of the padded
    (imgsz_h, imgsz_w) output; undo with ``out[..., :new_h, :new_w]`` then resize to (height, width).
    """
    target = _size2(imgsz)
    assert target is not None
    return letterbox_size(height, width, target)


def resize_pair(inpt: Any, size: Sequence[int]) -> Any:
    """``inpt`` resized to ``size``: images bilinear with antialiasing, masks nearest neighbour sampled at the pixel
    centres (``NEAREST_EXACT``). torchvision's default for masks, ``NEAREST``, takes output pixel i from source pixel
    floor(i * scale): a mask shrunk by s moves (s - 1) / 2 source pixels up and left of its image (0.8 px at the
    2.6x of a 250 px photo to 96 px), which a model then learns and every prediction repeats."""
    if isinstance(inpt, tv_tensors.Mask):
        return TF.resize(inpt, list(size), interpolation=v2.InterpolationMode.NEAREST_EXACT)
    return TF.resize(inpt, list(size), antialias=True)


def pad_pair(inpt: Any, padding: Sequence[int], ignore_index: int) -> Any:
    """``inpt`` padded by ``padding`` = [left, top, right, bottom] (as ``TF.pad``): images with 0, masks with
    ``ignore_index`` (in a dtype that holds it); unchanged when every side is 0."""
    if not any(padding):
        return inpt
    fill = 0
    if isinstance(inpt, tv_tensors.Mask):
        fill, inpt = int(ignore_index), mask_holding(inpt, int(ignore_index))
    return TF.pad(inpt, list(padding), fill=fill)


def mask_holding(mask: torch.Tensor, fill: int) -> torch.Tensor:
    """``mask`` in a dtype that can hold ``fill`` (e.g. ignore_index 300 in a uint8 mask -> int32), else as is.

    Padding, cropping and rotation write ``fill`` into the mask; torch refuses values outside the dtype.
    """
    if mask.dtype == torch.bool:
        mask = mask.to(torch.uint8)
    if mask.dtype.is_floating_point:
        return mask
    info = torch.iinfo(mask.dtype)
    if info.min <= fill <= info.max:
        return mask
    wider = torch.int32 if torch.iinfo(torch.int32).min <= fill <= torch.iinfo(torch.int32).max else torch.int64
    out = mask.to(wider)
    return tv_tensors.wrap(out, like=mask) if isinstance(mask, tv_tensors.Mask) else out


class Letterbox(v2.Transform):
    """Resize the longer side to fit ``imgsz`` (aspect kept), then pad bottom/right to ``imgsz``.

    Images are resized bilinearly (antialiased) and padded with 0; masks nearest-neighbour and
    padded with ``ignore_index``.
    """

    def __init__(self, imgsz: int | Sequence[int], ignore_index: int = 255, factor: int = 1) -> None:
        super().__init__()
        size = _size2(imgsz)
        assert size is not None
        self.size, self.factor = (size[0] * factor, size[1] * factor), int(factor)
        self.ignore_index = int(ignore_index)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        k = self.factor
        _, new_h, new_w = letterbox_params(height, width, (self.size[0] // k, self.size[1] // k))
        return {"new_size": (new_h * k, new_w * k)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        new_h, new_w = params["new_size"]
        if tuple(inpt.shape[-2:]) != (new_h, new_w):
            inpt = resize_pair(inpt, [new_h, new_w])
        return pad_pair(inpt, [0, 0, self.size[1] - new_w, self.size[0] - new_h], self.ignore_index)


class RandomResizeBy(v2.Transform):
    """Resize image and mask by a factor drawn uniformly from ``scale`` = (lo, hi), relative to the input's own
    size (images bilinear with antialiasing, masks nearest): zoom jitter that keeps mixed-size images at their
    native pixel scale on average, unlike ``v2.ScaleJitter``, whose factor is relative to a fixed target size."""

    def __init__(self, scale: Sequence[float]) -> None:
        super().__init__()
        self.scale = (float(scale[0]), float(scale[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = float(torch.empty(()).uniform_(*self.scale))
        return {"size": (max(1, round(height * factor)), max(1, round(width * factor)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if tuple(inpt.shape[-2:]) == params["size"]:
            return inpt
        return resize_pair(inpt, list(params["size"]))


class ScaleJitter(v2.Transform):
    """Resize to the letterbox scale of ``target_size`` times a factor drawn from ``scale_range`` (as
    ``v2.ScaleJitter``, with the same draw), masks at the pixel centres (:func:`resize_pair`).

    ``factor`` k makes the view k times larger: the size is worked out at ``target_size / k`` and multiplied by k,
    so a pipeline built with ``factor=k`` makes, from one seed, exactly the view of the one built with ``factor=1``
    at k times its pixels (see :meth:`SegmentationTransform.at_size`).
    """

    def __init__(self, target_size: Sequence[int], scale_range: Sequence[float], factor: int = 1) -> None:
        super().__init__()
        self.target_size, self.scale_range = (int(target_size[0]), int(target_size[1])), tuple(scale_range)
        self.factor = int(factor)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        scale = low + torch.rand(1) * (high - low)
        ratio = min(self.target_size[0] / height, self.target_size[1] / width) * scale
        k = self.factor
        return {"size": (int(height * ratio) * k, int(width * ratio) * k)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return resize_pair(inpt, list(params["size"]))


class RandomPlace(v2.Transform):
    """A random ``size`` window: each side longer than the window is cropped, each shorter one padded (image 0,
    mask ``fill``), at a position drawn as a fraction of the room (``floor(u * (room + 1))``, u uniform in [0, 1)).

    ``factor`` k: the window and the input are k times those of ``factor=1`` (after :class:`ScaleJitter` with the
    same factor); the position is drawn at 1/k of the size and multiplied by k, so the window is exactly that of
    ``factor=1`` at k times its pixels.
    """

    def __init__(self, size: int | Sequence[int], fill: int = 255, factor: int = 1) -> None:
        super().__init__()
        resolved = _size2(size)
        assert resolved is not None
        self.size, self.fill, self.factor = (resolved[0] * factor, resolved[1] * factor), int(fill), int(factor)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        u, k = torch.rand(2), self.factor
        offsets = [k * int(float(u[i]) * (abs(side // k - want // k) + 1)) for i, (side, want) in
                   enumerate(((height, self.size[0]), (width, self.size[1])))]
        return {"offsets": offsets, "shape": (height, width)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        (height, width), (oy, ox) = params["shape"], params["offsets"]
        want_h, want_w = self.size
        pad_top, pad_left = (oy if height < want_h else 0), (ox if width < want_w else 0)
        inpt = pad_pair(inpt, [pad_left, pad_top, max(0, want_w - width - pad_left), max(0, want_h - height - pad_top)],
                        self.fill)
        top, left = (oy if height > want_h else 0), (ox if width > want_w else 0)
        return TF.crop(inpt, top, left, want_h, want_w)


class CenterCropPad(v2.Transform):
    """The centre ``imgsz`` crop at native resolution; sides shorter than ``imgsz`` are padded bottom/right (image
    0, mask ``ignore_index``) so every output has the same size and batches."""

    def __init__(self, imgsz: int | Sequence[int], ignore_index: int = 255) -> None:
        super().__init__()
        size = _size2(imgsz)
        assert size is not None
        self.size, self.ignore_index = size, int(ignore_index)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        inpt = pad_pair(inpt, [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)], self.ignore_index)
        return TF.center_crop(inpt, list(self.size))


class RandomRot90(v2.Transform):
    """With probability ``p``, rotate image and mask by k*90 degrees, k uniform in {1, 2, 3}."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"k": 0}
        return {"k": int(torch.randint(1, 4, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0 or not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1)), like=inpt)


class RandomCLAHE(v2.Transform):
    """With probability ``p``, OpenCV CLAHE on the L channel of Lab (uint8 images only; masks untouched)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, p: float = 0.5, clip_limit: float = 2.0, tile_grid: int = 8) -> None:
        super().__init__()
        self.p = float(p)
        self.clip_limit = float(clip_limit)
        self.tile_grid = int(tile_grid)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": bool(torch.rand(()) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        import cv2

        rgb = np.ascontiguousarray(inpt.permute(1, 2, 0).numpy())
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid))
        lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        return tv_tensors.wrap(torch.from_numpy(out).permute(2, 0, 1).contiguous(), like=inpt)


class RandomElastic(v2.Transform):
    """With probability ``p``, a smooth random warp (Simard et al. 2003), done with OpenCV ``remap``.

    The displacement is uniform noise in [-1, 1] blurred with a Gaussian of ``sigma`` px and scaled
    by ``alpha``; images are sampled bilinearly (outside -> 0), masks nearest (outside -> ignore).
    Much faster on CPU than ``v2.ElasticTransform`` for the same effect.
    """

    def __init__(self, p: float = 0.5, alpha: float = 50.0, sigma: float = 5.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.p, self.alpha, self.sigma = float(p), float(alpha), float(sigma)
        self.ignore_index = int(ignore_index)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"maps": None}
        import cv2

        height, width = v2.query_size(flat_inputs)
        noise = (torch.rand((2, height, width)) * 2.0 - 1.0).numpy()
        dx = cv2.GaussianBlur(noise[0], (0, 0), self.sigma) * self.alpha
        dy = cv2.GaussianBlur(noise[1], (0, 0), self.sigma) * self.alpha
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        return {"maps": (grid_x + dx.astype(np.float32), grid_y + dy.astype(np.float32))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        maps = params["maps"]
        if maps is None or not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        import cv2

        if isinstance(inpt, tv_tensors.Image):
            array = np.ascontiguousarray(inpt.permute(1, 2, 0).numpy())
            out = cv2.remap(array, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            if out.ndim == 2:
                out = out[:, :, None]
            return tv_tensors.wrap(torch.from_numpy(out).permute(2, 0, 1).contiguous(), like=inpt)
        array = inpt.numpy()
        work = array if array.dtype in (np.uint8, np.uint16, np.int16) else array.astype(np.float32)
        out = cv2.remap(work, maps[0], maps[1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=self.ignore_index)
        return tv_tensors.wrap(torch.from_numpy(out.astype(array.dtype, copy=False)), like=inpt)


def _writable(array: np.ndarray) -> np.ndarray:
    """Contiguous, writable view or copy (torch refuses to wrap read-only numpy memory)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


class SegmentationTransform:
    """Callable ``(rgb uint8 (H,W,3), mask int (H,W)) -> (float32 (3,h,w), int64 (h,w))``.

    ``pipeline`` is the v2 transform applied to the uint8 image and the mask; normalisation with
    ImageNet mean/std comes last (``normalize=False`` returns float32 in [0, 1]). ``ignore_index``
    (the value padding/rotation write into masks) widens masks whose dtype cannot hold it.
    """

    def __init__(self, pipeline: v2.Transform | None, normalize: bool = True, ignore_index: int | None = None) -> None:
        self.pipeline = pipeline
        self.normalize = normalize
        self.ignore_index = ignore_index
        self.recipe: dict[str, Any] | None = None  # build_transforms' arguments, when it built this transform

    def at_size(self, imgsz: int) -> SegmentationTransform | None:
        """This transform making its views k times larger, where ``imgsz`` is k times its own (an integer): from
        one seed, exactly the same view (zoom, crop window, flip and colours) at k times the pixels, so pixel (i,
        j) of a view covers pixels [k i, k i + k) x [k j, k j + k) of its twin. None where no such twin exists:
        ``imgsz`` not a multiple, a transform not made by :func:`build_transforms`, native-resolution crops (a
        larger ``imgsz`` crops a larger region there), rotations, elastic warps and blur (resampled or sized per
        pixel)."""
        recipe = self.recipe
        if recipe is None or recipe["imgsz"] is None:
            return None
        own = _size2(recipe["imgsz"])
        assert own is not None
        if int(imgsz) % max(own) or max(own) != min(own) or int(imgsz) < max(own):
            return None
        aug = parse_augment(recipe["augment"])
        if aug["native"] or (recipe["train"] and (aug["elastic"] > 0 or aug["rotate"] > 0 or aug["blur"] > 0)):
            return None
        factor = int(imgsz) // max(own)
        transform = SegmentationTransform(build_pipeline(recipe["imgsz"], recipe["augment"], recipe["train"],
                                                         recipe["ignore_index"], factor=factor),
                                          normalize=recipe["normalize"], ignore_index=recipe["ignore_index"])
        transform.recipe = recipe
        return transform

    def __call__(self, image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_t = image if isinstance(image, torch.Tensor) else torch.from_numpy(_writable(image)).permute(2, 0, 1)
        mask_t = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(_writable(mask))
        if self.pipeline is not None and self.ignore_index is not None:
            mask_t = mask_holding(mask_t, int(self.ignore_index))
        img = tv_tensors.Image(img_t)
        msk = tv_tensors.Mask(mask_t)
        if self.pipeline is not None:
            img, msk = self.pipeline(img, msk)
        out = TF.to_dtype(img.as_subclass(torch.Tensor), torch.float32, scale=True)
        if self.normalize:
            out = TF.normalize(out, list(IMAGENET_MEAN), list(IMAGENET_STD))
        target = msk.as_subclass(torch.Tensor).to(torch.int64, copy=self.pipeline is None).contiguous()
        return out.contiguous(), target

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.pipeline!r}, normalize={self.normalize})"


def build_pipeline(
    imgsz: int | Sequence[int] | None,
    augment: str | Mapping[str, Any] | None = "default",
    train: bool = True,
    ignore_index: int = 255,
    factor: int = 1,
) -> v2.Compose | None:
    """The uint8 v2 pipeline (no normalisation) behind :func:`build_transforms`; ``factor`` k makes each view k
    times larger, exactly (for letterbox views: see :meth:`SegmentationTransform.at_size`)."""
    size = _size2(imgsz)
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: int(ignore_index)}
    steps: list[v2.Transform] = []
    aug = parse_augment(augment)
    zoom = aug["scale"] is not None and aug["scale"] != [1.0, 1.0]
    if not train:
        if size is not None:
            steps.append(CenterCropPad(size, ignore_index) if aug["native"] else Letterbox(size, ignore_index, factor))
        return v2.Compose(steps) if steps else None
    if size is not None:
        if aug["native"]:
            if zoom:
                steps.append(RandomResizeBy(aug["scale"]))
        elif zoom:
            steps.append(ScaleJitter(size, tuple(aug["scale"]), factor))
        else:
            steps.append(Letterbox(size, ignore_index, factor))
    if aug["rotate90"] > 0:
        steps.append(RandomRot90(aug["rotate90"]))
    if size is not None and (zoom or aug["native"]):
        steps.append(RandomPlace(size, int(ignore_index), factor))
    if aug["hflip"] > 0:
        steps.append(v2.RandomHorizontalFlip(aug["hflip"]))
    if aug["vflip"] > 0:
        steps.append(v2.RandomVerticalFlip(aug["vflip"]))
    if aug["rotate"] > 0:
        steps.append(v2.RandomRotation(float(aug["rotate"]), fill=fill))
    if aug["elastic"] > 0:
        steps.append(RandomElastic(aug["elastic"], float(aug["elastic_alpha"]), float(aug["elastic_sigma"]), ignore_index))
    jitter = aug["color_jitter"]
    if isinstance(jitter, Mapping):
        steps.append(v2.ColorJitter(**{k: float(v) for k, v in jitter.items()}))
    elif jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if aug["clahe"] > 0:
        steps.append(RandomCLAHE(aug["clahe"]))
    if aug["blur"] > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=aug["blur"]))
    if aug["grayscale"] > 0:  # image only: masks pass through colour transforms
        steps.append(v2.RandomGrayscale(aug["grayscale"]))
    if aug["invert"] > 0:
        steps.append(v2.RandomInvert(aug["invert"]))
    return v2.Compose(steps) if steps else None


def build_transforms(
    imgsz: int | Sequence[int] | None = 512,
    augment: str | Mapping[str, Any] | None = "default",
    train: bool = True,
    ignore_index: int = 255,
    normalize: bool = True,
) -> SegmentationTransform:
    """Paired transform for a dataset split.

    Args:
        imgsz: output size (int or (H, W)); None keeps each image's size (no resize, no crop).
        augment: ``"default"``, ``"none"`` or a dict of the keys in :data:`DEFAULT_AUGMENT`.
        train: random augmentation when True; otherwise letterbox only (``augment`` ignored but for ``native``:
            the centre ``imgsz`` crop at native resolution).
        ignore_index: mask value given to padded / rotated-in pixels.
        normalize: subtract ImageNet mean and divide by std.
    """
    transform = SegmentationTransform(build_pipeline(imgsz, augment, train, ignore_index), normalize=normalize,
                                      ignore_index=ignore_index)
    transform.recipe = {"imgsz": imgsz, "augment": augment, "train": train, "ignore_index": ignore_index,
                        "normalize": normalize}
    return transform


def denormalize(
    image: torch.Tensor | np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Undo normalisation (ImageNet by default; 0..1 units): float (3, H, W) -> RGB uint8 (H, W, 3)."""
    tensor = torch.as_tensor(image).detach().cpu().float()
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise InputError(f"denormalize expects a (3, H, W) image tensor; got shape {tuple(tensor.shape)}.")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (tensor * std_t + mean_t).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).contiguous().numpy()
