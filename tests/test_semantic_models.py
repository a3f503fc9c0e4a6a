"""Semantic model registry: every architecture builds, returns (B, C, H, W) logits, fails clearly."""

from __future__ import annotations

import pytest
import torch

from imseg.errors import ConfigError
from imseg.semantic.models import build_from_config, create_model, list_models, model_config


@pytest.mark.parametrize(
    ("name", "encoder"),
    [
        ("unet", "resnet18"),
        ("pspnet", "resnet18"),
        ("deeplabv3+", "resnet18"),
        ("upernet", "resnet18"),
        ("segformer", "mit_b0"),
        ("unet", "efficientnet-b0"),
        ("fpn", "timm-mobilenetv3_small_050"),  # legacy smp name, mapped to timm
        ("lraspp_mobilenet_v3_large", "ignored"),
    ],
)
@pytest.mark.slow
def test_models_build_and_return_logits(name, encoder):
    torch.manual_seed(0)
    model = create_model(name, encoder=encoder, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, 64, 96)
    assert torch.isfinite(out).all()


def test_torchvision_fcn_returns_tensor_not_dict():
    model = create_model("fcn_resnet50", num_classes=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)


def test_list_models_covers_the_registry():
    names = {m.name for m in list_models()}
    assert {"unet", "unetplusplus", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "linknet", "manet", "pan",
            "upernet", "segformer", "fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"} <= names


def test_config_round_trip_rebuilds_same_architecture():
    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=4, decoder_channels=(64, 32, 16, 8, 4))
    cfg = model_config("Unet", "resnet18", 4, decoder_channels=(64, 32, 16, 8, 4))
    rebuilt = build_from_config(cfg)
    rebuilt.load_state_dict(model.state_dict())  # same keys and shapes
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))


def test_bad_names_give_config_errors():
    with pytest.raises(ConfigError, match="unknown semantic model 'unte'.*unet"):
        create_model("unte")
    with pytest.raises(ConfigError, match="unknown encoder 'resnet19'"):
        create_model("unet", encoder="resnet19")
    with pytest.raises(ConfigError, match="timm has no model"):
        create_model("unet", encoder="tu-not_a_model_xyz")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("unet", num_classes=0)
