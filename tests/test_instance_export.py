"""`imseg export --run` for an instance run (seeded, untrained small Mask R-CNN) and the ONNX Runtime engine behind
`imseg.load(EXPORT_DIR)`: boxes, labels, scores and masks against PyTorch on real DSB 2018 images of three sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from imseg.cli import app  # noqa: E402

# 256x256 fluorescence, 320x256 colour (H&E-like), 360x360 fluorescence
IMAGES = ["72b18a405555ad491721e29454e5cd325055ce81a9e78524b56f2c058a4d2327",
          "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e",
          "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from test_instance_predict import make_run

    root = tmp_path_factory.mktemp("export")
    run = make_run(root / "run", None, seed=1)
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(root / "onnx")])
    assert result.exit_code == 0, result.output
    return run, root / "onnx"


def test_export_writes_an_instance_manifest(exported):
    run, out = exported
    manifest = json.loads((out / "imseg_export.json").read_text())
    assert manifest["family"] == "instance" and manifest["class_names"] == ["nucleus"]
    assert (out / manifest["files"]["model"]).is_file() and manifest["max_detections"] == 30


@pytest.mark.slow
def test_onnx_runtime_matches_pytorch_on_real_images(exported, data_dir):
    import imseg
    from imseg.export.ort_instance import OrtInstanceSegmenter
    from imseg.instance.infer import InstanceSegmenter
    from imseg.io import read_image

    run, out = exported
    ours = imseg.load(out, score_threshold=0.0)
    reference = imseg.load(run, device="cpu", score_threshold=0.0)
    assert isinstance(ours, OrtInstanceSegmenter) and isinstance(reference, InstanceSegmenter)
    sizes = set()
    for name in IMAGES:
        rgb = read_image(data_dir / "dsb2018-nuclei" / "train" / name / "images" / f"{name}.png")
        sizes.add(rgb.shape[:2])
        got, want = ours.segment(rgb), reference.segment(rgb)
        assert len(want) > 0 and len(got) == len(want)
        assert got.class_names == want.class_names == ["nucleus"] and np.array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2)
        assert (got.masks != want.masks).mean() <= 1e-4
    assert len(sizes) == 3  # one graph, any image size
    # the score threshold is applied outside the graph, as the torch engine applies it
    median = float(np.median(reference.segment(rgb).scores))
    high = imseg.load(out, score_threshold=median).segment(rgb)
    assert len(high) == int((reference.segment(rgb).scores >= median).sum())


def test_export_refuses_what_instance_runs_do_not_support(exported, tmp_path):
    run, _ = exported
    for extra, message in ((["--int8"], "not supported for instance"), (["--format", "torchscript"], "ONNX only")):
        result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code == 2 and message in result.output, result.output
