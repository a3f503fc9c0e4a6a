"""`imseg export --run` for a contour-aware U-Net instance run (a short real training on DSB 2018 nuclei) and its
ONNX Runtime engine behind `imseg.load(EXPORT_DIR)`: logits, instances and scores against the torch run on real
images of three sizes, and the int8 export's drift."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("segmentation_models_pytorch")

from imseg.cli import app  # noqa: E402

TRAIN = ["72b18a405555ad491721e29454e5cd325055ce81a9e78524b56f2c058a4d2327",
         "d7ec8003735996458b56ccb8ae34d080eb2a6adabef931323239632515b4b220",
         "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1"]
# 256x256 fluorescence, 320x256 colour (H&E-like), 360x360 fluorescence
IMAGES = ["72b18a405555ad491721e29454e5cd325055ce81a9e78524b56f2c058a4d2327",
          "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e",
          "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339"]


@pytest.fixture(scope="module")
def unet_run(data_dir, tmp_path_factory):
    from imseg.instance.unet import train_unet_instance

    root = tmp_path_factory.mktemp("unet-export")
    for name in TRAIN:
        shutil.copytree(data_dir / "dsb2018-nuclei" / "train" / name, root / "data" / name)
    # 96 px: a letterbox that scales every test image; stretch-dark: the colour image is inverted; tta: four flipped
    # views averaged. The export must repeat all three
    return train_unet_instance({"data": str(root / "data"), "val_fraction": 0.34, "epochs": 2, "imgsz": 96,
                                "batch": 2, "encoder": "resnet18", "progress": False, "normalize": "stretch-dark",
                                "tta": True, "accelerator": "cpu", "project": str(root / "runs"), "name": "unet"})


@pytest.fixture(scope="module")
def exported(unet_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("unet-onnx") / "onnx"
    result = CliRunner().invoke(app, ["export", "--run", str(unet_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _check_parity(ours, reference, data_dir, min_iou: float, logit_atol: float | None) -> None:
    from imseg.io import letterbox_rgb, read_image

    sizes = set()
    for name in IMAGES:
        rgb = read_image(data_dir / "dsb2018-nuclei" / "train" / name / "images" / f"{name}.png")
        sizes.add(rgb.shape[:2])
        if logit_atol is not None:  # the network alone, on the letterboxed canvas both engines run
            canvas, _ = letterbox_rgb(rgb, reference.semantic.imgsz)
            with torch.inference_mode():
                want = reference.semantic.model(reference.semantic._normalize(canvas)[None])[0].numpy()
            np.testing.assert_allclose(ours.semantic._logits(canvas), want, atol=logit_atol, rtol=0)
        got, want = ours.segment(rgb), reference.segment(rgb)
        assert len(want) > 0 and len(got) == len(want), (name, len(got), len(want))
        assert got.class_names == want.class_names == ["nucleus"] and got.image_size == want.image_size
        # best score first in both: pair each reference instance with its best match
        for truth in want.masks:
            assert max(_iou(truth, m) for m in got.masks) >= min_iou
    assert len(sizes) == 3


def test_export_writes_the_pixel_network_and_an_instance_manifest(unet_run, exported):
    from imseg.instance.unet import PIXEL_CLASSES

    manifest = json.loads((exported / "imseg_export.json").read_text())
    assert manifest["family"] == "instance" and manifest["model"] == "unet-watershed"
    assert manifest["class_names"] == ["nucleus"] and manifest["pixel_classes"] == PIXEL_CLASSES
    assert manifest["inference"] == {"imgsz": 96, "resize": True, "tta": True, "tta_flips": "hv", "scales": [1.0],
                                     "input_multiple": 32} and manifest["min_area"] == 8
    assert manifest["normalize"] == "stretch-dark"  # the run's per-image normalisation, repeated by the engine
    assert (exported / manifest["files"]["model"]).is_file()
    assert json.loads((exported / "pixels" / "imseg_export.json").read_text())["family"] == "semantic"


def test_a_hand_edited_manifest_with_an_unknown_normalisation_is_refused_naming_the_export(exported, tmp_path):
    import shutil

    import imseg
    from imseg.errors import ExportError

    edited = tmp_path / "edited"
    shutil.copytree(exported, edited)
    manifest = json.loads((edited / "imseg_export.json").read_text())
    (edited / "imseg_export.json").write_text(json.dumps({**manifest, "normalize": "auto"}))
    with pytest.raises(ExportError, match=f"{edited}: the manifest's normalize 'auto' is not one of none, stretch, "
                                          "stretch-dark; export the run again"):
        imseg.load(edited)


@pytest.mark.slow
def test_onnx_runtime_matches_the_torch_run_on_real_images(unet_run, exported, data_dir):
    import imseg
    from imseg.export.ort_instance import OrtUnetInstanceSegmenter
    from imseg.instance.unet import UnetInstanceSegmenter

    ours = imseg.load(exported, score_threshold=0.0)
    reference = imseg.load(unet_run, device="cpu", score_threshold=0.0)
    assert isinstance(ours, OrtUnetInstanceSegmenter) and type(reference) is UnetInstanceSegmenter
    _check_parity(ours, reference, data_dir, min_iou=0.99, logit_atol=1e-4)
    rgb = data_dir / "dsb2018-nuclei" / "train" / IMAGES[0] / "images" / f"{IMAGES[0]}.png"
    scores = reference.segment(rgb).scores
    np.testing.assert_allclose(ours.segment(rgb).scores, scores, atol=1e-4)
    # the score threshold applies after the split, as in the torch engine
    # a threshold halfway across a clear gap between scores: engines agree on scores to 1e-4, not on ties
    ranked = np.sort(np.unique(scores))
    cuts = [(a + b) / 2 for a, b in zip(ranked[:-1], ranked[1:], strict=True) if b - a > 1e-3]
    assert cuts, f"the scores {ranked} have no gap to put a threshold in"
    cut = float(min(cuts, key=lambda c: abs(c - np.median(scores))))
    kept = int((scores >= cut).sum())
    assert 0 < kept < len(scores)
    assert len(imseg.load(exported, score_threshold=cut).segment(rgb)) == kept


@pytest.mark.slow
def test_int8_export_stays_close_to_the_torch_run(unet_run, data_dir, tmp_path):
    import imseg
    from imseg.io import read_image

    out = tmp_path / "int8"
    result = CliRunner().invoke(app, ["export", "--run", str(unet_run), "--out", str(out), "--int8"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "imseg_export.json").read_text())
    assert manifest["files"]["model"].endswith(".int8.onnx") and "quantization" in manifest
    reference = imseg.load(unet_run, device="cpu", score_threshold=0.0)
    int8 = imseg.load(out, score_threshold=0.0)
    fp32 = imseg.load(out, score_threshold=0.0, precision="fp32")
    assert fp32.semantic.session is not int8.semantic.session
    _check_parity(fp32, reference, data_dir, min_iou=0.99, logit_atol=1e-4)
    # int8 drifts: its foreground (1 - p(background) > 0.5) and its pixel classes stay close to the torch run's
    for name in IMAGES:
        rgb = read_image(data_dir / "dsb2018-nuclei" / "train" / name / "images" / f"{name}.png")
        want, got = reference.semantic.predict_probs(rgb), int8.semantic.predict_probs(rgb)
        assert ((want[0] < 0.5) == (got[0] < 0.5)).mean() >= 0.97, name
        assert (want.argmax(0) == got.argmax(0)).mean() >= 0.95, name
        assert np.abs(want - got).mean() <= 0.05, name
