"""The contour-aware U-Net instance model: pixel targets, the watershed split, and a short training run on real
DSB 2018 nuclei that `imseg.load`, `imseg val` and `imseg predict` read as an instance run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from imseg.errors import ConfigError
from imseg.instance import InstanceMask, InstanceObject, InstanceSample
from imseg.instance.unet import PIXEL_CLASSES, normalize_image, pixel_labels, split_instances


def _square(y, x, h, w, size=(40, 50)):
    m = np.zeros(size, bool)
    m[y:y + h, x:x + w] = True
    return m


def test_pixel_labels_mark_cores_apart_and_rims_between_touching_objects():
    a, b = _square(5, 5, 10, 10), _square(5, 15, 10, 10)  # side by side, touching
    sample = InstanceSample("x.png", 40, 50, [InstanceObject("n", InstanceMask.from_array(a)),
                                              InstanceObject("n", InstanceMask.from_array(b)),
                                              InstanceObject("n", InstanceMask.from_array(_square(30, 30, 5, 5)),
                                                             iscrowd=True)])
    labels = pixel_labels(sample)
    assert set(np.unique(labels)) == {0, 1, 2, 255}
    assert (labels[a | b] > 0).all() and (labels[_square(30, 30, 5, 5)] == 255).all()
    assert (labels[~(a | b | _square(30, 30, 5, 5))] == 0).all()
    # depth 1..5 across a 10-px side: the core (deeper than half of 5) is each square's central 6x6, so the
    # cores of the touching squares stay 4 px apart
    assert ((labels == 1) == (_square(7, 7, 6, 6) | _square(7, 17, 6, 6))).all()
    rims = pixel_labels(sample, core=0.0)  # the one-pixel rims alone: both rims at the seam
    assert ((rims == 1) == (_square(6, 6, 8, 8) | _square(6, 16, 8, 8))).all()
    assert rims[10, 14] == 2 and rims[10, 15] == 2
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ConfigError, match="core must be a number in"):
            pixel_labels(sample, core=bad)


def _discs(background: int, disc: int) -> np.ndarray:
    """A 64x64 RGB image: two discs of one intensity on a background of another, with a little noise."""
    yy, xx = np.mgrid[:64, :64]
    inside = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 44) ** 2 + (xx - 40) ** 2 < 81)
    noise = np.random.default_rng(0).integers(0, 3, (64, 64))
    gray = np.where(inside, disc, background) + noise
    return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8), inside


def test_normalize_image_stretches_and_turns_bright_backgrounds_dark():
    dim, inside = _discs(background=4, disc=30)  # a dim fluorescence exposure
    stretched = normalize_image(dim, "stretch")
    assert stretched.dtype == np.uint8 and stretched.shape == dim.shape
    assert stretched[inside].mean() > 240 and stretched[~inside].mean() < 15
    np.testing.assert_array_equal(normalize_image(dim, "stretch-dark"), stretched)  # already dark: kept
    bright, _ = _discs(background=220, disc=120)  # dark nuclei on a bright field
    assert normalize_image(bright, "stretch")[inside].mean() < 15  # stretched, polarity kept
    dark = normalize_image(bright, "stretch-dark")
    assert dark[inside].mean() > 240 and dark[~inside].mean() < 15  # inverted: objects lighter than background
    # one range for all channels: a colour image keeps its channels' order of brightness
    colour = np.stack([dim[..., 0], dim[..., 0] // 2, dim[..., 0] // 4], axis=2)
    out = normalize_image(colour, "stretch").astype(int)
    assert np.all(out[inside][:, 0] >= out[inside][:, 1]) and np.all(out[inside][:, 1] >= out[inside][:, 2])
    flat = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(normalize_image(flat, "stretch-dark"), flat)
    assert normalize_image(dim, "none") is dim
    with pytest.raises(ConfigError, match="normalize must be one of none, stretch, stretch-dark; got 'auto'"):
        normalize_image(dim, "auto")


def test_the_segmenter_feeds_the_network_the_runs_normalised_pixels():
    from imseg.instance.unet import UnetInstanceSegmenter

    class Recorder:
        class_names = PIXEL_CLASSES

        def predict_probs(self, rgb):
            self.seen = rgb
            return np.stack([np.ones(rgb.shape[:2]), np.zeros(rgb.shape[:2]), np.zeros(rgb.shape[:2])])

    bright, _ = _discs(background=220, disc=120)
    for mode in ("none", "stretch", "stretch-dark"):
        network = Recorder()
        UnetInstanceSegmenter(network, ["nucleus"], normalize=mode).segment(bright)
        np.testing.assert_array_equal(network.seen, normalize_image(bright, mode))
    with pytest.raises(ConfigError, match="normalize must be one of"):
        UnetInstanceSegmenter(Recorder(), ["nucleus"], normalize="percentile")


def test_split_instances_recovers_touching_objects_from_their_targets():
    a, b, c = _square(5, 5, 10, 10), _square(5, 15, 10, 10), _square(25, 30, 8, 12)
    sample = InstanceSample("x.png", 40, 50, [InstanceObject("n", InstanceMask.from_array(m)) for m in (a, b, c)])
    target = pixel_labels(sample)
    probs = np.stack([target == k for k in range(3)]).astype(np.float32) * 0.9 + 0.1 / 3
    found = split_instances(probs, ["nucleus"], min_area=4)
    assert len(found) == 3 and found.class_names == ["nucleus"] and (found.labels == 0).all()
    assert sorted(found.areas.tolist()) == [96, 100, 100]
    for truth in (a, b, c):
        assert max((m & truth).sum() / (m | truth).sum() for m in found.masks) == 1.0
    assert np.all(np.diff(found.scores) <= 0)
    tiny = split_instances(probs, ["nucleus"], min_area=97)
    assert len(tiny) == 2


DSB_IDS = [
    "72b18a405555ad491721e29454e5cd325055ce81a9e78524b56f2c058a4d2327",
    "d7ec8003735996458b56ccb8ae34d080eb2a6adabef931323239632515b4b220",
    "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1",
    "4829177d0b36abdd92c4ef0c7834cbc49f95232076bdd7e828f1f7cbb5ed80ec",
]


@pytest.mark.slow
def test_train_load_val_predict_on_real_nuclei(data_dir, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    import shutil

    import imseg
    from imseg.cli import app
    from imseg.instance.unet import UnetInstanceSegmenter, train_unet_instance

    data = tmp_path / "dsb"
    for name in DSB_IDS:
        shutil.copytree(data_dir / "dsb2018-nuclei" / "train" / name, data / name)
    run = train_unet_instance({"data": str(data), "val_fraction": 0.5, "epochs": 1, "imgsz": 64, "batch": 2,
                               "progress": False, "accelerator": "cpu", "project": str(tmp_path / "runs"),
                               "name": "unet", "tta": "h"})
    segmenter = imseg.load(run, device="cpu", score_threshold=0.0)
    assert isinstance(segmenter, UnetInstanceSegmenter) and segmenter.class_names == ["nucleus"]
    assert segmenter.semantic.tta == "h" and segmenter.normalize == "stretch"  # the run's prediction settings
    image = data / DSB_IDS[0] / "images" / f"{DSB_IDS[0]}.png"
    masks = segmenter.segment(image)
    assert masks.image_size == (256, 256) and len(masks.scores) == len(masks)
    result = CliRunner().invoke(app, ["val", "--run", str(run), "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0 and "(2 images)" in result.output and "DSB 2018 score" in result.output, result.output
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(image), "--run", str(run), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == len(imseg.load(run, device="cpu").segment(image))


def test_cli_unet_watershed_refuses_resume(tmp_path):
    from imseg.cli import app

    result = CliRunner().invoke(app, ["train", "--task", "instance", "--model", "unet-watershed", "--data",
                                      str(tmp_path), "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "trains from scratch in one go" in result.output, result.output


def test_a_bad_core_normalize_or_tta_is_refused_before_the_run_directory_is_made(tmp_path):
    from imseg.instance.unet import train_unet_instance

    with pytest.raises(ConfigError, match=r"core must be a number in \[0, 1\)"):
        train_unet_instance({"data": str(tmp_path / "none"), "core": 1.5, "project": str(tmp_path / "runs")})
    with pytest.raises(ConfigError, match="normalize must be one of"):
        train_unet_instance({"data": str(tmp_path / "none"), "normalize": "z", "project": str(tmp_path / "runs")})
    with pytest.raises(ConfigError, match="tta must be True/False or flips"):
        train_unet_instance({"data": str(tmp_path / "none"), "tta": "x", "project": str(tmp_path / "runs")})
    assert not (tmp_path / "runs").exists()
