"""Mask R-CNN with an FPN backbone (torchvision), built from a plain config dict stored in every checkpoint.

``model_config(...)`` makes the dict, ``build_maskrcnn(config)`` the model; a backbone checkpoint (a torchvision
ResNet / MobileNetV3 ``state_dict``, optionally under ``"state_dict"`` or ``"model"``) seeds the backbone only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3")
# smaller than torchvision's (32..512): nuclei and small parts are often 8-30 px at training size
DEFAULT_ANCHORS = (16, 32, 64, 128, 256)


def model_config(backbone: str = "resnet18", num_classes: int = 1, imgsz: int = 512, *,
                 anchors: tuple[int, ...] = DEFAULT_ANCHORS, proposals: int = 1000,
                 detections: int = 100, scales: tuple[float, ...] = (1.0,), channels: int = 256) -> dict[str, Any]:
    """Architecture options as plain types. ``num_classes`` excludes background; ``proposals`` is the RPN's
    post-NMS count in training (half of it at test time); ``scales`` are training-time resize factors of ``imgsz``;
    ``channels``: width of the ResNet FPN and of the mask head (MobileNetV3's FPN is 256 wide)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone {backbone!r} is not supported; choose one of {', '.join(BACKBONES)}.")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 (object classes, background excluded); got {num_classes}.")
    if imgsz < 32:
        raise ConfigError(f"imgsz must be >= 32 pixels; got {imgsz}.")
    if channels < 8:
        raise ConfigError(f"channels must be >= 8; got {channels}.")
    if proposals < 1 or detections < 1:
        raise ConfigError(f"proposals and detections must be >= 1; got {proposals} and {detections}.")
    return {"arch": "maskrcnn", "backbone": backbone, "num_classes": int(num_classes), "imgsz": int(imgsz),
            "anchors": [int(a) for a in anchors], "proposals": int(proposals), "detections": int(detections),
            "scales": [float(s) for s in scales], "channels": int(channels)}


def _backbone(name: str, checkpoint: str | os.PathLike | None, channels: int):
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone

    # trainable BatchNorm: frozen statistics (torchvision's default) only make sense for pretrained weights
    if name == "mobilenet_v3":
        net = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                 norm_layer=torch.nn.BatchNorm2d, trainable_layers=6)
        prefix = "features."
    else:
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=torch.nn.BatchNorm2d)
        width = resnet.fc.in_features // 8  # layer1 channels: 64 (basic blocks) or 256 (bottlenecks)
        # normalised FPN outputs keep a from-scratch network's losses in range (as torchvision's v2 recipe)
        net = BackboneWithFPN(resnet, {f"layer{k}": str(k - 1) for k in range(1, 5)},
                              [width, width * 2, width * 4, width * 8], channels, norm_layer=torch.nn.BatchNorm2d)
        prefix = ""
    if checkpoint is not None:
        _load_backbone(net.body, Path(checkpoint), prefix)
    return net


def _load_backbone(body, path: Path, prefix: str) -> None:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: backbone checkpoint not found; pass a torchvision ResNet/MobileNetV3 state_dict file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read backbone checkpoint ({type(exc).__name__}: {exc}).") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict (name -> tensor); got {type(state).__name__}.")
    state = {k.removeprefix("module.").removeprefix("backbone.").removeprefix(prefix): v for k, v in state.items()}
    own = body.state_dict()
    used = {k: v for k, v in state.items() if k in own}
    wrong = [k for k, v in used.items() if tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in used and not k.endswith("num_batches_tracked")]
    # the classification head is not part of a detection backbone; any other extra tensor means another network
    extra = [k for k in state if k not in own and not k.startswith(("fc.", "classifier."))]
    if wrong or missing or extra:
        shown = (wrong or missing or extra)[:5]
        raise CheckpointError(f"{path}: does not fit the backbone ({len(wrong)} tensors of another shape, "
                              f"{len(missing)} missing, {len(extra)} unexpected, e.g. {shown}); "
                              "pass weights of the same --backbone.")
    body.load_state_dict(used, strict=False)


def build_maskrcnn(config: dict[str, Any], backbone_checkpoint: str | os.PathLike | None = None):
    """A torchvision ``MaskRCNN`` for ``config`` (see :func:`model_config`); background is class 0."""
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    backbone = _backbone(config["backbone"], backbone_checkpoint, config.get("channels", 256))
    levels = 3 if config["backbone"] == "mobilenet_v3" else 5
    anchors = tuple(config["anchors"])
    sizes = (anchors,) * levels if levels != len(anchors) else tuple((a,) for a in anchors)
    generator = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * levels)
    imgsz, proposals = config["imgsz"], config["proposals"]
    train_sizes = tuple(sorted({max(32, round(imgsz * s)) for s in config["scales"]}))
    width, classes = backbone.out_channels, config["num_classes"] + 1
    return MaskRCNN(
        backbone, box_head=TwoMLPHead(width * 7 * 7, 1024), box_predictor=FastRCNNPredictor(1024, classes),
        mask_head=MaskRCNNHeads(width, [width] * 4, 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(width, width, classes),
        box_batch_size_per_image=max(64, proposals // 4), rpn_anchor_generator=generator,
        min_size=train_sizes, max_size=imgsz,
        rpn_pre_nms_top_n_train=2 * proposals, rpn_post_nms_top_n_train=proposals,
        rpn_pre_nms_top_n_test=proposals, rpn_post_nms_top_n_test=max(1, proposals // 2),
        box_detections_per_img=config["detections"], box_score_thresh=0.01,
    )
