"""Semantic runs: ONNX Runtime and TorchScript vs eager PyTorch; int8; bad input for `imseg export`."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("segmentation_models_pytorch")

CLASSES = ["background", "membrane", "cell"]


@pytest.fixture(scope="session")
def semantic_run(tmp_path_factory):
    """A run directory as `imseg train` writes it: weights/best.pt of a small U-Net (random weights)."""
    import torch

    from imseg.semantic.models import create_model, model_config
    from imseg.semantic.train import save_checkpoint

    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=len(CLASSES))
    run = tmp_path_factory.mktemp("runs") / "exp"
    save_checkpoint(run / "weights" / "best.pt", model, {
        "model": model_config("unet", "resnet18", len(CLASSES)), "class_names": CLASSES, "imgsz": 256,
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    return run


@pytest.fixture(scope="session")
def torch_segmenter(semantic_run):
    from imseg.semantic.infer import load_run

    return load_run(semantic_run, device="cpu")


@pytest.fixture(scope="session")
def onnx_export(semantic_run, tmp_path_factory):
    from imseg.export import export_model

    out = tmp_path_factory.mktemp("semantic_onnx")
    export_model(run=semantic_run, out=out, format="onnx")
    return out


def _images(sample_image, data_dir=None):
    images = [sample_image, np.ascontiguousarray(sample_image[:200, :150])]  # second one needs padding
    return images


def _eager_labels(segmenter, image):
    import torch

    from imseg.export.runtime import semantic_preprocess

    x = semantic_preprocess(image, segmenter.mean.flatten().tolist(), segmenter.std.flatten().tolist(), 32)
    with torch.no_grad():
        logits = segmenter.model(torch.from_numpy(x))[0, :, : image.shape[0], : image.shape[1]]
    return logits.argmax(0).numpy()


@pytest.mark.slow
def test_onnx_matches_pytorch_and_embeds_metadata(onnx_export, torch_segmenter, semantic_run, sample_image):
    import onnx

    import imseg
    from imseg.export.runtime import OrtSemanticSegmenter
    from imseg.semantic.infer import load_run

    model = onnx.load(str(onnx_export / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES and json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    segmenter = imseg.load(onnx_export)
    assert isinstance(segmenter, OrtSemanticSegmenter)
    # the run's inference settings travel with the export: letterbox to the training imgsz by default
    manifest = json.loads((onnx_export / "imseg_export.json").read_text())
    assert manifest["inference"] == {"imgsz": 256, "resize": True} and segmenter.resize and segmenter.imgsz == 256
    native = imseg.load(onnx_export, resize=False)
    torch_native = load_run(semantic_run, device="cpu", resize=False)
    larger = np.ascontiguousarray(np.concatenate([sample_image, sample_image[:, ::-1]], 1)[:, :380])  # 256x380
    for image in [*_images(sample_image), larger]:
        ort_labels = segmenter.predict_labels(image)
        assert ort_labels.shape == image.shape[:2]
        # the torch segmenter (letterbox, black padding, probabilities scaled back) agrees
        assert (ort_labels == torch_segmenter.predict(image)).mean() >= 0.999
        if max(image.shape[:2]) <= 256:  # native size, one pass: same as the eager network on the padded image
            native_labels = native.predict_labels(image)
            assert (native_labels == _eager_labels(torch_segmenter, image)).mean() >= 0.999
            assert (native_labels == torch_native.predict(image)).mean() >= 0.999
    masks = segmenter.segment(sample_image)
    assert masks.class_names == CLASSES and set(masks.labels) <= {0, 1, 2}
    assert masks.masks.sum() == sample_image.shape[0] * sample_image.shape[1]


def test_onnx_dynamic_batch(onnx_export, torch_segmenter):
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_export / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 96, 128)
    out = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = torch_segmenter.model(x).numpy()
    assert out.shape == ref.shape == (2, 3, 96, 128)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.999


@pytest.mark.slow
def test_torchscript_matches_pytorch(semantic_run, torch_segmenter, sample_image, tmp_path):
    import torch

    from imseg.export import export_model
    from imseg.export.runtime import semantic_preprocess
    from imseg.export.torchscript import load_torchscript

    manifest = json.loads(export_model(run=semantic_run, out=tmp_path / "ts", format="torchscript").read_text())
    assert manifest["format"] == "torchscript"
    module, meta = load_torchscript(tmp_path / "ts")
    assert meta["class_names"] == CLASSES and meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    for image in _images(sample_image):
        x = torch.from_numpy(semantic_preprocess(image, meta["mean"], meta["std"], meta["pad_multiple"]))
        with torch.no_grad():
            labels = module(x)[0].argmax(0).numpy()[: image.shape[0], : image.shape[1]]
        assert (labels == _eager_labels(torch_segmenter, image)).mean() >= 0.999


def test_int8_semantic_reports_size_and_agreement(onnx_export, tmp_path, caplog):
    import logging
    import shutil

    from imseg.export.quantize import quantize_semantic_export

    target = tmp_path / "int8"
    shutil.copytree(onnx_export, target)
    with caplog.at_level(logging.WARNING):
        report = quantize_semantic_export(target)
    # onnxruntime.quantization's root-logger advice/tensor dumps are not passed on
    assert not [r for r in caplog.records if r.name == "root"], [r.getMessage()[:80] for r in caplog.records]
    assert logging.getLogger().filters == []
    assert report["size_ratio"] <= 0.35
    assert 0.0 <= report["accuracy"]["pixel_agreement_min"] <= 1.0
    assert json.loads((target / "imseg_export.json").read_text())["files"]["model"] == "model.int8.onnx"


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path, semantic_run, monkeypatch):
    from imseg.errors import CheckpointError, DependencyError, ExportError, ModelNotFoundError
    from imseg.export import export_model

    with pytest.raises(ModelNotFoundError, match="unknown model"):
        export_model("sam-vit-z", checkpoint=tmp_path / "x.pth", out=tmp_path / "o")
    empty_run = tmp_path / "runs" / "empty"
    empty_run.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no weights"):
        export_model(run=empty_run, out=tmp_path / "o2")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_model(run=semantic_run, out=a_file)
    with pytest.raises(ExportError, match="nothing to export"):
        export_model("otsu", out=tmp_path / "o3")
    with pytest.raises(ExportError, match="lies under"):
        export_model(run=semantic_run, out=a_file / "sub")

    import imseg.errors

    real_import = __import__("importlib").import_module

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("importlib.import_module", no_onnxruntime)
    from imseg.export.runtime import load_exported

    with pytest.raises(DependencyError, match=r"pip install 'imseg\[export\]'"):
        load_exported(tmp_path)
    assert imseg.errors.require  # the real helper was used


def test_export_checks_everything_before_creating_the_output(tmp_path, semantic_run):
    from imseg.errors import CheckpointError, ConfigError, ModelNotFoundError
    from imseg.export import export_model

    out = tmp_path / "never"
    with pytest.raises(ModelNotFoundError):
        export_model("sam-vit-z", checkpoint=tmp_path / "x.pth", out=out)
    with pytest.raises(CheckpointError, match="not found"):
        export_model("mobile-sam", checkpoint=tmp_path / "missing.pt", out=out)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        export_model("mobile-sam", checkpoint=garbage, out=out)
    with pytest.raises(ConfigError, match=r"opset 99 is above 2\d, the highest"):
        export_model(run=semantic_run, out=out, opset=99)
    with pytest.raises(ConfigError, match="opset must be >= 17"):
        export_model(run=semantic_run, out=out, opset=16)
    with pytest.raises(ConfigError, match="apply to SAM exports"):
        export_model(run=semantic_run, out=out, raw_input=True)
    assert not out.exists()


def test_cli_export_run_and_errors(semantic_run, tmp_path):
    from typer.testing import CliRunner

    from imseg.cli import app

    runner = CliRunner()
    out = tmp_path / "cli_ts"
    result = runner.invoke(app, ["export", "--run", str(semantic_run), "--format", "torchscript", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file() and (out / "imseg_export.json").is_file()
    result = runner.invoke(app, ["export", "--model", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown model" in result.output
