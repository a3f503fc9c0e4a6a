"""Class activation maps: parity with pytorch_grad_cam run directly, semantic runs and SAM masks, overlays."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from imseg.errors import ConfigError, InputError
from imseg.explain import Explanation, explain, explain_sam, explain_semantic, tokens_to_map
from imseg.semantic.checkpoints import save_checkpoint
from imseg.semantic.infer import load_run
from imseg.semantic.models import create_model, model_config
from imseg.semantic.transforms import IMAGENET_MEAN as DEFAULT_MEAN
from imseg.semantic.transforms import IMAGENET_STD as DEFAULT_STD

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: E402

NAMES = ["background", "horse", "sky"]
PACKAGE = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM}
SAM_SIZE = 256  # MobileSAM's weights at a reduced input size: the same network, 16x less work than 1024


@pytest.fixture(autouse=True)
def one_thread():
    """Small models gain nothing from several threads on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_run(tmp_path, num_classes: int = 3):
    torch.manual_seed(0)
    kwargs = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}
    net = create_model("unet", encoder="resnet18", num_classes=num_classes, **kwargs)
    names = NAMES if num_classes == 3 else ["background", "horse"]
    meta = {"model": model_config("unet", "resnet18", num_classes, **kwargs), "class_names": names,
            "num_classes": num_classes, "ignore_index": 255, "imgsz": 64, "mean": list(DEFAULT_MEAN),
            "std": list(DEFAULT_STD), "epoch": 0}
    run = tmp_path / "exp"
    save_checkpoint(run / "weights" / "best.pt", net, meta)
    return run


def normalised(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(DEFAULT_MEAN).view(3, 1, 1)) / torch.tensor(DEFAULT_STD).view(3, 1, 1))[None]


def package_cam(method, model, layer, x, category, mask, reshape=None) -> np.ndarray:
    target = SemanticSegmentationTarget(category, mask.astype(np.float32))
    with PACKAGE[method](model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=x, targets=[target])[0]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_semantic_cam_equals_pytorch_grad_cam_on_the_same_model(tmp_path, method, data_dir):
    run = write_run(tmp_path)
    from imseg.io import read_image, resize_rgb

    image = resize_rgb(read_image(data_dir / "weizmann-horse" / "images" / "horse001.jpg"), (64, 64))
    seg = load_run(run, device="cpu")
    x = normalised(image)
    with torch.no_grad():
        labels = seg.model(x)[0].argmax(0).numpy()
    present = [c for c in np.unique(labels) if c != 0]
    category = int(present[0])
    result = explain(run, image, target=NAMES[category], method=method, device="cpu")
    expected = package_cam(method, seg.model, seg.model.decoder, x, category, labels == category)
    assert result.layer == "decoder" and result.target == NAMES[category]
    assert result.cam.shape == (64, 64) and result.cam.dtype == np.float32
    np.testing.assert_allclose(result.cam, expected, atol=1e-5)
    np.testing.assert_array_equal(result.region, labels == category)
    assert result.cam.max() > 0.99  # the package scales to [0, 1]


def test_semantic_region_mask_encoder_layer_and_size(tmp_path):
    run = write_run(tmp_path)
    seg = load_run(run, device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    region = np.zeros((64, 64), bool)
    region[10:30, 20:50] = True
    result = explain_semantic(seg, image, target=1, mask=region, layer="encoder")
    # encoder_depth=3: the last stage that runs is layer2 (layer3/4 exist but are never called)
    assert result.layer == "encoder.layer2" and result.target == "mask"
    expected = package_cam("gradcam", seg.model, seg.model.encoder.layer2, normalised(image), 1, region)
    np.testing.assert_allclose(result.cam, expected, atol=1e-5)
    # a non-square image larger than imgsz: letterboxed, mapped back to the image's own size
    wide = np.random.default_rng(2).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    out = explain_semantic(seg, wide, target=None)
    assert out.cam.shape == out.region.shape == (90, 150)
    assert np.isfinite(out.cam).all() and 0 <= out.cam.min() and out.cam.max() <= 1 and out.cam.max() > 0
    overlay = out.overlay(wide)
    assert overlay.shape == (90, 150, 3) and overlay.dtype == np.uint8 and not np.array_equal(overlay, wide)


def test_semantic_single_logit_run_explains_foreground(tmp_path):
    run = write_run(tmp_path, num_classes=1)
    seg = load_run(run, device="cpu")
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = normalised(image)
    with torch.no_grad():
        z = seg.model(x)[0, 0]
    fg = (z > 0).numpy()
    name, sign, region = ("horse", 1, fg) if fg.any() else ("background", -1, ~fg)
    result = explain_semantic(seg, image, target=name)

    class Signed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = seg.model

        def forward(self, t):
            return sign * self.inner(t)

    expected = package_cam("gradcam", Signed(), seg.model.decoder, x, 0, region)
    np.testing.assert_allclose(result.cam, expected, atol=1e-5)


def test_semantic_errors_are_specific(tmp_path):
    run = write_run(tmp_path)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ConfigError, match="not one of this run's classes"):
        explain(run, image, target="zebra", device="cpu")
    with pytest.raises(ConfigError, match="unknown CAM method"):
        explain(run, image, target=1, mask=np.ones((64, 64), bool), method="scorecam", device="cpu")
    with pytest.raises(InputError, match="mask must be"):
        explain(run, image, target=1, mask=np.ones((10, 10), bool), device="cpu")
    with pytest.raises(ConfigError, match="layer 'nope' not found"):
        explain(run, image, target=1, mask=np.ones((64, 64), bool), layer="nope", device="cpu")
    with pytest.raises(ConfigError, match="points/box prompts are for SAM"):
        explain(run, image, points=[(1, 1)], device="cpu")


# ----------------------------------------------------------------------------------------------- SAM
def official_mobile_sam(checkpoint):
    """The official mobile_sam model from the same checkpoint (it runs at 1024 px only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry

        return sam_model_registry["vit_t"](checkpoint=str(checkpoint)).eval()


def imseg_mobile_sam(checkpoint, img_size: int):
    from imseg.sam.checkpoint import build_model, get_config, load_into, read_state_dict

    return load_into(build_model(get_config("vit_t", img_size=img_size)), read_state_dict(checkpoint), "vit_t")


class OfficialPromptedMask(torch.nn.Module):
    """The official model as preprocessed image -> one mask's low-resolution logits for a fixed point."""

    def __init__(self, sam, coords, labels):
        super().__init__()
        self.sam, self.coords, self.labels, self.index = sam, coords, labels, 0

    def outputs(self, x):
        emb = self.sam.image_encoder(x)
        sparse, dense = self.sam.prompt_encoder(points=(self.coords, self.labels), boxes=None, masks=None)
        return self.sam.mask_decoder(emb, self.sam.prompt_encoder.get_dense_pe(), sparse, dense, True)

    def forward(self, x):
        return self.outputs(x)[0][:, self.index : self.index + 1]


@pytest.mark.slow
def test_sam_cam_matches_pytorch_grad_cam_on_the_official_model(mobile_sam_checkpoint, sample_image):
    """imseg's MobileSAM through imseg.load against the official model + the package, same reshape, at 1024 px."""
    from mobile_sam.utils.transforms import ResizeLongestSide

    import imseg

    ours = imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")
    point = (128.0, 100.0)
    result = explain_sam(ours, sample_image, points=[point], labels=[1])
    assert result.cam.shape == result.region.shape == sample_image.shape[:2]
    assert result.layer == "image_encoder.layers.3"
    assert np.isfinite(result.cam).all() and result.cam.max() > 0.5 and result.region.any()

    official = official_mobile_sam(mobile_sam_checkpoint)
    transform = ResizeLongestSide(1024)
    image = torch.as_tensor(transform.apply_image(sample_image)).permute(2, 0, 1)[None].float()
    x = official.preprocess(image)
    coords = torch.as_tensor(transform.apply_coords(np.array([point]), sample_image.shape[:2]), dtype=torch.float)[None]
    net = OfficialPromptedMask(official, coords, torch.ones(1, 1, dtype=torch.int))
    with torch.no_grad():
        low_res, iou = net.outputs(x)
    net.index = int(iou[0].argmax())
    mask = (low_res[0, net.index] > 0).numpy()
    expected = package_cam("gradcam", net, official.image_encoder.layers[-1], x, 0, mask, tokens_to_map)
    # the square 256 px image fills the 1024 input: the package's map scaled to the image is ours
    expected = cv2.resize(expected, sample_image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(result.cam, np.clip(expected, 0, 1), atol=2e-3)
    overlay = result.overlay(sample_image)
    assert overlay.shape == sample_image.shape and overlay.dtype == np.uint8


def test_sam_neck_layer_box_prompt_and_errors(mobile_sam_checkpoint, sample_image):
    ours = imseg_mobile_sam(mobile_sam_checkpoint, SAM_SIZE)
    wide = sample_image[:, :200]  # non-square: the map is cropped to the image inside the padded input
    result = explain_sam(ours, wide, box=(20, 30, 150, 200), layer="image_encoder.neck", method="hirescam")
    assert result.cam.shape == result.region.shape == (256, 200)
    assert np.isfinite(result.cam).all() and result.cam.max() > 0
    with pytest.raises(InputError, match="needs a prompt"):
        explain_sam(ours, wide)
    with pytest.raises(InputError, match="outside"):
        explain_sam(ours, wide, points=[(500, 10)])
    with pytest.raises(ConfigError, match="semantic runs"):
        explain(ours, wide, target="horse")
    assert isinstance(result, Explanation)


# ----------------------------------------------------------------------------------------------- CLI
def cli_app():
    from imseg.cli import app

    return app


def test_explain_cli_writes_overlays_and_maps_for_a_run(tmp_path, data_dir):
    from typer.testing import CliRunner

    from imseg.io import read_image, resize_rgb, write_image

    run = write_run(tmp_path)
    src = tmp_path / "images"
    image = resize_rgb(read_image(data_dir / "weizmann-horse" / "images" / "horse001.jpg"), (64, 64))
    write_image(src / "horse001.png", image)
    region = np.zeros((64, 64), np.uint8)
    region[8:40, 8:40] = 255
    write_image(tmp_path / "region.png", region)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(cli_app(), ["explain", str(src), "--run", str(run), "--mask", str(tmp_path / "region.png"),
                                    "--class", "horse", "--method", "gradcam++", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    overlay, cam = read_image(out / "horse001_mask_gradcampp.png"), read_image(out / "horse001_mask_gradcampp_cam.png")
    assert overlay.shape == (64, 64, 3) and not np.array_equal(overlay, image)
    seg = load_run(run, device="cpu")
    expected = package_cam("gradcam++", seg.model, seg.model.decoder, normalised(image), 1, region > 0)
    np.testing.assert_allclose(cam[..., 0] / 255.0, expected, atol=1 / 255 + 1e-6)
    # errors: no model at all, an unknown class, a malformed point
    res = runner.invoke(cli_app(), ["explain", str(src), "--out", str(out)])
    assert res.exit_code == 2 and "either --run" in res.output
    res = runner.invoke(cli_app(), ["explain", str(src), "--run", str(run), "--class", "zebra", "--device", "cpu"])
    assert res.exit_code == 2 and "zebra" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli_app(), ["explain", str(src), "--model", "mobile-sam", "--points", "1;2,x"])
    assert res.exit_code == 2 and "--points" in res.output


@pytest.mark.slow
def test_explain_cli_sam_point_prompt(tmp_path, mobile_sam_checkpoint, sample_image):
    from typer.testing import CliRunner

    from imseg.io import read_image, write_image

    write_image(tmp_path / "astronaut.png", sample_image)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli_app(), ["explain", str(tmp_path / "astronaut.png"), "--model", "mobile-sam",
                                         "--checkpoint", str(mobile_sam_checkpoint), "--points", "128,100",
                                         "--labels", "1", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    cam = read_image(out / "astronaut_mask_gradcam_cam.png")
    assert cam.shape == (256, 256, 3) and cam.max() > 100
