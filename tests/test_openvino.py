"""OpenVINO backend: our ONNX exports on OpenVINO through the segmenter contract, against ONNX Runtime
and torch fp32 (fp32: parity; bf16 and NNCF int8: drift bounded by mask IoU and score differences)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

import imseg  # noqa: E402
from imseg.errors import ConfigError  # noqa: E402
from imseg.precision import logit_mask_iou, native_bf16, native_int8  # noqa: E402

POINTS = [np.array([[100, 80]]), np.array([[200, 180]]), np.array([[60, 200]])]


@pytest.fixture(scope="module")
def sam_export(mobile_sam_checkpoint, tmp_path_factory):
    from imseg.export import export_model

    out = tmp_path_factory.mktemp("openvino") / "mobile-sam"
    export_model("mobile-sam", checkpoint=mobile_sam_checkpoint, out=out)
    return out


@pytest.fixture(scope="module")
def torch_fp32(mobile_sam_checkpoint, sample_image):
    from imseg.sam import SamPredictor, sam_model_registry

    predictor = SamPredictor(sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint).eval())
    predictor.set_image(sample_image)
    return predictor


def _compare(reference, predictor, image, margin=0.5):
    """(min confident mask IoU, max |score difference|) of ``predictor`` against ``reference`` (image set)."""
    predictor.set_image(image)
    ious, scores = [], []
    for pt in POINTS:
        a, s_a, _ = reference.predict(pt, np.array([1]), return_logits=True)
        b, s_b, _ = predictor.predict(pt, np.array([1]), return_logits=True)
        ious += [logit_mask_iou(x, y, margin) for x, y in zip(a, b, strict=True)]
        scores.append(float(np.abs(np.asarray(s_a) - np.asarray(s_b)).max()))
    return min(ious), max(scores)


def test_fp32_matches_torch_and_onnx_runtime(sam_export, torch_fp32, sample_image):
    seg = imseg.load(sam_export, backend="openvino", precision="fp32")
    assert type(seg).__name__ == "OpenVinoSamSegmenter" and seg.precision == "fp32"
    assert seg.predictor.encoder.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    iou, score = _compare(torch_fp32, seg.predictor, sample_image)
    ref = torch_fp32.features.numpy()
    assert np.abs(seg.predictor.features - ref).max() <= 1e-3 * np.abs(ref).max()
    assert iou >= 0.999 and score <= 1e-3
    # through the segmenter contract: the same masks as ONNX Runtime
    ort = imseg.load(sam_export, backend="onnxruntime")
    a = seg.segment(sample_image, points=[(100, 80)], labels=[1])
    b = ort.segment(sample_image, points=[(100, 80)], labels=[1])
    assert len(a) == len(b) == 1
    assert (a.masks ^ b.masks).mean() < 1e-3


def test_bf16_drift_against_torch_fp32(sam_export, torch_fp32, sample_image):
    seg = imseg.load(sam_export, backend="openvino", precision="bf16")
    assert seg.precision == "bf16"
    # the prompt decoder stays fp32 whatever the encoder runs in
    assert seg.predictor.decoder.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    iou, score = _compare(torch_fp32, seg.predictor, sample_image)
    assert iou >= 0.98 and score <= 0.05
    if native_bf16():
        assert seg.predictor.encoder.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"


@pytest.mark.slow
def test_nncf_int8_drift_and_cached_ir(sam_export, torch_fp32, sample_image):
    seg = imseg.load(sam_export, backend="openvino", precision="int8")
    ir = sam_export / "openvino" / ("encoder.int8.xml" if native_int8() else "encoder.int8-7bit.xml")
    assert ir.is_file() and "FakeQuantize" in ir.read_text()
    iou, score = _compare(torch_fp32, seg.predictor, sample_image)
    assert iou >= 0.9 and score <= 0.1
    mtime = ir.stat().st_mtime_ns
    imseg.load(sam_export, backend="openvino", precision="int8")  # reuses the quantized IR
    assert ir.stat().st_mtime_ns == mtime


def _int8_weights(ir) -> list:
    """The int8 weight constants of an OpenVINO IR (NNCF stores quantised weights as i8 Constants)."""
    import openvino as ov

    model = ov.Core().read_model(str(ir))
    return [op.get_data() for op in model.get_ops()
            if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "i8"]


def test_nncf_seven_bit_weights_where_int8_products_saturate(tmp_path, monkeypatch):
    """Without VNNI (AVX2), 8-bit weights saturate 16-bit sums: there every layer's weights keep to 7 bits."""
    import segmentation_models_pytorch as smp
    import torch

    from imseg.export import export_semantic_model
    from imseg.export.openvino import quantize_openvino

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8), classes=2)
    export = export_semantic_model(model.eval(), tmp_path / "unet", class_names=["a", "b"], mean=(0.5,) * 3,
                                   std=(0.25,) * 3).parent
    monkeypatch.setenv("IMSEG_NATIVE_INT8", "0")
    seven = quantize_openvino(export, limit=2)
    monkeypatch.setenv("IMSEG_NATIVE_INT8", "1")
    eight = quantize_openvino(export, limit=2)
    assert (seven.name, eight.name) == ("model.int8-7bit.xml", "model.int8.xml")
    seven_w, eight_w = _int8_weights(seven), _int8_weights(eight)
    assert len(seven_w) == len(eight_w) > 10
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in seven_w) <= 64
    # 8-bit weights use the full range in most layers
    assert sum(int(np.abs(w.astype(np.int16)).max()) > 64 for w in eight_w) > len(eight_w) // 2
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ref = imseg.load(export, backend="onnxruntime").predict_probs(rgb)
    for precision_env in ("0", "1"):  # each IR loads and serves through the contract
        monkeypatch.setenv("IMSEG_NATIVE_INT8", precision_env)
        probs = imseg.load(export, backend="openvino", precision="int8").predict_probs(rgb)
        assert probs.shape == ref.shape and np.abs(probs - ref).max() < 0.5


def test_semantic_export_on_openvino(tmp_path):
    import segmentation_models_pytorch as smp
    import torch

    from imseg.export import export_semantic_model

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3).eval()
    manifest = export_semantic_model(model, tmp_path / "unet", class_names=["a", "b", "c"], mean=(0.5,) * 3,
                                     std=(0.25,) * 3)
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ref = imseg.load(manifest.parent, backend="onnxruntime").predict_probs(rgb)
    fp32 = imseg.load(manifest.parent, backend="openvino", precision="fp32").predict_probs(rgb)
    bf16 = imseg.load(manifest.parent, backend="openvino", precision="bf16").predict_probs(rgb)
    assert np.abs(fp32 - ref).max() < 1e-4
    assert np.abs(bf16 - ref).max() < 0.05
    masks = imseg.load(manifest.parent, backend="openvino").segment(rgb)
    assert masks.image_size == (96, 128)


def test_openvino_errors(sam_export):
    with pytest.raises(ConfigError, match="CPU"):
        imseg.load(sam_export, backend="openvino", device="cuda")
    with pytest.raises(ConfigError, match="backend must be one of"):
        imseg.load(sam_export, backend="tensorflow")
