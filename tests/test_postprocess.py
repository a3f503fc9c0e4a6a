"""Post-processing: morphology and region clean-up on Masks / masks / label maps, dense CRF, pipelines."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from imseg import postprocess as pp
from imseg.errors import ConfigError, DependencyError, InputError
from imseg.masks import Masks


def _disc(shape=(48, 48), center=(24, 24), radius=10) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_fill_holes_all_or_up_to_max_area():
    mask = _disc(radius=15)
    small_hole = _disc(center=(20, 20), radius=1)
    big_hole = _disc(center=(28, 28), radius=5)
    holed = mask & ~small_hole & ~big_hole
    np.testing.assert_array_equal(pp.fill_holes(holed), mask)
    partly = pp.fill_holes(holed, max_area=int(small_hole.sum()))
    np.testing.assert_array_equal(partly, mask & ~big_hole)


def test_remove_small_and_keep_largest_on_masks_keep_metadata():
    blob = _disc(radius=8)
    speck = np.zeros_like(blob)
    speck[2:4, 2:4] = True
    masks = Masks(np.stack([blob | speck, speck]), scores=[0.9, 0.4], labels=[3, 5], tag=np.array(["a", "b"]))
    cleaned = pp.remove_small(masks, min_area=10)
    assert len(cleaned) == 1  # the speck-only mask is dropped
    np.testing.assert_array_equal(cleaned.masks[0], blob)
    assert cleaned.scores.tolist() == pytest.approx([0.9]) and cleaned.labels.tolist() == [3]
    assert cleaned.fields["tag"].tolist() == ["a"] and cleaned.areas.tolist() == [int(blob.sum())]
    largest = pp.keep_largest(masks)
    np.testing.assert_array_equal(largest.masks[0], blob)
    np.testing.assert_array_equal(largest.masks[1], speck)


def test_label_maps_are_processed_per_label_and_stay_label_maps():
    label_map = np.zeros((48, 48), np.int32)
    label_map[_disc(center=(12, 12), radius=6)] = 4
    label_map[_disc(center=(36, 36), radius=6)] = 9
    label_map[0, 47] = 9  # a stray pixel of label 9
    out = pp.remove_small(pp.fill_holes(label_map), min_area=5)
    assert out.dtype == label_map.dtype and set(np.unique(out)) == {0, 4, 9}
    assert out[0, 47] == 0 and (out == 9).sum() == (label_map == 9).sum() - 1
    grown = pp.dilate(out, radius=2)
    assert (grown == 4).sum() > (out == 4).sum()


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_morphology_matches_scipy_with_the_same_disk(radius):
    import cv2
    from scipy import ndimage as ndi

    rng = np.random.default_rng(radius)
    mask = ndi.gaussian_filter(rng.random((40, 50)), 2) > 0.5
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2).astype(bool)
    np.testing.assert_array_equal(pp.dilate(mask, radius), ndi.binary_dilation(mask, disk))
    np.testing.assert_array_equal(pp.erode(mask, radius), ndi.binary_erosion(mask, disk, border_value=1))
    opened = ndi.binary_dilation(ndi.binary_erosion(mask, disk, border_value=1), disk)  # border ignored
    np.testing.assert_array_equal(pp.opening(mask, radius), opened)
    closed = pp.closing(mask, radius)
    assert (closed >= mask).all() and (pp.opening(mask, radius) <= mask).all()
    inner = (slice(2 * radius, -2 * radius),) * 2
    np.testing.assert_array_equal(closed[inner], ndi.binary_closing(mask, disk)[inner])


def test_smooth_boundaries_removes_jaggies_but_keeps_the_shape():
    disc = _disc(radius=12)
    rng = np.random.default_rng(0)
    jagged = disc ^ (pp.dilate(disc, 1) & ~pp.erode(disc, 1) & (rng.random(disc.shape) < 0.5))
    smoothed = pp.smooth_boundaries(jagged, sigma=1.5)
    assert _iou(smoothed, disc) > _iou(jagged, disc) and _iou(smoothed, disc) > 0.95


def test_split_touching_on_mask_masks_and_label_map():
    pair = _disc(shape=(48, 64), center=(24, 21), radius=11) | _disc(shape=(48, 64), center=(24, 42), radius=11)
    labels = pp.split_touching(pair)
    assert labels.max() == 2 and (labels > 0).sum() == pair.sum()
    masks = pp.split_touching(Masks(pair[None], scores=[0.7], labels=[2]))
    assert len(masks) == 2 and masks.labels.tolist() == [2, 2] and masks.scores.tolist() == pytest.approx([0.7, 0.7])
    assert abs(int(masks.areas[0]) - int(masks.areas[1])) < 0.1 * pair.sum()


def test_threshold_and_probability_validation():
    probs = np.array([[0.2, 0.5], [0.7, 1.0]], np.float32)
    np.testing.assert_array_equal(pp.threshold(probs, 0.5), [[False, True], [True, True]])
    with pytest.raises(InputError, match="NaN"):
        pp.threshold(np.array([[0.1, np.nan]]))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pp.threshold(np.array([[0.1, 3.0]]))
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(InputError, match="NaN"):
        pp.dense_crf(image, np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(InputError, match="must match"):
        pp.dense_crf(np.zeros((3, 3, 3), np.uint8), probs)
    with pytest.raises(InputError):
        pp.fill_holes(np.zeros((0, 4), bool))


def test_dense_crf_returns_distributions_of_the_input_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    logits = rng.normal(size=(3, 20, 30))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    refined = pp.dense_crf(image, probs, iterations=3)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    fg = pp.dense_crf(image, probs[0], iterations=2)
    assert fg.shape == (20, 30) and 0 <= fg.min() and fg.max() <= 1


def test_dense_crf_missing_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    with pytest.raises(DependencyError, match=r"pip install 'imseg\[crf\]'"):
        pp.dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 0.5))


def test_dense_crf_repairs_noisy_horse_masks(data_dir):
    from imseg.io import read_image

    root = data_dir / "weizmann-horse"
    rng = np.random.default_rng(0)
    before, after = [], []
    for name in json.loads((root / "split.json").read_text())["test"][:3]:
        image = read_image(root / "images" / f"{name}.jpg")
        truth = read_image(root / "masks" / f"{name}.png")[:, :, 0] > 0
        noisy = np.clip(np.where(truth, 0.65, 0.35) + rng.normal(0, 0.25, truth.shape), 0, 1)
        before.append(_iou(pp.threshold(noisy), truth))
        after.append(_iou(pp.threshold(pp.dense_crf(image, noisy)), truth))
    assert np.mean(after) > np.mean(before) + 0.2, (before, after)


def test_parse_and_apply_pipeline():
    pipeline = pp.parse_pipeline("remove_small=64, fill_holes=20,open,crf=iterations:3;sxy:40")
    assert [name for name, _ in pipeline.steps] == ["remove_small", "fill_holes", "open", "crf"]
    assert pipeline.steps[0][1] == {"min_area": 64} and pipeline.steps[3][1] == {"iterations": 3, "sxy": 40}
    assert pipeline.needs_image
    blob = _disc(radius=8)
    speck = np.zeros_like(blob)
    speck[1:3, 1:3] = True
    masks = Masks(np.stack([blob & ~_disc(radius=1), speck]))
    out = pp.apply_pipeline(masks, "remove_small=10,fill_holes=8,dilate=1")
    expected = pp.dilate(pp.fill_holes(pp.remove_small(masks, 10), 8), 1)
    assert len(out) == 1
    np.testing.assert_array_equal(out.masks, expected.masks)
    assert len(pp.apply_pipeline(masks, "")) == 2  # empty pipeline: unchanged


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("remove_smal=64", "Did you mean remove_small"),
        ("remove_small=abc", "not a number"),
        ("keep_largest=3", "takes no value"),
        ("dilate=-2", ">= 0"),
        ("crf=bogus:1", "bad parameter"),
    ],
)
def test_bad_pipelines_raise_config_error(spec, match):
    with pytest.raises(ConfigError, match=match):
        pp.parse_pipeline(spec)


def test_crf_step_needs_the_image():
    with pytest.raises(ConfigError, match="image"):
        pp.apply_pipeline(Masks(_disc()[None]), "crf")


# ============================================================================ small regions: one home
def test_remove_small_labels_drops_whole_labels_and_renumbers():
    label_map = np.zeros((48, 48), np.int64)
    label_map[_disc(center=(12, 12), radius=6)] = 3
    label_map[_disc(center=(36, 36), radius=6)] = 9
    label_map[0:2, 40:42] = 7  # 4 pixels
    out = pp.remove_small_labels(label_map, min_area=5)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 1, 2}
    np.testing.assert_array_equal(out == 1, label_map == 3)
    np.testing.assert_array_equal(out == 2, label_map == 9)
    np.testing.assert_array_equal(pp.remove_small_labels(label_map, min_area=0) > 0, label_map > 0)
    # the same regions as remove_small when each label is one connected piece
    np.testing.assert_array_equal(out > 0, pp.remove_small(label_map, min_area=5) > 0)
    with pytest.raises(InputError, match="label map"):
        pp.remove_small_labels(label_map > 0, min_area=5)
    with pytest.raises(ConfigError, match="min_area"):
        pp.remove_small_labels(label_map, min_area=-1)


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_segment_anything_on_real_masks(mode, data_dir):
    amg = pytest.importorskip("segment_anything.utils.amg")
    from imseg.io import read_image

    root = data_dir / "weizmann-horse"
    rng = np.random.default_rng(0)
    changed_any = False
    for name in json.loads((root / "split.json").read_text())["test"][:3]:
        truth = read_image(root / "masks" / f"{name}.png")[:, :, 0] > 0
        noisy = truth ^ (rng.random(truth.shape) < 0.01)  # specks outside and pinholes inside
        for min_area in (5, 100):
            expected, expected_changed = amg.remove_small_regions(noisy, min_area, mode)
            got, changed = pp.remove_small_regions(noisy, min_area, mode)
            np.testing.assert_array_equal(got, expected)
            assert changed == expected_changed
            changed_any |= changed
    assert changed_any
    with pytest.raises(ConfigError, match="holes"):
        pp.remove_small_regions(truth, 10, "specks")


def test_split_mask_is_the_watershed_split_touching_uses():
    pair = _disc(shape=(48, 64), center=(24, 21), radius=11) | _disc(shape=(48, 64), center=(24, 42), radius=11)
    pieces = pp.split_mask(pair, min_distance=5, distance_sigma=1.0)
    assert pieces.dtype == np.int32 and pieces.max() == 2 and ((pieces > 0) == pair).all()
    np.testing.assert_array_equal(pieces, pp.split_touching(pair))
    np.testing.assert_array_equal(pp.split_mask(np.zeros((5, 5), bool)), np.zeros((5, 5), np.int32))
