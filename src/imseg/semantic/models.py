"""Semantic segmentation models: one ``create_model(name, ...)`` over smp and torchvision.

Every model maps an image batch (B, 3, H, W) float32 to logits (B, C, H, W) at the input size.
smp architectures need H and W divisible by 32 (``OUTPUT_STRIDE``), or by ``2**encoder_depth`` when built with
fewer encoder stages (:func:`input_multiple`); inference pads native-size images to a multiple of 32.
``encoder_weights`` defaults to None (random init, no downloads); ``"imagenet"`` is passed to smp
and raises :class:`~imseg.errors.WeightsError` when the weights cannot be fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, WeightsError

OUTPUT_STRIDE = 32

# name -> smp class name
SMP_ARCHITECTURES: dict[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}
# name -> torchvision.models.segmentation builder (fixed backbone; ``encoder`` is ignored)
TORCHVISION_MODELS: dict[str, str] = {
    "fcn_resnet50": "fcn_resnet50",
    "deeplabv3_resnet50": "deeplabv3_resnet50",
    "lraspp_mobilenet_v3_large": "lraspp_mobilenet_v3_large",
}
ALIASES = {"unet++": "unetplusplus", "deeplabv3+": "deeplabv3plus", "lraspp": "lraspp_mobilenet_v3_large"}


@dataclass(frozen=True)
class ModelInfo:
    """One entry of :func:`list_models`."""

    name: str
    source: str  # "smp" | "torchvision"
    builder: str


def list_models() -> list[ModelInfo]:
    """All model names ``create_model`` accepts."""
    out = [ModelInfo(k, "smp", f"segmentation_models_pytorch.{v}") for k, v in SMP_ARCHITECTURES.items()]
    out += [ModelInfo(k, "torchvision", f"torchvision.models.segmentation.{v}") for k, v in TORCHVISION_MODELS.items()]
    return out


def canonical_name(name: str) -> str:
    """Normalise a model name (case, ``-``/``_``, aliases) or raise ConfigError."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    compact = key.replace("-", "").replace("_", "")
    for known in (*SMP_ARCHITECTURES, *TORCHVISION_MODELS):
        if compact == known.replace("_", ""):
            return known
    import difflib

    names = [m.name for m in list_models()]
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown semantic model {name!r}.{hint} Known: {', '.join(names)}.")


def normalize_encoder(encoder: str) -> str:
    """Map legacy smp names (``timm-mobilenetv3_large_100``) that smp 0.6 dropped onto ``tu-`` timm names."""
    import segmentation_models_pytorch as smp

    if encoder.startswith("timm-") and encoder not in smp.encoders.get_encoder_names():
        import timm

        if timm.list_models(encoder[5:]):
            return "tu-" + encoder[5:]
    return encoder


def _check_encoder(encoder: str) -> None:
    import segmentation_models_pytorch as smp

    if encoder.startswith("tu-"):
        import timm

        if not timm.list_models(encoder[3:]):
            raise ConfigError(
                f"unknown timm encoder {encoder!r}: timm has no model {encoder[3:]!r}. "
                "List them with timm.list_models('*pattern*')."
            )
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        import difflib

        close = difflib.get_close_matches(encoder, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown encoder {encoder!r}.{hint} Use an smp encoder (resnet18, resnet34, efficientnet-b0, mit_b0, ...) "
            "or any timm model as 'tu-NAME' (e.g. tu-mobilenetv3_large_100)."
        )


def _wrap_torchvision(model):
    import torch

    class TorchvisionSegmentation(torch.nn.Module):
        """torchvision segmentation model returning the ``"out"`` logits tensor (B, C, H, W)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)["out"]

    return TorchvisionSegmentation(model)


def create_model(
    name: str = "unet",
    encoder: str = "resnet34",
    num_classes: int = 2,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **kwargs: Any,
):
    """Build a segmentation model returning logits (B, num_classes, H, W).

    Args:
        name: architecture, see :func:`list_models` (``unet``, ``fpn``, ``deeplabv3plus``,
            ``segformer``, ``lraspp_mobilenet_v3_large``, ...).
        encoder: smp encoder name or ``tu-<timm model>``; ignored by torchvision models.
        num_classes: output channels (1 for a binary sigmoid model).
        encoder_weights: None (random init) or ``"imagenet"`` etc. (downloads through smp).
        in_channels: input image channels.
        **kwargs: passed to the smp / torchvision constructor (e.g. ``decoder_channels``).
    """
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    arch = canonical_name(name)
    if arch in TORCHVISION_MODELS:
        import torchvision.models.segmentation as tvseg

        if encoder_weights is not None:
            raise ConfigError(
                f"{arch}: pretrained weights are not supported for torchvision models here; use encoder_weights=None."
            )
        if in_channels != 3:
            raise ConfigError(f"{arch} takes 3-channel images only, got in_channels={in_channels}")
        builder = getattr(tvseg, TORCHVISION_MODELS[arch])
        return _wrap_torchvision(builder(weights=None, weights_backbone=None, num_classes=int(num_classes), **kwargs))

    import segmentation_models_pytorch as smp

    encoder = normalize_encoder(encoder)
    _check_encoder(encoder)
    cls = getattr(smp, SMP_ARCHITECTURES[arch])
    try:
        return cls(
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=int(in_channels),
            classes=int(num_classes),
            **kwargs,
        )
    except (OSError, ConnectionError) as exc:
        raise WeightsError(
            f"could not fetch encoder weights {encoder_weights!r} for {encoder!r} ({exc}). This machine may be "
            "offline: train with encoder_weights=None (--weights none), or pre-fill the torch/huggingface cache."
        ) from exc
    except (KeyError, ValueError, TypeError) as exc:
        if encoder_weights is not None and "weights" in str(exc).lower():
            raise ConfigError(f"encoder {encoder!r} has no {encoder_weights!r} weights: {exc}") from exc
        raise ConfigError(f"cannot build {arch} with encoder {encoder!r} and options {kwargs}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - hub / requests errors come in many types
        if encoder_weights is not None:
            raise WeightsError(
                f"could not fetch encoder weights {encoder_weights!r} for {encoder!r} ({type(exc).__name__}: {exc}). "
                "Offline? Use encoder_weights=None."
            ) from exc
        raise


def input_multiple(name: str, model_kwargs: dict | None = None) -> int:
    """What a model's input height and width must be a multiple of: ``2**encoder_depth`` for an smp
    architecture built with fewer than 5 encoder stages (``model_kwargs={"encoder_depth": 4}``: 16), else 32."""
    depth = model_kwargs.get("encoder_depth") if isinstance(model_kwargs, dict) else None
    try:
        smp_model = canonical_name(name) in SMP_ARCHITECTURES
    except ConfigError:  # an unknown name is reported where the model is built
        smp_model = False
    if smp_model and isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth < 5:
        return 2**depth
    return OUTPUT_STRIDE


def model_config(name: str, encoder: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> dict:
    """The plain-dict description saved in checkpoints; ``build_from_config`` rebuilds the model."""
    return {
        "name": canonical_name(name),
        "encoder": encoder,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "kwargs": dict(kwargs),
    }


def build_from_config(config: dict):
    """Rebuild a (random-weight) model from :func:`model_config` output."""
    try:
        return create_model(
            config["name"],
            encoder=config["encoder"],
            num_classes=config["num_classes"],
            encoder_weights=None,
            in_channels=config.get("in_channels", 3),
            **config.get("kwargs", {}),
        )
    except KeyError as exc:
        raise ConfigError(f"model config is missing key {exc}; got {config}") from exc
