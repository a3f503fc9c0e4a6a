"""Inference from a run directory: loading, sliding-window blending, flip TTA, Masks output, predict CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import imseg
from imseg.errors import CheckpointError, PromptError
from imseg.semantic.checkpoints import save_checkpoint
from imseg.semantic.infer import SemanticSegmenter, gaussian_window, load_run, tile_starts
from imseg.semantic.models import create_model, model_config
from imseg.semantic.transforms import IMAGENET_MEAN as DEFAULT_MEAN
from imseg.semantic.transforms import IMAGENET_STD as DEFAULT_STD

NAMES = ["background", "red", "blue"]


def _pointwise_model(seed: int = 0) -> torch.nn.Module:
    """A 1x1 conv: each output pixel depends on its input pixel only, so tiling must not change it."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, 3, 1).eval()


def _segmenter(model, **kw) -> SemanticSegmenter:
    return SemanticSegmenter(model, NAMES, imgsz=kw.pop("imgsz", 64), mean=DEFAULT_MEAN, std=DEFAULT_STD, device="cpu", **kw)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_tiles_cover_and_window_peaks_in_centre():
    assert tile_starts(100, 64, 48) == [0, 36]
    assert tile_starts(64, 64, 48) == [0]
    assert tile_starts(200, 64, 16)[-1] == 136
    win = gaussian_window((64, 64))
    assert win.shape == (64, 64) and float(win.max()) == pytest.approx(1.0, abs=1e-2)
    assert float(win[0, 0]) < float(win[32, 32])


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_sliding_window_equals_whole_image_for_pointwise_model(overlap):
    image = _image(150, 230)
    tiled = _segmenter(_pointwise_model(), imgsz=64, overlap=overlap, resize=False).predict_probs(image)
    whole = _segmenter(_pointwise_model(), imgsz=256, resize=False).predict_probs(image)  # fits in one pass
    assert tiled.shape == whole.shape == (3, 150, 230)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_sliding_window_with_a_real_network_is_seamless_and_tta_averages_flips():
    torch.manual_seed(0)
    net = create_model("unet", encoder="resnet18", num_classes=3, encoder_depth=3, decoder_channels=[16, 8, 8]).eval()
    seg = _segmenter(net, imgsz=64, overlap=0.5, resize=False)
    image = _image(96, 160, seed=1)
    probs = seg.predict_probs(image)
    assert probs.shape == (3, 96, 160) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # TTA on an image that fits: mean of the plain, h-flipped and v-flipped predictions
    small = _image(64, 64, seed=2)
    tta = seg.predict_probs(small, tta=True)
    plain = seg.predict_probs(small)
    hflip = seg.predict_probs(small[:, ::-1])[:, :, ::-1]
    vflip = seg.predict_probs(small[::-1])[:, ::-1]
    np.testing.assert_allclose(tta, (plain + hflip + vflip) / 3, atol=1e-5)
    assert not np.allclose(tta, plain, atol=1e-4)


@pytest.mark.slow
def test_tta_flips_follow_the_flips_the_run_trained_with(tmp_path):
    """``tta=True`` averages the flips a run saw in training: horizontal only for a run trained with hflip
    (an upside-down horse is a view the network never saw), both with vflip or rotate90; a flips string picks."""
    from imseg.errors import ConfigError

    image = _image(64, 64, seed=7)
    runs = {"h": {"hflip": 0.5}, "hv": {"hflip": 0.5, "vflip": 0.5}, "hv90": {"hflip": 0.0, "rotate90": 0.5}}
    for name, augment in runs.items():
        run, _ = _write_run(tmp_path / name, train={"augment": augment, "imgsz": 64})
        seg = load_run(run, device="cpu")
        plain = seg.predict_probs(image)
        hflip = seg.predict_probs(image[:, ::-1])[:, :, ::-1]
        vflip = seg.predict_probs(image[::-1])[:, ::-1]
        expected = (plain + hflip) / 2 if name == "h" else (plain + hflip + vflip) / 3
        np.testing.assert_allclose(seg.predict_probs(image, tta=True), expected, atol=1e-5)
        np.testing.assert_allclose(seg.predict_probs(image, tta="v"), (plain + vflip) / 2, atol=1e-5)
    legacy, _ = _write_run(tmp_path / "legacy")  # no training record: both flips, as before
    assert load_run(legacy, device="cpu").tta_flips == "hv"
    with pytest.raises(ConfigError, match="'h'"):
        load_run(legacy, device="cpu", tta="x")


def _write_run(tmp_path, model_name="unet", **extra) -> tuple:
    torch.manual_seed(0)
    kwargs = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}
    net = create_model(model_name, encoder="resnet18", num_classes=3, **kwargs)
    meta = {"model": model_config(model_name, "resnet18", 3, **kwargs), "class_names": NAMES, "num_classes": 3,
            "ignore_index": 255, "imgsz": 64, "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD), "epoch": 0, **extra}
    run = tmp_path / "exp"
    save_checkpoint(run / "weights" / "best.pt", net, meta)
    return run, net.eval()


def test_load_run_through_imseg_load_and_segment_returns_masks(tmp_path):
    run, net = _write_run(tmp_path)
    payload = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert payload["class_names"] == NAMES
    seg = imseg.load(run, device="cpu")
    assert isinstance(seg, SemanticSegmenter) and seg.class_names == NAMES
    # a weights file as a plain string, as Ultralytics users write YOLO("best.pt")
    assert isinstance(imseg.load(str(run / "weights" / "best.pt"), device="cpu"), SemanticSegmenter)
    image = _image(64, 64, seed=3)
    probs = seg.predict_probs(image)
    # same numbers as the network itself on the normalised image
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(DEFAULT_MEAN).view(3, 1, 1)) / torch.tensor(
        DEFAULT_STD
    ).view(3, 1, 1)
    with torch.no_grad():
        ref = net(x[None]).softmax(1)[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    labels = probs.argmax(0)
    masks = seg.segment(image)
    expected = [c for c in np.unique(labels) if c != 0]  # background left out by name
    assert list(masks.labels) == expected and masks.class_names == NAMES
    for m, c, s in zip(masks.masks, masks.labels, masks.scores, strict=True):
        assert np.array_equal(m, labels == c)
        assert s == pytest.approx(probs[c][labels == c].mean(), rel=1e-5)
    with_bg = seg.segment(image, include_background=True)
    assert np.array_equal(with_bg.masks.sum(0), np.ones(labels.shape))  # a partition of the image
    with pytest.raises(PromptError):
        seg.segment(image, points=[(1, 1)])


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no weights/best.pt"):
        load_run(tmp_path)
    bad = tmp_path / "weights" / "best.pt"
    bad.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="not an imseg semantic checkpoint"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="sam-vit-b"):  # e.g. a SAM .pth given as a path: says what to do
        imseg.load(str(bad))
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_run(tmp_path)


@pytest.mark.slow
def test_predict_cli_writes_label_maps_and_overlays(tmp_path):
    from imseg.cli import app

    run, _ = _write_run(tmp_path)
    src = tmp_path / "images"
    src.mkdir()
    for i, (h, w) in enumerate([(64, 64), (100, 140)]):  # the second one is letterboxed to 64 and scaled back
        Image.fromarray(_image(h, w, seed=10 + i)).save(src / f"img{i}.png")
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(src), "--run", str(run), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    seg = load_run(run, device="cpu")
    for i in range(2):
        written = np.asarray(Image.open(out / f"img{i}.png"))
        assert np.array_equal(written, seg.predict(src / f"img{i}.png"))
        overlay = np.asarray(Image.open(out / f"img{i}_overlay.png"))
        from imseg.masks import Masks

        image = np.asarray(Image.open(src / f"img{i}.png").convert("RGB"))
        assert np.array_equal(overlay, Masks.from_label_map(written).overlay(image, colour_by="label"))
    native = CliRunner().invoke(app, ["predict", str(src), "--run", str(run), "--out", str(tmp_path / "native"),
                                      "--device", "cpu", "--native"])
    assert native.exit_code == 0, native.output
    tiled = load_run(run, device="cpu", resize=False).predict(src / "img1.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "native" / "img1.png")), tiled)
    assert not np.array_equal(tiled, seg.predict(src / "img1.png"))
    missing = CliRunner().invoke(app, ["predict", str(src), "--run", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and "no weights/best.pt" in missing.output


def test_default_inference_sees_the_training_scale(tmp_path):
    """A run predicts as ``imseg train`` validated it: the image letterboxed to imgsz (the same pixels the
    validation transform produces), the probabilities scaled back to the image's own size."""
    from imseg.semantic.transforms import build_transforms, letterbox_params

    run, net = _write_run(tmp_path)
    seg = load_run(run, device="cpu")
    assert seg.resize and seg.imgsz == 64
    for h, w in [(100, 140), (40, 30)]:  # larger (downscaled) and smaller (upscaled) than imgsz
        image = _image(h, w, seed=h)
        x, _ = build_transforms(64, train=False)(image, np.zeros((h, w), np.uint8))  # validation's view
        _, new_h, new_w = letterbox_params(h, w, 64)
        with torch.no_grad():
            val_probs = net(x[None]).softmax(1)[:, :, :new_h, :new_w]
        expected = torch.nn.functional.interpolate(val_probs, size=(h, w), mode="bilinear", align_corners=False)[0]
        probs = seg.predict_probs(image)
        assert probs.shape == (3, h, w)
        # uint8 resize: PIL here, torchvision in training; they differ by at most one grey level
        np.testing.assert_allclose(probs, expected.numpy(), atol=2e-2)
        assert (probs.argmax(0) == expected.numpy().argmax(0)).mean() > 0.99
    # a run may record native-resolution inference (trained on native-size crops): tiles, no scaling
    native_run, _ = _write_run(tmp_path / "native", inference={"resize": False})
    image = _image(100, 140, seed=5)
    native = load_run(native_run, device="cpu")
    assert not native.resize
    np.testing.assert_allclose(native.predict_probs(image), load_run(run, device="cpu", resize=False).predict_probs(image),
                               atol=1e-6)
    assert load_run(native_run, device="cpu", resize=True).resize


@pytest.mark.slow
def test_multi_scale_tta_averages_the_predictions_at_each_size(tmp_path):
    """``scales`` averages predictions at factors of the letterbox size (rounded to the model's input multiple,
    here 8 for the depth-3 U-Net) or, at native resolution, of the image; each is scaled back first."""
    from imseg.errors import ConfigError
    from imseg.io import resize_rgb

    run, _ = _write_run(tmp_path)
    image = _image(70, 90, seed=11)
    seg = load_run(run, device="cpu")
    assert seg.input_multiple == 8 and seg.scales == (1.0,)
    assert [seg.letterbox_size(s) for s in (1, 1.25, 1.4, 0.01)] == [64, 80, 88, 8]
    at = {size: load_run(run, device="cpu", imgsz=size).predict_probs(image) for size in (64, 80, 88)}
    # 64 * 1.25 = 80; 64 * 1.4 = 89.6 -> 88 (nearest multiple of 8)
    np.testing.assert_allclose(seg.predict_probs(image, scales=(1, 1.25, 1.4)), (at[64] + at[80] + at[88]) / 3,
                               atol=1e-6)
    np.testing.assert_allclose(seg.predict_probs(image, scales=[1.25]), at[80], atol=1e-6)
    assert not np.allclose(at[64], at[80], atol=1e-3)  # the sizes do see different pixels
    # the segmenter's default scales apply to predict/segment/evaluate
    multi = load_run(run, device="cpu", scales=(1.0, 1.25))
    assert multi.predict(image).tolist() == ((at[64] + at[80]) / 2).argmax(0).tolist()
    # native resolution: the image itself scaled by 0.5 (PIL bilinear), predicted, probabilities scaled back
    native = load_run(run, device="cpu", resize=False)
    half = native.predict_probs(resize_rgb(image, (35, 45)))
    expected = torch.nn.functional.interpolate(torch.from_numpy(half)[None], size=(70, 90), mode="bilinear",
                                               align_corners=False)[0].numpy()
    both = native.predict_probs(image, scales=(1.0, 0.5))
    np.testing.assert_allclose(both, (native.predict_probs(image) + expected) / 2, atol=1e-6)
    np.testing.assert_allclose(both.sum(0), 1.0, atol=1e-5)
    for bad in (0, -1.0, [], "big", [1.0, float("nan")]):
        with pytest.raises(ConfigError, match="scales must be one or more positive factors"):
            seg.predict_probs(image, scales=bad)
    with pytest.raises(ConfigError, match="scales must be"):
        load_run(run, device="cpu", scales=())


def test_cli_scales_option(tmp_path):
    from imseg.cli import app

    run, _ = _write_run(tmp_path)
    src = tmp_path / "img.png"
    Image.fromarray(_image(50, 60, seed=4)).save(src)
    out = tmp_path / "pred"
    ok = CliRunner().invoke(app, ["predict", str(src), "--run", str(run), "--out", str(out), "--scales", "1,1.25"])
    assert ok.exit_code == 0, ok.output
    labels = np.array(Image.open(out / "img.png"))
    assert labels.tolist() == load_run(run, device="cpu", scales=(1, 1.25)).predict(_image(50, 60, seed=4)).tolist()
    for bad, message in (("1,x", "comma-separated numbers"), ("0", "positive factors")):
        res = CliRunner().invoke(app, ["predict", str(src), "--run", str(run), "--out", str(out), "--scales", bad])
        assert res.exit_code == 2 and message in res.output, res.output


def test_predict_cli_keeps_same_named_images_apart_and_goes_on_past_a_bad_file(tmp_path):
    from imseg.cli import app

    run, _ = _write_run(tmp_path)
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(_image(64, 64, seed=1)).save(src / "big.png")
    Image.fromarray(_image(64, 64, seed=2)).save(src / "big.bmp")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", str(src), "--run", str(run), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1 and "broken.png" in result.output and "2 image(s)" in result.output, result.output
    labels = sorted(p.name for p in out.glob("*.png") if not p.name.endswith("_overlay.png"))
    assert len(labels) == 2 and "big.png" in labels  # big.bmp's result is big-<hash>.png, not written over
    seg = load_run(run, device="cpu")
    written = {np.asarray(Image.open(out / name)).tobytes() for name in labels}
    assert written == {seg.predict(src / name).astype(np.uint8).tobytes() for name in ("big.png", "big.bmp")}


def test_val_cli_refuses_a_dataset_with_other_classes(tmp_path):
    import yaml

    from imseg.cli import app

    run, _ = _write_run(tmp_path)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(_image(32, 32, seed=i)).save(root / "images" / f"a{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = 1 + i % 2
        Image.fromarray(mask).save(root / "masks" / f"a{i}.png")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["background", "horse", "cow"], "train": ["a0"],
                                                    "val": ["a1", "a2"]}))
    result = CliRunner().invoke(app, ["val", "--run", str(run), "--data", str(root / "data.yaml"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "['background', 'horse', 'cow'] are not the run's ['background', 'red', 'blue']" in result.output
