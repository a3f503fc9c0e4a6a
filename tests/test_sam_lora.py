"""LoRA on the image encoder's attention: merged weights equal the adapter model, official code loads them."""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from imseg.errors import ConfigError, InputError  # noqa: E402
from imseg.sam import lora  # noqa: E402

TOL = 1e-5  # absolute and relative: a merged product rounds differently from the two-path one


def _randomise_adapters(model, seed=0, scale=0.05):
    """peft starts B at zero (a no-op): give the adapters values so the merge has something to fold in."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _small_vit_config():
    from imseg.sam.checkpoint import get_config

    return get_config("vit_b", embed_dim=96, depth=2, num_heads=4, global_attn_indexes=(1,), img_size=256)


def _check_trainable(model, also=()):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith(also) for n in trainable)
    lora_names = {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert lora_names <= trainable


def test_vit_adapters_merge_into_weights_the_official_encoder_loads():
    from segment_anything.modeling import ImageEncoderViT as OfficialViT

    from imseg.sam.checkpoint import build_model

    config = _small_vit_config()
    torch.manual_seed(0)
    model = build_model(config)
    plain = build_model(config)
    names = lora.lora_target_names(model)
    assert len(names) == 4 and names[0] == "image_encoder.blocks.0.attn.qkv"
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.image_encoder(x)
    lora.apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), before, rtol=TOL, atol=TOL)  # B = 0: a no-op until trained
    _randomise_adapters(model)
    model.mask_decoder.requires_grad_(True)  # what a caller unfreezes stays trainable
    _check_trainable(model, also=("mask_decoder.",))
    with torch.no_grad():
        adapted = model.image_encoder(x)
    assert (adapted - before).abs().max() > 1e-3

    merged = lora.merge_lora(model)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged, strict=True)
    official = OfficialViT(
        img_size=256,
        patch_size=16,
        embed_dim=96,
        depth=2,
        num_heads=4,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=14,
        global_attn_indexes=(1,),
    ).eval()
    official.load_state_dict(
        {k.removeprefix("image_encoder."): v for k, v in merged.items() if k.startswith("image_encoder.")}, strict=True
    )
    with torch.no_grad():
        for encoder in (plain.image_encoder, official):
            torch.testing.assert_close(encoder(x), adapted, rtol=TOL, atol=TOL)


@pytest.mark.slow  # TinyViT at 1024 px, twice
def test_mobile_sam_merge_loads_into_official_mobile_sam(mobile_sam_checkpoint):
    from conftest import build_official_sam
    from imseg.sam import sam_model_registry

    model = sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint)
    names = lora.lora_target_names(model, targets=("qkv",))
    assert names and all(n.startswith("image_encoder.layers.") and n.endswith(".attn.qkv") for n in names)
    lora.apply_lora(model, rank=2)
    _randomise_adapters(model, seed=2)
    _check_trainable(model)
    official = build_official_sam("vit_t").eval()
    official.load_state_dict(lora.merge_lora(model), strict=True)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(official.image_encoder(x), model.image_encoder(x), rtol=TOL, atol=TOL)


@pytest.mark.slow  # two SAM 2.1 tiny models and their encoders
def test_sam2_hiera_merge_loads_into_official_sam2(tmp_path):
    from conftest import build_official_sam2
    from imseg.sam2 import build_sam2

    official = build_official_sam2()
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, path)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", path, device="cpu")
    names = lora.lora_target_names(model)
    assert names and all(n.startswith("image_encoder.trunk.blocks.") for n in names)
    assert not any(n.endswith("blocks.1.proj") for n in names)  # the stage change's projection is not attention
    lora.apply_lora(model, rank=4, alpha=4)
    _randomise_adapters(model, seed=4, scale=0.02)
    _check_trainable(model)
    merged = lora.merge_lora(model)
    official.load_state_dict(merged, strict=True)
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, got = official.forward_image(x), model.forward_image(x)
    torch.testing.assert_close(got["vision_features"], ref["vision_features"], rtol=TOL, atol=TOL)
    for a, b in zip(ref["backbone_fpn"], got["backbone_fpn"], strict=True):
        torch.testing.assert_close(b, a, rtol=TOL, atol=TOL)


def test_gradients_reach_only_the_adapters():
    from imseg.sam.checkpoint import build_model

    model = build_model(_small_vit_config())
    lora.apply_lora(model, rank=2, targets=("proj",))
    assert all(n.endswith(".attn.proj") for n in lora.lora_target_names(model, ("proj",)))
    model.image_encoder(torch.randn(1, 3, 256, 256)).square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads)
    assert set(lora.lora_state_dict(model)) == {n for n, _ in model.named_parameters() if ".lora_" in n}


def test_bad_lora_settings_are_clear_errors():
    from imseg.sam.checkpoint import build_model

    model = build_model(_small_vit_config())
    with pytest.raises(ConfigError, match="subset"):
        lora.apply_lora(model, targets=("q_proj",))
    with pytest.raises(ConfigError, match="rank"):
        lora.apply_lora(model, rank=0)
    with pytest.raises(InputError, match="no attention projections"):
        lora.apply_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    lora.apply_lora(model)
    with pytest.raises(InputError, match="already has LoRA"):
        lora.apply_lora(model)
