"""ONNX Runtime int8 runs integer kernels: after ONNX Runtime's own graph optimisation the quantized SAM
encoder/decoder and semantic model multiply in integers (MatMulInteger / QLinearMatMul / ConvInteger /
QLinearConv ...), with no float product left on a constant weight (a dequantized weight folded back to
float32 would be one); and int8 masks stay close to fp32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from imseg.export.quantize import INTEGER_PRODUCT_OPS, optimized_graph_ops  # noqa: E402


@pytest.fixture(scope="module")
def sam_export(mobile_sam_checkpoint, tmp_path_factory):
    from imseg.export import export_model

    out = tmp_path_factory.mktemp("int8") / "mobile-sam"
    export_model("mobile-sam", checkpoint=mobile_sam_checkpoint, out=out)
    return out


@pytest.fixture(scope="module")
def calibration_dir(sample_image, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("calib")
    Image.fromarray(sample_image).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(sample_image[::-1, ::-1])).save(folder / "b.png")
    return folder


def _assert_integer(path, fp32_path):
    fp32 = optimized_graph_ops(fp32_path)
    q = optimized_graph_ops(path)
    assert fp32["float_weight_products"], "the fp32 graph multiplies by constant weights"
    assert q["float_weight_products"] == []
    assert q["integer_products"] >= len(fp32["float_weight_products"])
    return q["op_types"]


@pytest.mark.slow
def test_dynamic_int8_runs_integer_kernels(sam_export, tmp_path, sample_image):
    import imseg
    from imseg.export.quantize import quantize_sam_export
    from imseg.precision import logit_mask_iou

    target = tmp_path / "dyn"
    shutil.copytree(sam_export, target)
    report = quantize_sam_export(target)
    ops = _assert_integer(target / "encoder.int8.onnx", target / "encoder.onnx")
    assert ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulInteger", 0) > 0
    assert ops.get("ConvInteger", 0) > 0
    _assert_integer(target / "decoder.int8.onnx", target / "decoder.onnx")
    manifest = json.loads((target / "imseg_export.json").read_text())
    assert manifest["quantization"]["kernels"]["encoder"]["float_weight_products"] == 0
    assert report["kernels"]["encoder"]["integer_products"] > 0
    # precision picks the files: fp32 and int8 from the same export, int8 close to fp32
    fp32 = imseg.load(target, backend="onnxruntime", precision="fp32").predictor
    int8 = imseg.load(target, backend="onnxruntime", precision="int8").predictor
    assert fp32 is not int8
    fp32.set_image(sample_image)
    int8.set_image(sample_image)
    point = np.array([[100, 80]])
    a, _, _ = fp32.predict(point, np.array([1]), return_logits=True)
    b, _, _ = int8.predict(point, np.array([1]), return_logits=True)
    assert not np.array_equal(fp32.features, int8.features)
    assert min(logit_mask_iou(x, y, margin=0.5) for x, y in zip(a, b, strict=True)) >= 0.9


@pytest.mark.slow
def test_static_qdq_int8_runs_qlinear_kernels(sam_export, tmp_path, calibration_dir):
    from imseg.export.quantize import quantize_sam_export

    target = tmp_path / "static"
    shutil.copytree(sam_export, target)
    quantize_sam_export(target, calibration=calibration_dir)
    ops = _assert_integer(target / "encoder.int8.onnx", target / "encoder.onnx")
    assert ops.get("QLinearMatMul", 0) > 0 and ops.get("QLinearConv", 0) > 0


def test_fp32_export_has_no_int8_for_precision_int8(sam_export):
    import imseg
    from imseg.errors import ConfigError

    with pytest.raises(ConfigError, match="no int8 models"):
        imseg.load(sam_export, backend="onnxruntime", precision="int8")
    with pytest.raises(ConfigError, match="bf16"):
        imseg.load(sam_export, backend="onnxruntime", precision="bf16")


def test_semantic_unet_int8_runs_integer_convolutions(tmp_path):
    import segmentation_models_pytorch as smp
    import torch

    from imseg.export import export_semantic_model
    from imseg.export.quantize import quantize_semantic_export

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=2).eval()
    manifest = export_semantic_model(model, tmp_path / "unet", class_names=["bg", "fg"], mean=(0.5,) * 3,
                                     std=(0.25,) * 3)
    report = quantize_semantic_export(manifest.parent)
    ops = _assert_integer(manifest.parent / "model.int8.onnx", manifest.parent / "model.onnx")
    assert any(ops.get(op, 0) for op in INTEGER_PRODUCT_OPS if "Conv" in op)
    assert report["accuracy"]["pixel_agreement_mean"] >= 0.9
