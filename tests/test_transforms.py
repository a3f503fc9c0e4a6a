"""Paired transforms: image and mask stay aligned, masks are never interpolated, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imseg.errors import ConfigError, InputError
from imseg.semantic.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    denormalize,
    letterbox_params,
    parse_augment,
)

IGNORE = 255
# Distinct, saturated colours far from black (black = padding) so each pixel's class can be read back.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]], np.uint8)
GEOMETRY = {"hflip": 0.5, "vflip": 0.5, "scale": [0.6, 1.6], "rotate90": 0.5, "rotate": 25.0, "elastic": 0.7,
            "color_jitter": 0.0, "clahe": 0.0, "blur": 0.0}


def _block_mask(height: int, width: int, seed: int, classes: int = len(PALETTE), block: int = 12) -> np.ndarray:
    """Piecewise-constant random class map (blocks of ``block`` px) of shape (H, W)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, size=(height // block + 1, width // block + 1))
    return np.kron(coarse, np.ones((block, block), np.int64))[:height, :width]


def _classify(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette class of every pixel, and whether the pixel is (near) black padding."""
    dist = ((rgb[:, :, None, :].astype(np.int32) - PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)
    return dist.argmin(-1), rgb.astype(np.int32).sum(-1) < 40


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_geometric_augmentations_keep_image_and_mask_aligned(seed):
    mask = _block_mask(90, 130, seed)
    image = PALETTE[mask]  # the image encodes its own mask
    transform = build_transforms((96, 112), GEOMETRY, train=True)
    torch.manual_seed(seed)
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 96, 112) and out_image.dtype == torch.float32
    assert out_mask.shape == (96, 112) and out_mask.dtype == torch.int64
    rgb = denormalize(out_image)
    read_back, black = _classify(rgb)
    labelled = out_mask.numpy() != IGNORE
    assert labelled.mean() > 0.2
    # Interior pixels (away from class edges, where bilinear image resampling blends colours) must agree.
    from scipy import ndimage

    m = out_mask.numpy()
    edge = ndimage.morphological_gradient(m, size=5) > 0  # 2 px: antialiased downscaling blends wider
    core = labelled & ~edge & ~black
    assert (read_back[core] == m[core]).mean() > 0.995
    # Pixels created by padding/rotation are ignore in the mask and black in the image.
    assert black[~labelled & ~ndimage.binary_dilation(labelled, iterations=2)].all()


@pytest.mark.parametrize("augment", ["default", GEOMETRY, {"elastic": 1.0, "rotate": 40, "scale": [0.3, 3.0]}])
def test_masks_are_never_interpolated(augment):
    mask = np.where(_block_mask(70, 50, 7, classes=3, block=3) == 2, 7, _block_mask(70, 50, 7, classes=3, block=3))
    values = set(np.unique(mask).tolist()) | {IGNORE}
    image = np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    transform = build_transforms(64, augment, train=True)
    for seed in range(4):
        torch.manual_seed(seed)
        _, out_mask = transform(image, mask)
        assert set(torch.unique(out_mask).tolist()) <= values


def test_seeded_transforms_reproduce_and_differ_between_seeds():
    mask = _block_mask(80, 80, 3)
    image = PALETTE[mask]
    transform = build_transforms(64, {**GEOMETRY, "color_jitter": 0.3, "blur": 0.5, "clahe": 0.5}, train=True)

    def run(seed):
        torch.manual_seed(seed)
        return transform(image, mask)

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_letterbox_pads_with_ignore_and_can_be_undone():
    mask = _block_mask(48, 64, 5, block=4)
    image = PALETTE[mask]
    out_image, out_mask = build_transforms(128, train=False)(image, mask)
    scale, new_h, new_w = letterbox_params(48, 64, 128)
    assert (scale, new_h, new_w) == (2.0, 96, 128)
    assert out_image.shape == (3, 128, 128)
    assert (out_mask[new_h:] == IGNORE).all() and (out_mask[:new_h] != IGNORE).all()
    # nearest upscaling by 2 then taking every 2nd pixel gives the original labels back exactly
    np.testing.assert_array_equal(out_mask[:new_h, :new_w].numpy()[::2, ::2], mask)
    assert np.abs(denormalize(out_image)[new_h:].astype(int)).max() == 0  # image padding is black


def test_no_resize_and_normalisation_round_trip(sample_image):
    mask = np.zeros(sample_image.shape[:2], np.int64)
    out_image, out_mask = build_transforms(None, train=False)(sample_image, mask)
    assert out_image.shape == (3, *sample_image.shape[:2])
    expected = (sample_image[..., 0] / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    np.testing.assert_allclose(out_image[0].numpy(), expected, atol=1e-5)
    assert np.abs(denormalize(out_image).astype(int) - sample_image).max() <= 1
    assert torch.equal(out_mask, torch.zeros_like(out_mask))


def test_photometric_ops_leave_mask_untouched_and_clahe_raises_contrast(sample_image):
    low_contrast = (sample_image // 4 + 96).astype(np.uint8)
    mask = _block_mask(*sample_image.shape[:2], 9)
    transform = build_transforms(None, {"hflip": 0.0, "scale": None, "color_jitter": 0.0, "clahe": 1.0}, train=True)
    out_image, out_mask = transform(low_contrast, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    assert denormalize(out_image).std() > 1.5 * low_contrast.std()
    blur = build_transforms(None, {"hflip": 0.0, "scale": None, "color_jitter": 0.5, "blur": 1.0}, train=True)
    out_image, out_mask = blur(sample_image, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    assert not np.array_equal(denormalize(out_image), sample_image)
    off = {"hflip": 0.0, "scale": None, "color_jitter": 0.0}
    out_image, out_mask = build_transforms(None, {**off, "invert": 1.0}, train=True)(sample_image, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    assert np.abs(denormalize(out_image).astype(int) - (255 - sample_image.astype(int))).max() <= 1
    out_image, out_mask = build_transforms(None, {**off, "grayscale": 1.0}, train=True)(sample_image, mask)
    np.testing.assert_array_equal(out_mask.numpy(), mask)
    grey = denormalize(out_image).astype(int)
    luma = sample_image.astype(np.float64) @ [0.2989, 0.587, 0.114]  # ITU-R 601, as torchvision greys
    assert np.abs(grey - grey[..., :1]).max() <= 1 and np.abs(grey[..., 0] - luma).max() <= 1.5


def test_augment_settings_are_checked():
    assert parse_augment("none")["hflip"] == 0.0
    merged = parse_augment({"hflip": 0.0, "scale": 0.25})
    assert merged["hflip"] == 0.0 and merged["scale"] == [0.75, 1.25] and merged["color_jitter"] == 0.2
    with pytest.raises(ConfigError, match="unknown augmentation key"):
        parse_augment({"hfilp": 0.5})
    with pytest.raises(ConfigError, match="probability"):
        parse_augment({"vflip": 2})
    with pytest.raises(ConfigError, match="'invert' is a probability"):
        parse_augment({"invert": 1.5})
    with pytest.raises(ConfigError, match="scale"):
        parse_augment({"scale": [2.0, 1.0]})
    with pytest.raises(ConfigError, match="imgsz"):
        build_transforms("big")
    with pytest.raises(InputError, match=r"\(3, H, W\)"):
        denormalize(torch.zeros(4, 4))


def _centroid(weights: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(weights.shape[0], dtype=torch.float64),
                            torch.arange(weights.shape[1], dtype=torch.float64), indexing="ij")
    total = weights.sum()
    return torch.stack([(weights * ys).sum() / total, (weights * xs).sum() / total])


@pytest.mark.parametrize("augment", ["none", {"scale": [0.7, 1.3], "hflip": 0.5, "color_jitter": 0.0}])
def test_downscaled_masks_are_not_shifted_against_their_image(augment):
    # A white rectangle on black: the image's brightness and the mask are the same shape, so after a downscale by
    # a non-integer factor their centroids must agree (nearest at floor(i * s) moved masks ~0.5 px up and left).
    rng = np.random.default_rng(0)
    offsets = []
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(180, 400, 2))
        mask = np.zeros((height, width), np.int64)
        top, left = int(rng.integers(10, height // 2)), int(rng.integers(10, width // 2))
        mask[top: top + int(rng.integers(30, height // 2)), left: left + int(rng.integers(30, width // 2))] = 1
        image = np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        torch.manual_seed(trial)
        out_image, out_mask = build_transforms(96, augment, train=augment != "none")(image, mask)
        brightness = torch.from_numpy(denormalize(out_image)[:, :, 0].astype(np.float64) / 255)
        offsets.append((_centroid(brightness) - _centroid((out_mask == 1).double())).numpy())
    mean = np.mean(offsets, axis=0)
    assert np.abs(mean).max() < 0.08, mean  # px at 96; the shifted masks were off by 0.45-0.5
    assert np.abs(offsets).mean() < 0.25


def test_a_twin_makes_the_same_view_at_twice_the_pixels():
    # at_size(2 * imgsz): sizes and crop positions are worked out at imgsz and doubled, so pixel (i, j) of a view is
    # exactly the 2x2 block (2i.., 2j..) of its twin's: image and mask, whatever the zoom, crop, flip and colours
    mask = _block_mask(150, 230, 4, block=25)
    image = PALETTE[mask]
    augment = {"hflip": 0.5, "scale": [0.6, 1.4], "color_jitter": 0.3}
    small = build_transforms(96, augment, train=True)
    large = small.at_size(192)
    for seed in range(6):
        torch.manual_seed(seed)
        image_small, mask_small = small(image, mask)
        torch.manual_seed(seed)
        image_large, mask_large = large(image, mask)
        assert image_large.shape == (3, 192, 192) and mask_large.shape == (192, 192)
        blocks = mask_large.reshape(96, 2, 96, 2).permute(0, 2, 1, 3).reshape(96, 96, 4)
        uniform = (blocks == blocks[..., :1]).all(-1)
        assert uniform.double().mean() > 0.9 and torch.equal(blocks[..., 0][uniform], mask_small[uniform]), seed
        pooled = torch.nn.functional.avg_pool2d(image_large[None], 2)[0]
        assert (pooled - image_small).abs().mean() < 0.05, seed  # normalised units: resampling apart, not shifted
    # no exact twin: not a multiple, rotations and elastic warps (drawn per pixel), native-resolution crops
    assert small.at_size(150) is None
    for extra in ({"rotate": 10}, {"elastic": 0.5}, {"blur": 0.5}, {"native": True}):
        assert build_transforms(96, {**augment, **extra}, train=True).at_size(192) is None
    assert build_transforms(96, {"native": True}, train=False).at_size(192) is None  # a centre crop, not a letterbox
    assert build_transforms(96, train=False).at_size(288) is not None  # validation letterbox: 3x
