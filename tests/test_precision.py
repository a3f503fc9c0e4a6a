"""Precision: the ``auto`` rule, and bf16 encoders on CPU against exact fp32 (mask IoU and score drift on
the parity image). bf16 runs correctly on any CPU (emulated where the CPU lacks native bf16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imseg
from imseg import precision as P
from imseg.errors import ConfigError


@pytest.fixture
def flags(monkeypatch):
    """Set this machine's CPU flags for the rule (and clear the detection cache around the test)."""
    monkeypatch.delenv("IMSEG_NATIVE_BF16", raising=False)

    def set_flags(*names):
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(names))

    yield set_flags


@pytest.mark.parametrize(("cpu", "expected"), [
    (("avx2", "fma", "amx_bf16", "amx_tile"), "bf16"),
    (("avx2", "avx512f", "avx512_bf16"), "bf16"),
    (("avx2", "fma", "avx512f", "avx512_vnni"), "fp32"),
    (("avx2", "fma"), "fp32"),
])
def test_auto_rule_follows_native_bf16_flags(flags, cpu, expected):
    flags(*cpu)
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision("auto", torch.device("cpu"), engine="openvino") == expected
    assert P.resolve_precision("auto", "cuda") == "fp32"  # GPUs keep their own dtype option
    assert P.resolve_precision("auto", "cpu", engine="onnxruntime") == "fp32"


@pytest.mark.parametrize(("cpu", "cap", "expected"), [
    (("avx2", "fma"), None, False),  # Zen 1-3, Haswell..Skylake client: u8 x s8 pairs saturate at 16 bits
    (("avx2", "avx512f"), None, False),  # Skylake-SP: AVX-512 without VNNI
    (("avx2", "avx512f", "avx512_vnni"), None, True),
    (("avx2", "avx_vnni"), None, True),
    (("avx2", "avx512f", "avx512_vnni", "amx_int8"), "AVX2", False),  # oneDNN held to AVX2
    (("avx2", "avx512f", "avx512_vnni"), "avx512_core_vnni", True),
    ((), None, False),  # unknown CPU: the choice that is accurate everywhere
])
def test_native_int8_follows_vnni_and_the_onednn_cap(flags, monkeypatch, cpu, cap, expected):
    monkeypatch.delenv("IMSEG_NATIVE_INT8", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    flags(*cpu)
    assert P.native_int8() is expected
    monkeypatch.setenv("IMSEG_NATIVE_INT8", "1" if not expected else "0")
    assert P.native_int8() is (not expected)


@pytest.mark.parametrize("name", ["IMSEG_NATIVE_BF16", "IMSEG_NATIVE_INT8"])
def test_a_cpu_override_other_than_0_or_1_is_refused(flags, monkeypatch, name):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags("avx2", "avx512f", "avx512_bf16", "avx512_vnni")
    check = P.native_bf16 if name.endswith("BF16") else P.native_int8
    for value in ("yes", "true", "2"):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=f"{name} must be 0 or 1 .*got '{value}'"):
            check()
    monkeypatch.setenv(name, " ")  # empty: detected from the flags
    assert check() is True
    monkeypatch.setenv(name, "0")
    assert check() is False


def test_explicit_precisions_and_errors(flags, monkeypatch):
    flags("avx2")
    assert P.resolve_precision(None) == "fp32"
    assert P.resolve_precision("bfloat16") == "bf16"  # bf16 is correct (emulated) without native support
    assert P.resolve_precision("int8", engine="openvino") == "int8"
    with pytest.raises(ConfigError, match="exported engines"):
        P.resolve_precision("int8")
    with pytest.raises(ConfigError, match="openvino"):
        P.resolve_precision("bf16", engine="onnxruntime")
    with pytest.raises(ConfigError, match="precision must be one of"):
        P.check_precision("fp8")
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "1")
    assert P.resolve_precision("auto") == "bf16"


def test_logit_mask_iou_ignores_unconfident_pixels():
    ref = np.array([[5.0, -5.0, 0.01, -0.01]])
    got = np.array([[4.0, -4.0, -0.02, 0.02]])
    assert P.logit_mask_iou(ref, got, margin=0.1) == 1.0
    assert P.logit_mask_iou(ref, got) == pytest.approx(1 / 3)
    assert P.logit_mask_iou(ref, -got, margin=0.1) == 0.0


def _grid_prompts(shape, n=2):
    h, w = shape[:2]
    return [np.array([[x, y]]) for y in (np.arange(n) + 0.5) * h / n for x in (np.arange(n) + 0.5) * w / n]


def _drift(ref_pred, low_pred, image, margin):
    """(min confident mask IoU, max |score difference|, embedding relative error) over a 2x2 point grid."""
    ref_pred.set_image(image)
    low_pred.set_image(image)
    ref, low = ref_pred.features, low_pred.features
    emb = float((low - ref).norm() / ref.norm())
    ious, scores = [], []
    for pt in _grid_prompts(image.shape):
        m_ref, s_ref, _ = ref_pred.predict(pt, np.array([1]), return_logits=True)
        m_low, s_low, _ = low_pred.predict(pt, np.array([1]), return_logits=True)
        ious += [P.logit_mask_iou(a, b, margin) for a, b in zip(m_ref, m_low, strict=True)]
        scores.append(float(np.abs(s_ref - s_low).max()))
    return min(ious), max(scores), emb


def test_sam_predictor_bf16_on_cpu_runs_a_bf16_encoder_copy(mobile_sam_checkpoint, sample_image):
    from imseg.sam import SamPredictor, sam_model_registry

    model = sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint).eval()
    fp32 = SamPredictor(model)
    bf16 = SamPredictor(model, dtype="bfloat16")
    encoder = bf16._image_encoder()
    assert next(encoder.parameters()).dtype == torch.bfloat16
    assert next(model.image_encoder.parameters()).dtype == torch.float32  # the caller's model is not cast
    assert bf16._image_encoder() is encoder  # made once per weights
    iou, score, emb = _drift(fp32, bf16, sample_image, margin=0.5)
    assert bf16.features.dtype == torch.float32
    assert 0 < emb < 0.05  # really bf16 (not exact), and close
    assert iou >= 0.98 and score <= 0.05
    with torch.no_grad():
        next(model.image_encoder.parameters()).add_(0.01)  # changed weights make a new copy
    assert bf16._image_encoder() is not encoder


@pytest.mark.slow
def test_sam_vit_b_bf16_drift(make_sam_checkpoint, sample_image):
    from imseg.sam import SamPredictor, sam_model_registry

    model = sam_model_registry["vit_b"](checkpoint=make_sam_checkpoint("vit_b")).eval()
    iou, score, emb = _drift(SamPredictor(model), SamPredictor(model, dtype="bf16"), sample_image, margin=0.5)
    assert 0 < emb < 0.05
    assert iou >= 0.99 and score <= 0.05


def test_load_bf16_keeps_decoder_fp32_and_matches_fp32(mobile_sam_checkpoint, sample_image):
    exact = imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")
    low = imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu", precision="bf16")
    assert low.precision == "bf16" and exact.precision == "fp32"
    assert next(low.model.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(low.model.mask_decoder.parameters()).dtype == torch.float32
    assert next(low.model.prompt_encoder.parameters()).dtype == torch.float32
    iou, score, _ = _drift(exact.predictor, low.predictor, sample_image, margin=0.5)
    assert iou >= 0.98 and score <= 0.05
    masks = low.segment(sample_image, points=[(100, 80)], labels=[1])
    assert len(masks) == 1
    generated = low.segment(sample_image, points_per_side=4)  # everything mode encodes through the bf16 encoder
    assert generated.masks.dtype == bool


def test_load_precision_errors(mobile_sam_checkpoint):
    with pytest.raises(ConfigError, match="exported engines"):
        imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu", precision="int8")
    with pytest.raises(ConfigError, match="precision must be one of"):
        imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu", precision="half-ish")
    with pytest.raises(ConfigError, match="classical"):
        imseg.load("otsu", precision="bf16")
    assert imseg.load("otsu", precision="fp32") is not None


def test_sam2_hiera_bf16_drift(sample_image):
    torch.manual_seed(0)
    exact = imseg.load("sam2.1-hiera-t", device="cpu", allow_random=True)
    low = imseg.load("sam2.1-hiera-t", device="cpu", allow_random=True, precision="bf16")
    low.model.load_state_dict(exact.model.state_dict())  # same random weights (cast to the encoder's bf16)
    assert next(low.model.image_encoder.parameters()).dtype == torch.bfloat16
    assert next(low.model.sam_mask_decoder.parameters()).dtype == torch.float32
    exact.predictor.set_image(sample_image)
    low.predictor.set_image(sample_image)
    ious, scores = [], []
    for pt in _grid_prompts(sample_image.shape):
        m_ref, s_ref, _ = exact.predictor.predict(pt, np.array([1]), multimask_output=True, return_logits=True)
        m_low, s_low, _ = low.predictor.predict(pt, np.array([1]), multimask_output=True, return_logits=True)
        ious += [P.logit_mask_iou(a, b, margin=0.5) for a, b in zip(m_ref, m_low, strict=True)]
        scores.append(float(np.abs(s_ref - s_low).max()))
    assert min(ious) >= 0.97 and max(scores) <= 0.05


def test_semantic_bf16_drift():
    import segmentation_models_pytorch as smp

    from imseg.semantic.infer import SemanticSegmenter

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3).eval()
    exact = SemanticSegmenter(model, ["a", "b", "c"], imgsz=128, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu")
    import copy

    low = P.apply_to_semantic(SemanticSegmenter(copy.deepcopy(model), ["a", "b", "c"], imgsz=128, mean=(0.5,) * 3,
                                                std=(0.25,) * 3, device="cpu"), "bf16")
    assert low.precision == "bf16" and next(low.model.parameters()).dtype == torch.bfloat16
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    p_ref, p_low = exact.predict_probs(rgb), low.predict_probs(rgb)
    assert p_low.dtype == np.float32 and p_low.shape == p_ref.shape
    assert np.abs(p_ref - p_low).max() < 0.05
    confident = np.sort(p_ref, 0)[-1] - np.sort(p_ref, 0)[-2] > 0.05
    assert (p_ref.argmax(0) == p_low.argmax(0))[confident].mean() >= 0.99


def test_cli_precision_options(tmp_path, sample_image):
    from PIL import Image
    from typer.testing import CliRunner

    from imseg.cli import app

    runner = CliRunner()
    image = tmp_path / "a.png"
    Image.fromarray(sample_image).save(image)
    bad = runner.invoke(app, ["segment", str(image), "--model", "otsu", "--precision", "fp8", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "precision must be one of" in bad.output
    classical = runner.invoke(app, ["segment", str(image), "--model", "otsu", "--precision", "bf16",
                                    "--out", str(tmp_path / "o")])
    assert classical.exit_code == 2 and "classical" in classical.output
    ok = runner.invoke(app, ["segment", str(image), "--model", "otsu", "--precision", "auto", "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "masks").is_dir()
    export = runner.invoke(app, ["export", "--model", "mobile-sam", "--precision", "bf16", "--out", str(tmp_path / "e")])
    assert export.exit_code == 2 and "load-time choice" in export.output
