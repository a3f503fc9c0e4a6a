"""One ``Segmenter.segment``, every engine: torch and ONNX Runtime give the same ``Masks``.

A random-weight MobileSAM and a small random-weight semantic run are exported to ONNX and loaded
with both backends; for each prompt kind the two results must agree field by field (count, order,
field names, masks IoU >= 0.99, scores within 1e-3). Also pinned here: prompt checks that need no
image, and the content-keyed embedding cache (a prompt call after any call on the same image does
not encode it again).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("mobile_sam")

import imseg  # noqa: E402
from imseg.errors import PromptError  # noqa: E402

CLASSES = ["background", "membrane", "cell"]
EVERYTHING = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.fixture(scope="module")
def image(sample_image) -> np.ndarray:
    return np.ascontiguousarray(sample_image[:160, :224])  # non-square


@pytest.fixture(scope="module")
def torch_sam(mobile_sam_checkpoint):
    return imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def ort_sam(mobile_sam_checkpoint, tmp_path_factory):
    from imseg.export import export_model

    out = tmp_path_factory.mktemp("parity_sam") / "mobile-sam"
    export_model("mobile-sam", checkpoint=mobile_sam_checkpoint, out=out)
    return imseg.load(out, backend="onnxruntime", device="cpu", threads=1)


@pytest.fixture(scope="module")
def semantic_pair(tmp_path_factory):
    """(torch, onnxruntime) segmenters of one small random-weight U-Net run."""
    pytest.importorskip("segmentation_models_pytorch")
    import torch

    from imseg.export import export_model
    from imseg.semantic.models import create_model, model_config
    from imseg.semantic.train import save_checkpoint

    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=len(CLASSES))
    run = tmp_path_factory.mktemp("parity_runs") / "exp"
    save_checkpoint(run / "weights" / "best.pt", model, {
        "model": model_config("unet", "resnet18", len(CLASSES)), "class_names": CLASSES, "imgsz": 128,
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    out = tmp_path_factory.mktemp("parity_semantic")
    export_model(run=run, out=out, format="onnx")
    return imseg.load(run, device="cpu"), imseg.load(out, backend="onnxruntime", device="cpu", threads=1)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def assert_same_masks(got: imseg.Masks, ref: imseg.Masks) -> None:
    assert len(got) == len(ref) and got.image_size == ref.image_size
    assert sorted(got.fields) == sorted(ref.fields)
    for i in range(len(ref)):
        assert mask_iou(got.masks[i], ref.masks[i]) >= 0.99, f"mask {i}"
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-3)
    if ref.labels is not None:
        np.testing.assert_array_equal(got.labels, ref.labels)
    for name, value in ref.fields.items():
        if name == "low_res_logits":
            np.testing.assert_allclose(got.fields[name], value, atol=5e-2, rtol=0)
        elif name in ("prompt_index", "crop_box"):
            np.testing.assert_array_equal(got.fields[name], value)
        else:
            np.testing.assert_allclose(got.fields[name], value, atol=1e-3)


PROMPTS = {
    "single point": dict(points=[(100, 80)], labels=[1]),
    "single point multimask": dict(points=[(100, 80)], labels=[1], multimask=True),
    "points and labels": dict(points=[(60.5, 80.0), (150.0, 40.0)], labels=[1, 0]),
    "points and labels multimask": dict(points=[(60.5, 80.0), (150.0, 40.0)], labels=[1, 0], multimask=True),
    "box": dict(box=[20, 30, 180, 140]),
    "box multimask": dict(box=[20, 30, 180, 140], multimask=True),
    "box and point": dict(box=[20, 30, 180, 140], points=[(100, 90)], labels=[0]),
    "several boxes": dict(box=[[20, 30, 180, 140], [100, 10, 220, 100], [0, 0, 60, 60]]),
    "several boxes multimask": dict(box=[[20, 30, 180, 140], [100, 10, 220, 100]], multimask=True),
}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_sam_prompt_modes_agree_across_engines(torch_sam, ort_sam, image, kind):
    ref = torch_sam.segment(image, **PROMPTS[kind])
    got = ort_sam.segment(image, **PROMPTS[kind])
    assert "low_res_logits" in ref.fields
    assert len(ref) == (3 if PROMPTS[kind].get("multimask") and np.ndim(PROMPTS[kind].get("box")) < 2
                        else np.atleast_2d(PROMPTS[kind].get("box", [0, 0, 1, 1])).shape[0])
    assert np.all(np.diff(ref.scores) <= 0) or "prompt_index" in ref.fields
    assert_same_masks(got, ref)


def test_sam_mask_input_agrees_across_engines(torch_sam, ort_sam, image):
    first = torch_sam.segment(image, box=[20, 30, 180, 140])
    logits = first.fields["low_res_logits"][0]
    ref = torch_sam.segment(image, points=[(100, 90)], labels=[1], mask_input=logits)
    got = ort_sam.segment(image, points=[(100, 90)], labels=[1], mask_input=logits[None])
    assert_same_masks(got, ref)


def test_sam_everything_mode_agrees_across_engines(torch_sam, ort_sam, image):
    ref = torch_sam.segment(image, **EVERYTHING)
    got = ort_sam.segment(image, **EVERYTHING)
    assert len(ref) > 0
    assert_same_masks(got, ref)


def test_semantic_engines_agree(semantic_pair, image):
    torch_seg, ort_seg = semantic_pair
    ref = torch_seg.segment(image)
    got = ort_seg.segment(image)
    assert 0 not in list(ref.labels)  # "background" is left out by default on both
    assert_same_masks(got, ref)
    probs = torch_seg.probabilities(image)
    for mask, label, score in zip(got.masks, got.labels, got.scores, strict=True):
        assert score == pytest.approx(float(probs[label][mask].mean()), abs=1e-3)  # mean class probability
    assert_same_masks(ort_seg.segment(image, include_background=True), torch_seg.segment(image, include_background=True))


@pytest.mark.parametrize("labels", [[2], [3], [-1], [0.5]])
def test_segment_refuses_labels_other_than_0_and_1(torch_sam, ort_sam, image, labels):
    for segmenter in (torch_sam, ort_sam):
        with pytest.raises(PromptError, match="label"):
            segmenter.segment(image, points=[(10, 10)], labels=labels)
        with pytest.raises(PromptError, match="label"):
            segmenter.check_prompts(points=[(10, 10)], labels=labels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(points=[(1, np.nan)]), "NaN"),
    (dict(points=[(1, 2), (3, 4)], labels=[1]), "one entry per point"),
    (dict(box=[10, 10, 5, 20]), "inverted"),
    (dict(box=[1, 2, 3]), "shape"),
    (dict(labels=[1]), "without points"),
    (dict(mask_input=np.zeros((2, 256, 256))), "mask_input"),
    (dict(box=[[0, 0, 5, 5], [1, 1, 6, 6]], points=[(1, 1)]), "several boxes"),
])
def test_check_prompts_needs_no_image(torch_sam, kwargs, match):
    with pytest.raises(PromptError, match=match):
        torch_sam.check_prompts(**kwargs)
    with pytest.raises(PromptError, match=match):  # refused before the (unreadable) image is looked at
        torch_sam.segment("no/such/image.png", **kwargs)
    assert torch_sam.check_prompts() is None


@pytest.mark.slow
def test_prompt_after_everything_does_not_encode_again(torch_sam, ort_sam, image, monkeypatch):
    calls = []
    handle = torch_sam.model.image_encoder.register_forward_hook(lambda *_: calls.append("torch"))
    embed = ort_sam.predictor.embed
    monkeypatch.setattr(ort_sam.predictor, "embed", lambda rgb: calls.append("ort") or embed(rgb))
    try:
        fresh = np.ascontiguousarray(image[::-1])  # not cached by earlier tests
        for segmenter, tag in ((torch_sam, "torch"), (ort_sam, "ort")):
            segmenter.segment(fresh, **EVERYTHING)
            segmenter.segment(fresh, points=[(50, 50)], labels=[1])
            segmenter.segment(fresh, box=[10, 10, 100, 100])
            assert calls.count(tag) == 1, f"{tag}: the image was encoded {calls.count(tag)} times"
    finally:
        handle.remove()


@pytest.mark.slow
def test_embedding_cache_is_an_lru_of_the_given_size(torch_sam, image):
    calls = []
    handle = torch_sam.model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    a, b = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(image[10:, 5:])
    try:
        torch_sam.embedding_cache_size = 2
        for img in (a, b, a, b):
            torch_sam.segment(img, points=[(20, 20)], labels=[1])
        assert len(calls) == 2
        torch_sam.embedding_cache_size = 1
        for img in (a, b, a):
            torch_sam.segment(img, points=[(20, 20)], labels=[1])
        assert len(calls) == 5
    finally:
        torch_sam.embedding_cache_size = 1
        handle.remove()
