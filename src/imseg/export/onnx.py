"""ONNX export: SAM image encoder + prompt decoder, semantic models.

The SAM decoder keeps the official ONNX interface of segment-anything so that existing consumers
work unchanged::

    image_embeddings (1, 256, 64, 64) float32   point_coords (B, N, 2) float32 (1024-frame pixels)
    point_labels     (B, N) float32             mask_input   (1, 1, 256, 256) float32
    has_mask_input   (1,) float32               orig_im_size (2,) float32 (H, W)
      -> masks (B, M, H, W) logits, iou_predictions (B, M), low_res_masks (B, M, 256, 256)

``M`` is 4 (single-mask token first, then the three multimask tokens) or 1 with
``single_mask=True`` (the official "return_single_mask" selection). Labels: 1 foreground,
0 background, 2/3 box corners, -1 padding point. ``N`` (points) and ``B`` (prompt batch) are dynamic.

Models are exported with the TorchScript-based ``torch.onnx.export(dynamo=False)``: the dynamo
exporter cannot express the data-dependent output size ``orig_im_size`` of the decoder.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExportError, require

#: SAM pixel normalisation, RGB, in 0..255 units (same as the official models).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
DEFAULT_OPSET = 17
MANIFEST = "imseg_export.json"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")


def check_out_dir(out: str | os.PathLike) -> Path:
    """Refuse an export directory path that is (or lies under) an existing file, without creating anything."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ExportError(f"export output {path} exists and is a file; pass a directory path (it is created if missing).")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"export output {path} lies under {parent}, which is a file; pass a directory path.")
            break
    return path


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create the export directory; refuse a path that exists as a file."""
    path = check_out_dir(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create export directory {path}: {exc}") from exc
    return path


def max_opset() -> int:
    """The highest opset the TorchScript-based ``torch.onnx.export`` writes (20 on torch 2.x)."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:  # pragma: no cover - older/newer torch without the constant
        return 20
    return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def check_opset(opset: int) -> int:
    """``opset`` if the exporter can write it (17 <= opset <= :func:`max_opset`), else :class:`ConfigError`."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ConfigError(f"opset must be an integer, got {opset!r}.")
    if opset < 17:
        raise ConfigError(f"opset must be >= 17 (LayerNorm and the SAM decoder need it); got {opset}.")
    top = max_opset()
    if opset > top:
        raise ConfigError(f"opset {opset} is above {top}, the highest this torch's ONNX exporter writes; "
                          f"use --opset between 17 and {top} (default {DEFAULT_OPSET}).")
    return opset


def _torch_onnx_export(module, args: tuple, path: Path, *, input_names, output_names, dynamic_axes, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter, to a temp file moved into place."""
    import torch

    check_opset(opset)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, and tracing warns about
            # python-int conversions that are constant for SAM (embedding size, token count).
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    args,
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    do_constant_folding=True,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=dynamic_axes,
                )
        os.replace(tmp, path)
    except Exception as exc:  # torch raises many types here; report them as one
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def check_onnx(path: str | os.PathLike) -> None:
    """Run ``onnx.checker`` on a saved model (by path, so models > 2 GB work too)."""
    onnx = require("onnx", "export", "ONNX export")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path}: onnx.checker rejected the exported model: {exc}") from exc


def set_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into the model's ``metadata_props`` (values JSON-encoded unless str)."""
    onnx = require("onnx", "export", "ONNX export")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def simplify(path: str | os.PathLike) -> bool:
    """Simplify in place with onnxsim when installed; returns False (with a warning) otherwise."""
    try:
        import onnxsim  # type: ignore[import-not-found]
    except ImportError:
        warnings.warn(
            "onnxsim is not installed; the export is kept unsimplified (it is valid as is). "
            "Install it with: pip install onnxsim",
            stacklevel=2,
        )
        return False
    import onnx

    model, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise ExportError(f"{path}: onnxsim could not validate the simplified model; export again without --simplify.")
    onnx.save(model, str(path))
    return True


# ============================================================================ SAM wrappers
def _sam_modules():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SamEncoderOnnx(nn.Module):
        """Image encoder. Input: preprocessed (1, 3, S, S) float32, or with ``raw_input`` an RGB uint8
        (H, W, 3) image that is resized (longest side S, bilinear), normalised and zero-padded inside
        the graph. Output: ``image_embeddings`` (1, 256, S/16, S/16); raw input also returns
        ``input_size`` (2,) int64, the resized (h, w) before padding."""

        def __init__(self, sam, raw_input: bool) -> None:
            super().__init__()
            self.image_encoder = sam.image_encoder
            self.img_size = int(sam.image_encoder.img_size)
            self.raw_input = raw_input
            self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

        def forward(self, image):
            if not self.raw_input:
                return self.image_encoder(image)
            hw = torch._shape_as_tensor(image)[:2].to(torch.float32)  # traced as a dynamic Shape op
            # the short side of an extreme aspect ratio (1x3000) would round to 0 px: keep it >= 1
            size = torch.clamp(torch.floor(hw * (self.img_size / hw.max()) + 0.5), min=1.0).to(torch.int64)
            x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
            x = F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)
            # the official pipeline resizes a uint8 image: round and clamp the same way
            x = torch.clamp(torch.round(x), 0.0, 255.0)
            x = (x - self.pixel_mean) / self.pixel_std
            x = F.pad(x, (0, self.img_size - size[1], 0, self.img_size - size[0]))
            return self.image_encoder(x), size

    class SamDecoderOnnx(nn.Module):
        """Prompt encoder + mask decoder + upscaling, with the official SAM ONNX interface."""

        def __init__(self, sam, single_mask: bool) -> None:
            super().__init__()
            self.prompt_encoder = sam.prompt_encoder
            self.mask_decoder = sam.mask_decoder
            self.img_size = int(sam.image_encoder.img_size)
            self.single_mask = single_mask

        def embed_points(self, coords, labels):
            pe = self.prompt_encoder
            emb = pe.pe_layer._pe_encoding((coords + 0.5) / self.img_size)  # (B, N, C)
            lab = labels.unsqueeze(-1)
            emb = emb * (lab != -1) + pe.not_a_point_embed.weight * (lab == -1)
            for i in range(pe.num_point_embeddings):
                emb = emb + pe.point_embeddings[i].weight * (lab == i)
            return emb

        def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
            pe = self.prompt_encoder
            sparse = self.embed_points(point_coords, point_labels)
            dense = has_mask_input * pe.mask_downscaling(mask_input)
            dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            low_res, iou = self.mask_decoder.predict_masks(
                image_embeddings=image_embeddings,
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
            if self.single_mask:
                # one point (plus padding) -> best multimask token; more points or a box -> the single token
                # (the official rule looks at the point count only, so a box alone, 2 corners, got a multimask one)
                n = point_coords.shape[1]
                has_box = (point_labels == 2).to(iou.dtype).amax(dim=1, keepdim=True)  # (B, 1)
                bias = torch.zeros_like(iou[:1])
                bias[:, 0] = 1000.0
                best = torch.argmax(iou + (n - 2.5 + has_box) * bias, dim=1, keepdim=True)
                iou = torch.gather(iou, 1, best)
                idx = best[:, :, None, None].expand(-1, -1, low_res.shape[2], low_res.shape[3])
                low_res = torch.gather(low_res, 1, idx)
            masks = F.interpolate(low_res, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            size = torch.clamp(torch.floor(orig_im_size * (self.img_size / orig_im_size.max()) + 0.5), min=1.0)
            size = size.to(torch.int64)  # >= 1 px, as the encoder side (ResizeLongestSide) resizes it
            masks = masks[..., : size[0], : size[1]]
            out_hw = orig_im_size.to(torch.int64)
            masks = F.interpolate(masks, size=(out_hw[0], out_hw[1]), mode="bilinear", align_corners=False)
            return masks, iou, low_res

    return SamEncoderOnnx, SamDecoderOnnx


def export_sam_encoder(sam, path: str | os.PathLike, *, raw_input: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``sam.image_encoder`` to ``path`` (see :class:`SamEncoderOnnx` for the input)."""
    import torch

    encoder_cls, _ = _sam_modules()
    module = encoder_cls(sam, raw_input).eval()
    size = module.img_size
    path = Path(path)
    if raw_input:
        example = torch.randint(0, 256, (size * 3 // 4, size, 3), dtype=torch.uint8)
        _torch_onnx_export(
            module, (example,), path, input_names=["image"], output_names=["image_embeddings", "input_size"],
            dynamic_axes={"image": {0: "height", 1: "width"}}, opset=opset,
        )
    else:
        example = torch.randn(1, 3, size, size)
        _torch_onnx_export(
            module, (example,), path, input_names=["image"], output_names=["image_embeddings"], dynamic_axes=None,
            opset=opset,
        )
    return path


def export_sam_decoder(sam, path: str | os.PathLike, *, single_mask: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Export prompt encoder + mask decoder with the official SAM ONNX decoder interface."""
    import torch

    _, decoder_cls = _sam_modules()
    module = decoder_cls(sam, single_mask).eval()
    emb_size = module.img_size // 16
    channels = int(sam.prompt_encoder.embed_dim)
    args = (
        torch.randn(1, channels, emb_size, emb_size),
        torch.randint(0, module.img_size, (1, 5, 2)).to(torch.float32),
        torch.randint(-1, 4, (1, 5)).to(torch.float32),
        torch.randn(1, 1, 4 * emb_size, 4 * emb_size),
        torch.tensor([1.0]),
        torch.tensor([700.0, 1000.0]),
    )
    path = Path(path)
    _torch_onnx_export(
        module, args, path, input_names=DECODER_INPUTS, output_names=DECODER_OUTPUTS,
        dynamic_axes={"point_coords": {0: "batch", 1: "num_points"}, "point_labels": {0: "batch", 1: "num_points"},
                      "mask_input": {0: "mask_batch"},
                      "masks": {0: "batch", 2: "height", 3: "width"}, "iou_predictions": {0: "batch"},
                      "low_res_masks": {0: "batch"}},
        opset=opset,
    )
    return path


def export_sam(
    sam,
    out_dir: str | os.PathLike,
    *,
    model_name: str = "sam",
    variant: str = "",
    raw_input: bool = False,
    single_mask: bool = False,
    opset: int = DEFAULT_OPSET,
    simplify_graph: bool = False,
    check: bool = True,
) -> Path:
    """Export a SAM model (official layout: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``)
    to ``out_dir``: ``encoder.onnx``, ``decoder.onnx`` and the manifest ``imseg_export.json``.

    Returns the manifest path.
    """
    check_opset(opset)
    out = prepare_out_dir(out_dir)
    sam = sam.eval()
    encoder = export_sam_encoder(sam, out / "encoder.onnx", raw_input=raw_input, opset=opset)
    decoder = export_sam_decoder(sam, out / "decoder.onnx", single_mask=single_mask, opset=opset)
    img_size = int(sam.image_encoder.img_size)
    meta = {"imseg_model": model_name, "imseg_variant": variant, "pixel_mean": list(SAM_PIXEL_MEAN),
            "pixel_std": list(SAM_PIXEL_STD), "img_size": img_size}
    for path in (encoder, decoder):
        if simplify_graph:
            simplify(path)
        set_metadata(path, meta)
        if check:
            check_onnx(path)
    if raw_input:
        encoder_input = {"name": "image", "dtype": "uint8", "shape": ["height", "width", 3], "layout": "HWC RGB",
                         "preprocessing": "inside the graph"}
    else:
        encoder_input = {"name": "image", "dtype": "float32", "shape": [1, 3, img_size, img_size], "layout": "NCHW RGB",
                         "preprocessing": f"resize longest side to {img_size} (bilinear), normalise (x - mean) / std "
                                          f"in 0..255 units, zero-pad bottom/right to {img_size}x{img_size}"}
    manifest = {
        "format": "onnx",
        "family": "sam",
        "model": model_name,
        "variant": variant,
        "files": {"encoder": encoder.name, "decoder": decoder.name},
        "opset": opset,
        "raw_input": raw_input,
        "single_mask": single_mask,
        "img_size": img_size,
        "min_resized_side": 1,
        "single_mask_box": True,  # single_mask: a box without points gets the single-mask output
        "mask_threshold": float(getattr(sam, "mask_threshold", 0.0)),
        "normalization": {"mean": list(SAM_PIXEL_MEAN), "std": list(SAM_PIXEL_STD), "units": "0..255"},
        "inputs": {"encoder": encoder_input, "decoder": {
            "image_embeddings": [1, 256, img_size // 16, img_size // 16], "point_coords": ["batch", "num_points", 2],
            "point_labels": ["batch", "num_points"], "mask_input": ["1 or batch", 1, img_size // 4, img_size // 4],
            "has_mask_input": [1], "orig_im_size": [2]}},
        "outputs": {"encoder": ["image_embeddings", *(["input_size"] if raw_input else [])],
                    "decoder": list(DECODER_OUTPUTS)},
    }
    return write_manifest(out, manifest)


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    from ..io import write_bytes

    path = out / MANIFEST
    write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


# ============================================================================ semantic models
def export_semantic(
    model,
    out_dir: str | os.PathLike,
    *,
    class_names: list[str],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    model_name: str = "semantic",
    pad_multiple: int = 32,
    opset: int = DEFAULT_OPSET,
    simplify_graph: bool = False,
    check: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Export a semantic model (N, 3, H, W) normalised float -> (N, C, H, W) logits to
    ``out_dir/model.onnx`` with dynamic batch and spatial size; class names, normalisation (0..1
    units) and the padding multiple go into ``metadata_props`` and the manifest. Returns the manifest."""
    import torch

    check_opset(opset)
    out = prepare_out_dir(out_dir)
    model = model.eval()
    path = out / "model.onnx"
    example = torch.randn(1, 3, 2 * pad_multiple, 3 * pad_multiple)
    _torch_onnx_export(
        model, (example,), path, input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
        opset=opset,
    )
    if simplify_graph:
        simplify(path)
    meta = {"imseg_model": model_name, "class_names": list(class_names), "mean": list(mean), "std": list(std),
            "pad_multiple": pad_multiple, "input": "image: (N, 3, H, W) float32 RGB, (x/255 - mean) / std",
            "output": "logits: (N, C, H, W) float32"}
    set_metadata(path, meta)
    if check:
        check_onnx(path)
    manifest = {"format": "onnx", "family": "semantic", "model": model_name, "files": {"model": path.name},
                "opset": opset, "class_names": list(class_names),
                "normalization": {"mean": list(mean), "std": list(std), "units": "0..1"},
                "pad_multiple": pad_multiple, **(extra or {})}
    return write_manifest(out, manifest)
