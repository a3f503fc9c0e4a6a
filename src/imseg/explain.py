"""Class activation maps (Grad-CAM, Grad-CAM++, HiResCAM) for semantic runs and SAM masks.

Built on the ``grad-cam`` package (``pytorch_grad_cam``): the map of a semantic class is the package's
CAM with ``SemanticSegmentationTarget`` (the sum of the class's logits over its predicted pixels, or
over a region the caller gives) on the network input, cropped to the image and scaled to its size.
For SAM the target is the sum of the predicted mask's low-resolution logits inside that mask for one
prompt, and the layer is in the image encoder; transformer tokens are reshaped to (B, C, h, w) maps
(:func:`channels_last_to_map` for ViT and Hiera blocks, :func:`tokens_to_map` for TinyViT stages).

``explain(model, image, ...)`` dispatches on the model: a run directory or
:class:`~imseg.semantic.infer.SemanticSegmenter` -> :func:`explain_semantic`, a SAM segmenter or
``Sam`` model -> :func:`explain_sam`. The result's ``overlay(image)`` is an RGB heat map over the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, InputError, require

METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM"}
_METHOD_ALIASES = {"grad-cam": "gradcam", "gradcampp": "gradcam++", "grad-cam++": "gradcam++", "hires-cam": "hirescam"}


@dataclass
class Explanation:
    """A class activation map at the image's size.

    ``cam``: (H, W) float32 in [0, 1] (the package's min-max scaling over the network input);
    ``region``: (H, W) bool, the pixels whose logits formed the target; ``target``: class name or "mask";
    ``layer``: the module name the map was taken at.
    """

    cam: np.ndarray
    region: np.ndarray
    target: str
    method: str
    layer: str

    def overlay(self, image: Any, image_weight: float = 0.5) -> np.ndarray:
        """(H, W, 3) uint8 RGB: the jet-coloured map blended over ``image`` (``image_weight`` of the image)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        from .io import read_image

        rgb = read_image(image)
        if rgb.shape[:2] != self.cam.shape:
            raise InputError(f"overlay: the image is {rgb.shape[:2]} but the map is {self.cam.shape}; pass the image "
                             "that was explained.")
        if not 0.0 <= image_weight <= 1.0:
            raise ConfigError(f"image_weight must be in [0, 1], got {image_weight}")
        return show_cam_on_image(rgb.astype(np.float32) / 255.0, self.cam, use_rgb=True, image_weight=image_weight)


def cam_class(method: str):
    """The ``pytorch_grad_cam`` class of ``method`` (gradcam, gradcam++, hirescam)."""
    key = _METHOD_ALIASES.get(str(method).strip().lower(), str(method).strip().lower())
    if key not in METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}.")
    module = require("pytorch_grad_cam", "explain", "Class activation maps (imseg explain)")
    return getattr(module, METHODS[key])


def channels_last_to_map(x):
    """ViT / Hiera block output (B, h, w, C) -> (B, C, h, w)."""
    return x.permute(0, 3, 1, 2)


def tokens_to_map(x):
    """TinyViT stage output: tokens (B, L, C) on a square grid -> (B, C, sqrt(L), sqrt(L)); maps pass through."""
    if x.ndim == 4:
        return x
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise InputError(f"cannot lay {x.shape[1]} tokens on a square grid; pass a layer with a square token grid.")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def get_layer(model, name: str):
    """``model.get_submodule(name)`` with an error listing the top-level modules."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        top = ", ".join(n for n, _ in model.named_children())
        raise ConfigError(f"layer {name!r} not found in {type(model).__name__} ({exc}); top-level modules: {top}. "
                          "Pass a dotted module name such as 'decoder' or 'encoder.layer4'.") from None


def _last_map_module(model, scope, x) -> str:
    """Name (in ``model``) of the module under ``scope`` whose (B, C, h, w) output is computed last in a forward
    pass: a stage finishes after its blocks, so this is the scope's last stage."""
    names = {id(m): n for n, m in model.named_modules()}
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, _in, out: seen.append(names[id(mod)])
                                     if isinstance(out, torch.Tensor) and out.ndim == 4 else None)
             for m in scope.modules() if m is not scope]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ConfigError(f"no module under {names.get(id(scope), 'the encoder')!r} outputs a (B, C, h, w) map; "
                          "pass layer= a module name.")
    return seen[-1]


def default_semantic_layer(model, x, which: str = "decoder") -> str:
    """The module name to take a semantic model's map at: ``which="decoder"`` (the decoder's output, i.e. its
    last block; for torchvision models the head's last feature layer) or ``"encoder"`` (the encoder's last
    stage). ``x``: a (1, 3, h, w) input the model accepts (used to find the encoder's last stage)."""
    if which not in ("decoder", "encoder"):
        raise ConfigError(f"default layer must be 'decoder' or 'encoder', got {which!r}")
    inner = getattr(model, "inner", None)
    if inner is not None and hasattr(inner, "classifier"):  # torchvision segmentation wrapper
        if which == "encoder":
            return "inner.backbone." + list(dict(inner.backbone.named_children()))[-1]
        head = inner.classifier
        return "inner.classifier.cbr" if hasattr(head, "cbr") else f"inner.classifier.{len(head) - 2}"
    if hasattr(model, which):
        return which if which == "decoder" else _last_map_module(model, getattr(model, which), x)
    raise ConfigError(f"{type(model).__name__} has no {which!r}; pass layer= a module name (e.g. one of "
                      f"{', '.join(n for n, _ in model.named_children())}).")


def run_cam(model, x, target_mask: np.ndarray, channel: int, layer, method: str,
            reshape_transform: Callable | None = None) -> np.ndarray:
    """The package's CAM of ``model`` on ``x`` (1, C, h, w) for ``SemanticSegmentationTarget(channel, mask)``:
    (h, w) float32 in [0, 1]."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    target = SemanticSegmentationTarget(channel, np.ascontiguousarray(target_mask, dtype=np.float32))
    with torch.enable_grad(), cam_class(method)(model=model, target_layers=[layer],
                                                reshape_transform=reshape_transform) as cam:
        return cam(input_tensor=x, targets=[target])[0]


def _resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if cam.shape == tuple(size):
        return cam.astype(np.float32)
    return np.clip(cv2.resize(cam.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR), 0, 1)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if mask.shape == tuple(size):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)


def _check_region(mask: Any, size: tuple[int, int]) -> np.ndarray:
    region = np.asarray(mask)
    if region.ndim == 3 and region.shape[-1] in (1, 3, 4):
        region = region[..., 0]
    if region.shape != tuple(size):
        raise InputError(f"mask must be (H, W) = {tuple(size)} like the image, got {region.shape}.")
    region = region > 0 if region.dtype != bool else region
    if not region.any():
        raise InputError("mask is empty: give at least one pixel of the region to explain.")
    return region


# ----------------------------------------------------------------------------------------------- semantic
def _class_index(target: int | str | None, class_names: list[str], label_map: np.ndarray) -> int:
    """A class name (any case) or id -> id; None -> the most frequent predicted non-background class."""
    if target is None:
        ids, counts = np.unique(label_map, return_counts=True)
        keep = ids != 0 if len(ids) > 1 else np.ones_like(ids, bool)
        return int(ids[keep][np.argmax(counts[keep])])
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        lowered = [n.lower() for n in class_names]
        if target.strip().lower() not in lowered:
            raise ConfigError(f"class {target!r} is not one of this run's classes: {', '.join(class_names)}.")
        return lowered.index(target.strip().lower())
    index = int(target)
    if not 0 <= index < len(class_names):
        raise ConfigError(f"class id {index} out of range: this run has {len(class_names)} classes "
                          f"({', '.join(class_names)}).")
    return index


class TwoChannel(torch.nn.Module):
    """A single-logit binary model as (background, foreground) logits (-z, z), so class ids index channels."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return torch.cat([-z, z], 1)


def semantic_input(segmenter, rgb: np.ndarray):
    """The network input the segmenter would see at scale 1 (no tiling): (1, 3, s, s) normalised tensor and
    the (h, w) of the image inside it. Letterboxed to ``imgsz`` for ``resize=True`` runs, else native size
    padded (edge-replicated) to the model's input multiple."""
    from .io import letterbox_rgb

    if segmenter.resize:
        canvas, inner = letterbox_rgb(rgb, segmenter.imgsz)
    else:
        canvas, inner = rgb, rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).float() / 255.0
    x = ((x - segmenter.mean) / segmenter.std)[None]
    step = segmenter.input_multiple
    pad_h, pad_w = -x.shape[2] % step, -x.shape[3] % step
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x.to(segmenter.device), inner


def explain_semantic(model: Any, image: Any, *, target: int | str | None = None, mask: Any = None,
                     method: str = "gradcam", layer: str | None = None, device: str = "auto") -> Explanation:
    """Class activation map of a semantic run for one class.

    Args:
        model: a run directory / checkpoint path or a loaded ``SemanticSegmenter``.
        image: any image source (:func:`imseg.read_image`).
        target: class name or id; None = the most frequent predicted non-background class.
        mask: optional (H, W) region at the image's size: its pixels form the target instead of the class's
            predicted pixels.
        method: gradcam, gradcam++ or hirescam.
        layer: dotted module name, or "decoder" (default: the decoder's output) / "encoder" (its last stage).
    """
    from .io import read_image
    from .semantic.infer import SemanticSegmenter, load_run

    seg = model if isinstance(model, SemanticSegmenter) else load_run(model, device=device)
    rgb = read_image(image)
    x, (inner_h, inner_w) = semantic_input(seg, rgb)
    with torch.no_grad():
        logits = seg.model(x)
    single = logits.shape[1] == 1
    label_map = (logits[0, 0] > 0).long() if single else logits[0].argmax(0)
    label_map = label_map.cpu().numpy()
    valid = np.zeros(label_map.shape, bool)
    valid[:inner_h, :inner_w] = True
    index = _class_index(target, seg.class_names, label_map[:inner_h, :inner_w])
    if mask is not None:
        region_in = np.zeros(label_map.shape, bool)
        region_in[:inner_h, :inner_w] = _resize_mask(_check_region(mask, rgb.shape[:2]), (inner_h, inner_w))
    else:
        region_in = (label_map == index) & valid
        if not region_in.any():
            raise InputError(f"class {seg.class_names[index]!r} is not predicted anywhere in this image; pass mask= "
                             "(--mask) to explain a region of your choice, or pick a predicted class.")
    name = layer if layer not in (None, "decoder", "encoder") else default_semantic_layer(seg.model, x, layer or "decoder")
    get_layer(seg.model, name)
    net = TwoChannel(seg.model).eval() if single else seg.model
    name_in_net = f"inner.{name}" if single else name
    cam = run_cam(net, x, region_in, index, get_layer(net, name_in_net), method)
    size = rgb.shape[:2]
    return Explanation(_resize_map(cam[:inner_h, :inner_w], size), _resize_mask(region_in[:inner_h, :inner_w], size),
                       "mask" if mask is not None else seg.class_names[index], method, name)



# ----------------------------------------------------------------------------------------------- SAM
def _sam_model(model: Any):
    """A ``Sam`` from a SAM segmenter, a predictor or the model itself."""
    for attr in ("predictor", "model"):
        if hasattr(model, attr) and not hasattr(model, "image_encoder"):
            model = getattr(model, attr)
    if not (hasattr(model, "image_encoder") and hasattr(model, "mask_decoder")):
        raise ConfigError(f"explain_sam needs a SAM model or segmenter (imseg.load('mobile-sam', ...)), "
                          f"got {type(model).__name__}.")
    return model


def default_sam_layer(sam) -> str:
    """The image encoder's last transformer block (ViT, Hiera) or last stage (TinyViT)."""
    encoder = sam.image_encoder
    if hasattr(encoder, "layers"):
        return f"image_encoder.layers.{len(encoder.layers) - 1}"
    if hasattr(encoder, "blocks"):
        return f"image_encoder.blocks.{len(encoder.blocks) - 1}"
    raise ConfigError(f"no default layer for the image encoder {type(encoder).__name__}; pass layer=.")


def sam_reshape_transform(sam, layer: str) -> Callable | None:
    """How a layer's output becomes (B, C, h, w): ViT/Hiera blocks are channels-last, TinyViT stages are
    token sequences, convolutions (the neck, TinyViT's first stage) are maps already."""
    if layer.startswith("image_encoder.blocks.") and layer.count(".") == 2:
        return channels_last_to_map
    if layer.startswith("image_encoder.layers."):
        return tokens_to_map
    return None


class PromptedMask(torch.nn.Module):
    """``sam`` as image -> mask logits for fixed prompts: (1, 3, S, S) preprocessed image ->
    (1, 1, 256, 256) low-resolution logits of mask output ``index``."""

    def __init__(self, sam, points, labels, box, multimask: bool, index: int = 0) -> None:
        super().__init__()
        self.sam, self.index, self.multimask = sam, index, multimask
        self.points = None if points is None else (points, labels)
        self.box = box

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_outputs(x)[0][:, self.index : self.index + 1]

    def all_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, 256, 256) low-resolution logits and (B, M) predicted IoUs of every mask output."""
        emb = self.sam.image_encoder(x)
        sparse, dense = self.sam.prompt_encoder(points=self.points, boxes=self.box, masks=None)
        return self.sam.mask_decoder(emb, self.sam.prompt_encoder.get_dense_pe(), sparse, dense, self.multimask)


def _sam_prompts(sam, transform, points, labels, box, size):
    from .prompts import validate_box, validate_points

    dev = sam.device
    coords, lab_np = validate_points(points, labels, size)
    box_np = validate_box(box, size)
    if box_np is not None and box_np.ndim == 2 and len(box_np) != 1:
        raise InputError(f"explain_sam explains one mask: pass one box, got {len(box_np)}.")
    pts = lab = bx = None
    if coords is not None:
        pts = torch.as_tensor(transform.apply_coords(coords, size), dtype=torch.float32, device=dev)[None]
        lab = torch.as_tensor(lab_np, dtype=torch.int64, device=dev)[None]
    if box_np is not None:
        bx = torch.as_tensor(transform.apply_boxes(box_np.reshape(1, 4), size), dtype=torch.float32, device=dev)
    if pts is None and bx is None:
        raise InputError("explain_sam needs a prompt: points=[(x, y)] (with labels) and/or box=(x0, y0, x1, y1).")
    return pts, lab, bx


def explain_sam(model: Any, image: Any, *, points: Any = None, labels: Any = None, box: Any = None,
                multimask: bool = True, method: str = "gradcam", layer: str | None = None) -> Explanation:
    """Activation map, on SAM's image encoder, of the mask predicted for one prompt.

    The target is the sum of the predicted mask's low-resolution (256 x 256) logits inside that mask;
    with ``multimask`` the mask with the highest predicted IoU is explained. ``layer``: a module name in the
    ``Sam`` model (default :func:`default_sam_layer`); points and box are in image pixels.
    """
    from .io import read_image
    from .sam.transforms import ResizeLongestSide

    sam = _sam_model(model)
    rgb = read_image(image)
    size = rgb.shape[:2]
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = np.array(transform.apply_image(rgb))
    tensor = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1)[None].float()
    x = sam.preprocess(tensor)
    pts, lab, bx = _sam_prompts(sam, transform, points, labels, box, size)
    net = PromptedMask(sam, pts, lab, bx, multimask)
    with torch.no_grad():
        low_res, iou = net.all_outputs(x)
    net.index = int(iou[0].argmax()) if multimask else 0
    region = (low_res[0, net.index] > sam.mask_threshold).cpu().numpy()
    if not region.any():
        raise InputError("the predicted mask for this prompt is empty, so there is nothing to explain; "
                         "move the point or box onto an object.")
    name = layer or default_sam_layer(sam)
    get_layer(sam, name)
    cam = run_cam(net, x, region, 0, get_layer(net, f"sam.{name}"), method, sam_reshape_transform(sam, name))
    in_h, in_w = resized.shape[:2]
    with torch.no_grad():
        full = sam.postprocess_masks(low_res[:, net.index : net.index + 1], (in_h, in_w), size)[0, 0]
    return Explanation(_resize_map(cam[:in_h, :in_w], size), (full > sam.mask_threshold).cpu().numpy(),
                       "mask", method, name)


def explain(model: Any, image: Any, *, target: int | str | None = None, mask: Any = None, points: Any = None,
            labels: Any = None, box: Any = None, method: str = "gradcam", layer: str | None = None,
            device: str = "auto") -> Explanation:
    """Class activation map for a semantic run (``target`` class or ``mask`` region, see
    :func:`explain_semantic`) or for a SAM mask (``points``/``box`` prompt, see :func:`explain_sam`)."""
    from .semantic.infer import SemanticSegmenter

    is_run = isinstance(model, SemanticSegmenter) or isinstance(model, str | bytes) or hasattr(model, "__fspath__")
    if is_run:
        if points is not None or box is not None:
            raise ConfigError("points/box prompts are for SAM models; a semantic run takes target= (class) or mask=.")
        return explain_semantic(model, image, target=target, mask=mask, method=method, layer=layer, device=device)
    if target is not None or mask is not None:
        raise ConfigError("target=/mask= are for semantic runs; explain a SAM model with points= or box=.")
    return explain_sam(model, image, points=points, labels=labels, box=box, method=method, layer=layer)
