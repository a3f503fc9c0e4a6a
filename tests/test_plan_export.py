"""A run's stored test-time augmentation travels with `imseg export --run`: the ONNX Runtime (and OpenVINO)
segmenter of the export averages the same flips and scales by default, so it predicts what the run predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("segmentation_models_pytorch")

CLASSES = ["background", "a", "b"]
IMGSZ = 64


def _run(root, inference: dict | None, augment: dict | None = None):
    """A run directory as a planned run leaves it: a small reduced-depth U-Net (random weights), with the
    test-time choice stored in its checkpoint as the planner stores it."""
    import torch

    from imseg.semantic.models import create_model, model_config
    from imseg.semantic.plan.tta import store_inference
    from imseg.semantic.train import save_checkpoint

    torch.manual_seed(0)
    kwargs = {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]}  # input multiple 16: scaled sides 16k
    model = create_model("unet", encoder="resnet18", num_classes=len(CLASSES), **kwargs)
    with torch.no_grad():  # a head that tells the classes apart, so every class shows up somewhere
        model.segmentation_head[0].weight.normal_(0.0, 0.5)
    save_checkpoint(root / "weights" / "best.pt", model, {
        "model": model_config("unet", "resnet18", len(CLASSES), **kwargs), "class_names": CLASSES, "imgsz": IMGSZ,
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "train": {"augment": augment or {"hflip": 0.5, "vflip": 0.0}}})
    if inference is not None:
        store_inference(root, inference)
    return root


def _images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (50, 37, 3), dtype=np.uint8),  # letterbox upsamples, probabilities go down
            rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)]  # and the other way


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Probabilities within 1e-4; class maps equal wherever the top class leads by more than that."""
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    top = np.sort(a, axis=0)
    confident = top[-1] - top[-2] > 2e-4
    assert confident.mean() > 0.9
    assert np.array_equal(a.argmax(0)[confident], b.argmax(0)[confident])


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("runs") / "tta", {"resize": True, "tta": True, "scales": [1.0, 1.2]})


@pytest.fixture(scope="module")
def tta_export(tta_run, tmp_path_factory):
    from imseg.export import export_model

    out = tmp_path_factory.mktemp("exports") / "tta"
    export_model(run=tta_run, out=out, format="onnx")
    return out


def test_export_records_the_stored_choice_and_onnx_runtime_applies_it(tta_run, tta_export):
    import imseg
    from imseg.export.runtime import OrtSemanticSegmenter

    manifest = json.loads((tta_export / "imseg_export.json").read_text())
    assert manifest["inference"] == {"imgsz": IMGSZ, "resize": True, "tta": True, "tta_flips": "h",
                                     "scales": [1.0, 1.2], "input_multiple": 16}
    ort, run = imseg.load(tta_export), imseg.load(str(tta_run), device="cpu")
    assert isinstance(ort, OrtSemanticSegmenter)
    assert (ort.tta, ort.tta_flips, ort.scales) == (run.tta, run.tta_flips, run.scales) == (True, "h", (1.0, 1.2))
    for image in _images():
        _same(run.predict_probs(image), ort.predict_probs(image))
        a, b = run.segment(image, include_background=True), ort.segment(image, include_background=True)
        assert list(a.labels) == list(b.labels) and len(a.labels) >= 2 and a.masks.shape == b.masks.shape
        # the switch-off and the explicit choices of the torch path work here too, per call and at load
        plain = ort.predict_probs(image, tta=False, scales=(1.0,))
        _same(run.predict_probs(image, tta=False, scales=(1.0,)), plain)
        assert np.abs(plain - ort.predict_probs(image)).max() > 1e-3  # the stored choice changes the prediction
        _same(run.predict_probs(image, tta="hv", scales="0.75,1"), ort.predict_probs(image, tta="hv", scales="0.75,1"))
        off = imseg.load(tta_export, tta=False, scales=(1.0,))
        np.testing.assert_array_equal(off.predict_probs(image), plain)
        assert np.array_equal(off.segment(image).masks, ort.segment(image, tta=False, scales=[1.0]).masks)
    native_run = imseg.load(str(tta_run), device="cpu", resize=False)
    native_ort = imseg.load(tta_export, resize=False)
    for image in _images()[:1]:  # under imgsz after scaling: one pass, no tiles, on both engines
        _same(native_run.predict_probs(image), native_ort.predict_probs(image))


def test_openvino_applies_the_stored_choice(tta_run, tta_export):
    pytest.importorskip("openvino")
    import imseg

    ov, run = imseg.load(tta_export, backend="openvino"), imseg.load(str(tta_run), device="cpu")
    assert (ov.tta, ov.scales) == (True, (1.0, 1.2))
    image = _images()[1]
    _same(run.predict_probs(image), ov.predict_probs(image))


def test_export_of_a_run_without_test_time_augmentation_is_unchanged(tmp_path):
    import imseg
    from imseg.export import export_model

    run = _run(tmp_path / "plain", None)
    export_model(run=run, out=tmp_path / "out", format="onnx")
    manifest = json.loads((tmp_path / "out" / "imseg_export.json").read_text())
    assert manifest["inference"] == {"imgsz": IMGSZ, "resize": True, "input_multiple": 16}
    ort = imseg.load(tmp_path / "out")
    assert (ort.tta, ort.scales) == (False, (1.0,))
    image = _images()[1]
    _same(imseg.load(str(run), device="cpu").predict_probs(image), ort.predict_probs(image))
    with pytest.raises(imseg.errors.ConfigError, match="tta must be True/False"):
        ort.predict_probs(image, tta="x")
