"""Parity of imseg.sam2 with the official ``sam2`` package (SAM 2.1 hiera tiny) on the same random weights.

The official model is built with random weights, every all-equal parameter perturbed, saved as
``{"model": state_dict}`` and loaded into ours. Features, mask logits and IoU predictions must agree
within 1e-4; binary masks must agree wherever the official logit is clearly away from the threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2.build_sam")

from conftest import build_official_sam2  # noqa: E402
from imseg.errors import PromptError, StateError  # noqa: E402
from imseg.io import read_image  # noqa: E402
from imseg.sam2 import SAM2ImagePredictor, build_sam2  # noqa: E402
from imseg.sam2.transforms import postprocess_masks  # noqa: E402

TOL = 1e-4
CONFIDENT = 1e-3  # |official logit| above which the binary masks must be equal


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    official = build_official_sam2()
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, path)
    return official, build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", path, device="cpu")


def _image(kind: str, request) -> np.ndarray:
    if kind == "random":  # non-square, not a multiple of the patch size
        return np.random.default_rng(1).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    path = request.getfixturevalue("data_dir") / "video-bedroom" / "00000.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


@pytest.fixture(scope="module")
def embedded(models):
    """Official and our predictors with the same image set, cached per image kind."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor

    cache: dict[str, tuple] = {}

    def get(kind: str, image: np.ndarray):
        if kind not in cache:
            with warnings.catch_warnings():  # the official transforms use the deprecated torch.jit.script
                warnings.simplefilter("ignore", FutureWarning)
                official = OfficialPredictor(models[0])
            ours = SAM2ImagePredictor(models[1])
            official.set_image(image)
            ours.set_image(image)
            cache[kind] = (official, ours, image)
        return cache[kind]

    return get


@pytest.fixture(params=["real", "random"])
def pair(request, embedded):
    return embedded(request.param, _image(request.param, request))


def _prompts(h: int, w: int) -> dict[str, dict]:
    box = np.array([w * 0.2, h * 0.1, w * 0.8, h * 0.7])
    return {
        "point": dict(point_coords=np.array([[w * 0.5, h * 0.4]]), point_labels=np.array([1])),
        "pos_neg_single": dict(point_coords=np.array([[w * 0.5, h * 0.4], [w * 0.1, h * 0.9]]),
                               point_labels=np.array([1, 0]), multimask_output=False),
        "box": dict(box=box),
        "box_single": dict(box=box, multimask_output=False),
        "box_point_single": dict(box=box, point_coords=np.array([[w * 0.5, h * 0.4]]), point_labels=np.array([1]),
                                 multimask_output=False),
        "boxes_batched": dict(box=np.stack([box, np.array([0, 0, w * 0.5, h * 0.5])])),
        "points_batched": dict(point_coords=np.array([[[w * 0.5, h * 0.4]], [[w * 0.2, h * 0.8]]]),
                               point_labels=np.array([[1], [1]])),
        "normalized_point": dict(point_coords=np.array([[0.3, 0.6]]), point_labels=np.array([1]),
                                 normalize_coords=False),
    }


def assert_outputs_match(ref: tuple, ours: tuple) -> None:
    """(masks/logits, iou, low-res logits) of official and ours."""
    for name, a, b in zip(("logits", "iou", "low_res"), ref, ours, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=0, atol=TOL, err_msg=name)


def _assert_masks_match(official, ours, prompt: dict, ref_logits: np.ndarray) -> None:
    ref_masks, _, _ = official.predict(**prompt)
    our_masks, _, _ = ours.predict(**prompt)
    assert our_masks.dtype == ref_masks.dtype
    assert set(np.unique(our_masks)) <= {0, 1}
    confident = np.abs(ref_logits) > CONFIDENT
    assert confident.mean() > 0.9  # the comparison covers most pixels
    np.testing.assert_array_equal(our_masks[confident], ref_masks[confident])


@pytest.mark.slow
def test_image_encoder_features_match(models):
    official, ours = models
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = official.forward_image(x), ours.forward_image(x)
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(ref[key]) == len(got[key]) == 3
        for a, b in zip(ref[key], got[key], strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=TOL)
    torch.testing.assert_close(got["vision_features"], ref["vision_features"], rtol=0, atol=TOL)


@pytest.mark.slow
def test_image_embeddings_match(pair):
    official, ours, _ = pair
    torch.testing.assert_close(ours.get_image_embedding(), official.get_image_embedding(), rtol=0, atol=TOL)
    for a, b in zip(official._features["high_res_feats"], ours._features["high_res_feats"], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", list(_prompts(1, 1)))
@pytest.mark.slow
def test_predict_matches_official(pair, case):
    official, ours, image = pair
    prompt = _prompts(*image.shape[:2])[case]
    ref = official.predict(return_logits=True, **prompt)
    got = ours.predict(return_logits=True, **prompt)
    assert_outputs_match(ref, got)
    _assert_masks_match(official, ours, prompt, ref[0])


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.slow
def test_mask_input_matches_official(pair, multimask):
    official, ours, image = pair
    first = _prompts(*image.shape[:2])["point"]
    _, ious, low_res = official.predict(**first)
    prompt = dict(first, mask_input=low_res[np.argmax(ious)][None], multimask_output=multimask)
    ref = official.predict(return_logits=True, **prompt)
    assert_outputs_match(ref, ours.predict(return_logits=True, **prompt))
    mask_only = dict(mask_input=low_res[np.argmax(ious)][None], multimask_output=multimask)
    assert_outputs_match(official.predict(return_logits=True, **mask_only),
                         ours.predict(return_logits=True, **mask_only))
    _assert_masks_match(official, ours, prompt, ref[0])


@pytest.mark.slow
def test_image_batch_matches_official(models):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (300, 420, 3), dtype=np.uint8), rng.integers(0, 256, (512, 256, 3), dtype=np.uint8)]
    official, ours = OfficialPredictor(models[0]), SAM2ImagePredictor(models[1])
    official.set_image_batch(images)
    ours.set_image_batch(images)
    torch.testing.assert_close(ours.get_image_embedding(), official.get_image_embedding(), rtol=0, atol=TOL)
    kwargs = dict(point_coords_batch=[np.array([[100.0, 80.0]]), np.array([[50.0, 400.0], [200.0, 100.0]])],
                  point_labels_batch=[np.array([1]), np.array([1, 0])],
                  box_batch=[np.array([10, 20, 300, 250]), None], return_logits=True)
    ref = official.predict_batch(**kwargs)
    got = ours.predict_batch(**kwargs)
    for ref_list, our_list in zip(ref, got, strict=True):
        assert len(ref_list) == len(our_list) == 2
        for a, b in zip(ref_list, our_list, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=TOL)


@pytest.mark.parametrize("library", ["mkl", "onednn"])
@pytest.mark.parametrize("side", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_memory_modules_match_official(models, side, library, monkeypatch):
    """Memory attention over two frames' memories plus object-pointer tokens (no RoPE on those), on the
    64x64 grid of 1024-px inputs and on a 32x32 grid (rotations recomputed); and the memory encoder; with the
    products (attention included: 1024+ keys) in either library of imseg.cpu_gemm."""
    monkeypatch.setenv("IMSEG_FP32_GEMM", library)
    official, ours = models
    gen = torch.Generator().manual_seed(3)
    tokens = side * side
    curr = torch.randn(tokens, 2, 256, generator=gen)
    curr_pos = torch.randn(tokens, 2, 256, generator=gen)
    ptr_tokens = 16
    memory = torch.randn(2 * tokens + ptr_tokens, 2, 64, generator=gen)
    memory_pos = torch.randn(2 * tokens + ptr_tokens, 2, 64, generator=gen)
    with torch.no_grad():
        ref = official.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=ptr_tokens)
        got = ours.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=ptr_tokens)
        torch.testing.assert_close(got, ref, rtol=0, atol=TOL)
        pix = torch.randn(2, 256, 64, 64, generator=gen)
        masks = torch.randn(2, 1, 1024, 1024, generator=gen) * 5
        ref_mem, got_mem = official.memory_encoder(pix, masks), ours.memory_encoder(pix, masks)
        torch.testing.assert_close(got_mem["vision_features"], ref_mem["vision_features"], rtol=0, atol=TOL)
        torch.testing.assert_close(got_mem["vision_pos_enc"][0], ref_mem["vision_pos_enc"][0], rtol=0, atol=TOL)


def test_object_pointer_temporal_encoding_matches_official(models):
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    official, ours = models
    offsets = torch.tensor([1.0, 2.0, -3.0, 15.0])
    with torch.no_grad():
        ref = official.obj_ptr_tpos_proj(get_1d_sine_pe(offsets / (official.max_obj_ptrs_in_encoder - 1), dim=256))
        torch.testing.assert_close(ours.object_pointer_pos(offsets), ref, rtol=0, atol=TOL)


def test_prompt_errors(models):
    predictor = SAM2ImagePredictor(models[1])
    with pytest.raises(StateError, match="set_image"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))
    with pytest.raises(StateError, match="set_image"):
        predictor.get_image_embedding()
    predictor._orig_hw, predictor._is_image_set = [(10, 10)], True  # prompt checks run before the model
    with pytest.raises(PromptError, match="point_labels must be given"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]))
    with pytest.raises(PromptError, match=r"\(N, 2\) or \(B, N, 2\)"):
        predictor.predict(point_coords=np.array([[1.0, 1.0, 1.0]]), point_labels=np.array([1]))
    with pytest.raises(PromptError, match="point_labels must be 1"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([7]))
    with pytest.raises(PromptError, match="mask_input must be"):
        predictor.predict(mask_input=np.zeros((256, 256)))
    predictor._orig_hw = [(10, 10), (20, 20)]  # as after set_image_batch with two images
    with pytest.raises(StateError, match="use predict_batch"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))
    with pytest.raises(StateError, match="set_image_batch"):
        predictor.predict_batch(point_coords_batch=[np.array([[1.0, 1.0]])], point_labels_batch=[np.array([1])])


def test_small_holes_and_sprinkles_are_flipped():
    logits = torch.full((1, 1, 64, 64), 5.0)
    logits[0, 0, 10:13, 10:13] = -5.0  # a 9-pixel hole
    logits[0, 0, 30:50, 30:50] = -5.0  # a 400-pixel hole
    logits[0, 0, 40:42, 40:42] = 5.0  # a 4-pixel sprinkle inside the big hole
    plain = postprocess_masks(logits, (64, 64))
    cleaned = postprocess_masks(logits, (64, 64), max_hole_area=10, max_sprinkle_area=10)
    assert (plain[0, 0, 10:13, 10:13] < 0).all() and (cleaned[0, 0, 10:13, 10:13] > 0).all()
    assert (cleaned[0, 0, 40:42, 40:42] < 0).all() and (plain[0, 0, 40:42, 40:42] > 0).all()
    assert (cleaned[0, 0, 31:39, 31:39] < 0).all()  # the large hole stays
    assert torch.equal(cleaned[0, 0, :5, :5], plain[0, 0, :5, :5])


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.slow
def test_frame_decoding_matches_official(models, multimask):
    from imseg.sam2.tracking import decode_frame

    official, ours = models
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 256, 64, 64, generator=gen)
    high_res = [torch.randn(2, 32, 256, 256, generator=gen), torch.randn(2, 64, 128, 128, generator=gen)]
    coords = torch.rand(2, 2, 2, generator=gen) * 1024
    labels = torch.tensor([[1, 0], [1, -1]], dtype=torch.int32)
    mask_inputs = torch.randn(2, 1, 1024, 1024, generator=gen)
    for points, masks in (((coords, labels), None), (None, mask_inputs), ((coords, labels), mask_inputs)):
        point_inputs = None if points is None else {"point_coords": points[0], "point_labels": points[1]}
        with torch.no_grad():
            ref = official._forward_sam_heads(feats, point_inputs=point_inputs, mask_inputs=masks,
                                              high_res_features=high_res, multimask_output=multimask)
            got = decode_frame(ours, feats, *(points or (None, None)), mask_inputs=masks, high_res_features=high_res,
                               multimask_output=multimask)
        names = ("low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks", "high_res_masks", "obj_ptr",
                 "object_score_logits")
        for name, value in zip(names, ref, strict=True):
            torch.testing.assert_close(getattr(got, name), value, rtol=0, atol=TOL, msg=name)


@pytest.mark.parametrize("binarize", [False, True])
def test_memory_encoding_matches_official(models, binarize):
    from imseg.sam2.tracking import encode_memory

    official, ours = models
    gen = torch.Generator().manual_seed(6)
    pix = torch.randn(2, 256, 64, 64, generator=gen)
    masks = torch.randn(2, 1, 1024, 1024, generator=gen) * 4
    scores = torch.tensor([[2.0], [-3.0]])  # one object present, one absent
    official.binarize_mask_from_pts_for_mem_enc = binarize
    try:
        with torch.no_grad():
            ref_feat, ref_pos = official._encode_new_memory([pix.flatten(2).permute(2, 0, 1)], [(64, 64)], masks,
                                                            scores, is_mask_from_pts=True)
            got_feat, got_pos = encode_memory(ours, pix, masks, scores, binarize=binarize)
    finally:
        official.binarize_mask_from_pts_for_mem_enc = False
    torch.testing.assert_close(got_feat, ref_feat, rtol=0, atol=TOL)
    torch.testing.assert_close(got_pos[0], ref_pos[0], rtol=0, atol=TOL)
