"""Parity of imseg.sam with the official segment_anything / mobile_sam on the same random weights.

vit_t runs at full config; vit_b runs with 2 encoder blocks (block 0 windowed, block 1 global) so
both attention paths are covered at 1024x1024; the full vit_b layout is loaded once and its
decoder compared. Key layouts of all four real configs are compared on the meta device.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")
pytest.importorskip("mobile_sam")

from conftest import build_official_sam, perturb_constant_parameters  # noqa: E402
from imseg.sam import SamPredictor, sam_model_registry  # noqa: E402
from imseg.sam.checkpoint import build_sam  # noqa: E402

REDUCED = {"depth": 2, "global_attn_indexes": (1,)}


def _official_predictor(model):
    if any(k.startswith("image_encoder.layers.") for k in model.state_dict()):
        from mobile_sam import SamPredictor as OfficialPredictor
    else:
        from segment_anything import SamPredictor as OfficialPredictor
    return OfficialPredictor(model)


def _images(sample_image: np.ndarray) -> dict[str, np.ndarray]:
    from skimage import data

    coffee = data.coffee()[::2, ::2]  # 200x300, non-square
    gray = np.repeat(np.round(sample_image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None], 3, axis=2)
    return {
        "square": sample_image,
        "wide": np.ascontiguousarray(coffee),
        "gray": gray,
        "tiny": np.ascontiguousarray(sample_image[100:120, 100:132]),  # 20 x 32 (H x W)
    }


def _prompts(h: int, w: int) -> dict[str, dict]:
    return {
        "point": dict(point_coords=np.array([[w * 0.5, h * 0.4]]), point_labels=np.array([1])),
        "pos_neg": dict(point_coords=np.array([[w * 0.5, h * 0.4], [w * 0.1, h * 0.9]]), point_labels=np.array([1, 0]),
                        multimask_output=False),
        "box": dict(box=np.array([w * 0.2, h * 0.1, w * 0.8, h * 0.7])),
        "box_points": dict(box=np.array([w * 0.2, h * 0.1, w * 0.8, h * 0.7]),
                           point_coords=np.array([[w * 0.5, h * 0.4]]), point_labels=np.array([1])),
    }


def assert_outputs_match(ref, ours, ref_logits: np.ndarray) -> None:
    """Official tolerances: logits <= 1e-3 (relative to scale), IoU <= 1e-4, masks equal except
    <= 0.1% of pixels and only where the reference logit is near the threshold."""
    (m1, i1, l1), (m2, i2, l2) = ref, ours
    assert m1.shape == m2.shape and m2.dtype == np.bool_
    assert i2.dtype == np.float32 and l2.dtype == np.float32 and l1.shape == l2.shape
    scale = max(1.0, float(np.abs(l1).max()))
    assert np.abs(l1 - l2).max() <= 1e-3 * scale
    assert np.abs(i1 - i2).max() <= 1e-4
    differ = m1 != m2
    assert differ.mean() <= 1e-3
    if differ.any():
        assert np.abs(ref_logits[differ]).max() <= 1e-2 * scale


def _compare_image(off_pred, our_pred, image: np.ndarray, full: bool = True) -> None:
    off_pred.set_image(image)
    our_pred.set_image(image)
    ref_emb, emb = off_pred.features, our_pred.get_image_embedding()
    assert emb.shape == ref_emb.shape == (1, 256, 64, 64)
    assert (emb - ref_emb).abs().max().item() <= 1e-4 * max(1.0, ref_emb.abs().max().item())
    assert our_pred.original_size == tuple(image.shape[:2]) and our_pred.input_size == off_pred.input_size
    h, w = image.shape[:2]
    prompts = _prompts(h, w)
    if not full:
        prompts = {k: prompts[k] for k in ("point", "box_points")}
    for name, kw in prompts.items():
        ref = off_pred.predict(**kw)
        ref_logits, _, _ = off_pred.predict(**kw, return_logits=True)
        ours = our_pred.predict(**kw)
        assert_outputs_match(ref, ours, ref_logits)
        if name == "point":  # iterate with the previous low-res logits as mask_input
            best = int(np.argmax(ref[1]))
            mask_in = ref[2][best][None]
            ref2 = off_pred.predict(**kw, mask_input=mask_in, multimask_output=False)
            logits2, _, _ = off_pred.predict(**kw, mask_input=mask_in, multimask_output=False, return_logits=True)
            assert_outputs_match(ref2, our_pred.predict(**kw, mask_input=mask_in, multimask_output=False), logits2)


def _compare_batched_boxes(off_pred, our_pred) -> None:
    h, w = off_pred.original_size
    boxes = np.array([[0, 0, w * 0.5, h * 0.5], [w * 0.3, h * 0.2, w - 1, h - 1], [w * 0.1, h * 0.6, w * 0.4, h - 1]])
    ref_t = off_pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    our_t = our_pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    with torch.no_grad():
        ref = off_pred.predict_torch(None, None, boxes=ref_t, multimask_output=True)
        ref_logits = off_pred.predict_torch(None, None, boxes=ref_t, multimask_output=True, return_logits=True)[0]
    ours = our_pred.predict_torch(None, None, boxes=our_t, multimask_output=True)
    assert ours[0].shape == (3, 3, h, w) and ours[1].shape == (3, 3) and ours[2].shape == (3, 3, 256, 256)
    assert_outputs_match(tuple(t.numpy() for t in ref), tuple(t.numpy() for t in ours), ref_logits.numpy())
    # imseg's batched form in original-image pixels gives the same answer
    batch = our_pred.predict_batch(boxes=boxes, multimask_output=True)
    assert_outputs_match(tuple(t.numpy() for t in ref), batch, ref_logits.numpy())


@pytest.fixture(scope="module")
def vit_t_pair(mobile_sam_checkpoint):
    official = build_official_sam("vit_t")  # eval() after perturbing, so MobileSAM's bias cache is fresh
    ours = sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint)
    return _official_predictor(official), SamPredictor(ours)


@pytest.fixture(scope="module")
def vit_b_reduced_pair(tmp_path_factory):
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(3)
    official = _build_sam(encoder_embed_dim=768, encoder_depth=2, encoder_num_heads=12, encoder_global_attn_indexes=[1])
    perturb_constant_parameters(official, seed=4)
    official.eval()
    path = tmp_path_factory.mktemp("vitb2") / "sam_vit_b_depth2.pth"
    torch.save(official.state_dict(), path)
    ours = build_sam("vit_b", path, **REDUCED)
    assert ours.image_encoder.blocks[0].window_size == 14 and ours.image_encoder.blocks[1].window_size == 0
    return _official_predictor(official), SamPredictor(ours)


@pytest.mark.parametrize("image_name", ["square", *(pytest.param(n, marks=pytest.mark.slow) for n in ("wide", "gray", "tiny"))])
def test_vit_t_parity(vit_t_pair, sample_image, image_name):
    off_pred, our_pred = vit_t_pair
    _compare_image(off_pred, our_pred, _images(sample_image)[image_name], full=image_name in ("square", "wide"))
    if image_name == "wide":
        _compare_batched_boxes(off_pred, our_pred)


@pytest.mark.slow
def test_accelerator_layout_gives_the_official_answer(vit_t_pair, sample_image, monkeypatch):
    """Off the CPU (CUDA), sparse prompts are decoded a chunk at a time with each product covering the whole chunk,
    and postprocessed as one batch. No GPU here, so that layout is forced on CPU: the official predictor's answers,
    with chunks of 4 that split 10 prompts unevenly."""
    off_pred, our_pred = vit_t_pair
    ours = SamPredictor(our_pred.model)
    monkeypatch.setattr(ours, "_uses_cpu_layout", lambda: False)
    monkeypatch.setattr(ours, "_decode_on_cpu", lambda *a: pytest.fail("took the CPU layout"))
    image = _images(sample_image)["wide"]
    h, w = image.shape[:2]
    off_pred.set_image(image)
    ours.set_image(image)
    decoder = ours._batch_decoder()
    assert not decoder.per_prompt
    decoder.chunk = 4
    rng = np.random.default_rng(5)
    corners = np.sort(rng.uniform(0, 1, (10, 2, 2)) * [w - 1, h - 1], axis=1)
    boxes = torch.as_tensor(off_pred.transform.apply_boxes(corners.reshape(10, 4), (h, w)), dtype=torch.float)
    points = torch.as_tensor(off_pred.transform.apply_coords(rng.uniform(0, 1, (10, 2, 2)) * [w, h], (h, w)),
                             dtype=torch.float)
    labels = torch.as_tensor(rng.integers(0, 2, (10, 2)), dtype=torch.int)
    for kw in (dict(boxes=boxes), dict(boxes=boxes, point_coords=points, point_labels=labels),
               dict(point_coords=points, point_labels=labels, multimask_output=False)):
        kw = {"point_coords": None, "point_labels": None, **kw}
        with torch.no_grad():
            ref = off_pred.predict_torch(**kw)
            ref_logits = off_pred.predict_torch(**kw, return_logits=True)[0]
        got = ours.predict_torch(**kw)
        assert got[0].shape == (10, 1 if kw.get("multimask_output") is False else 3, h, w)
        assert_outputs_match(tuple(t.numpy() for t in ref), tuple(t.numpy() for t in got), ref_logits.numpy())
    assert ours._batch_decoder() is decoder  # built once per image, in the accelerator layout


@pytest.mark.slow
@pytest.mark.parametrize("image_name", ["square", "wide"])
def test_vit_b_reduced_depth_parity(vit_b_reduced_pair, sample_image, image_name):
    off_pred, our_pred = vit_b_reduced_pair
    _compare_image(off_pred, our_pred, _images(sample_image)[image_name])
    if image_name == "square":
        _compare_batched_boxes(off_pred, our_pred)


@pytest.mark.slow
@pytest.mark.parametrize("library", ["mkl", "onednn"])
@pytest.mark.parametrize("pair", ["vit_b_reduced_pair", "vit_t_pair"])
def test_parity_with_products_in_either_library(request, sample_image, monkeypatch, library, pair):
    """The encoders' float32 linear layers in MKL or oneDNN (imseg.cpu_gemm): the official answer either way."""
    from imseg import cpu_gemm

    if not cpu_gemm._onednn_linear_available():
        pytest.skip("torch built without oneDNN")
    monkeypatch.setenv(cpu_gemm.ENV, library)
    off_pred, our_pred = request.getfixturevalue(pair)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        our_pred.set_image(sample_image)
    ran = {event.key for event in prof.key_averages()}
    assert ("mkldnn::_linear_pointwise" in ran) is (library == "onednn")
    _compare_image(off_pred, our_pred, _images(sample_image)["square"], full=False)


@pytest.mark.slow
def test_global_attention_per_head_and_query_chunks_match_official(vit_b_reduced_pair, sample_image):
    """The CPU inference path (one head per SDPA call), in query chunks that do not divide the grid, and
    the all-heads path taken under autograd all give the official image embedding."""
    off_pred, our_pred = vit_b_reduced_pair
    off_pred.set_image(sample_image)
    ref = off_pred.features
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    attn = our_pred.model.image_encoder.blocks[1].attn
    default = attn.query_chunk
    try:
        for chunk in (default, 1000):  # 1000 -> 15 whole rows of 64 queries: chunks of 15, 15, 15, 15, 4 rows
            attn.query_chunk = chunk
            our_pred.set_image(sample_image)
            assert (our_pred.get_image_embedding() - ref).abs().max().item() <= tol
        resized = torch.as_tensor(np.array(our_pred.transform.apply_image(sample_image)))
        x = our_pred.model.preprocess(resized.permute(2, 0, 1)[None].float())
        with torch.enable_grad():  # autograd: no scratch buffers, every head in one SDPA call per chunk
            grad_path = our_pred.model.image_encoder(x).detach()
        assert (grad_path - ref).abs().max().item() <= tol
    finally:
        attn.query_chunk = default


@pytest.mark.slow
def test_vit_b_full_config_checkpoint(make_sam_checkpoint):
    """The real vit_b layout loads strictly; a global block (with rel-pos interpolation at a smaller grid)
    and the whole prompt path match the official model on the same weights."""
    path = make_sam_checkpoint("vit_b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = build_official_sam("vit_b")
    ours = sam_model_registry["vit_b"](checkpoint=path)
    assert ours.variant == "vit_b" and len(ours.image_encoder.blocks) == 12
    torch.manual_seed(0)
    tokens = torch.randn(1, 24, 24, 768)
    with torch.no_grad():
        ref = official.image_encoder.blocks[2](tokens)
        got = ours.image_encoder.blocks[2](tokens)
    assert (ref - got).abs().max().item() <= 1e-4 * ref.abs().max().item()
    features = torch.randn(1, 256, 64, 64)
    off_pred, our_pred = _official_predictor(official), SamPredictor(ours)
    for pred in (off_pred, our_pred):
        pred.reset_image()
        pred.features, pred.original_size, pred.input_size, pred.is_image_set = features, (600, 800), (768, 1024), True
    for kw in _prompts(600, 800).values():
        ref_logits, _, _ = off_pred.predict(**kw, return_logits=True)
        assert_outputs_match(off_pred.predict(**kw), our_pred.predict(**kw), ref_logits)


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h", "vit_t"])
def test_state_dict_layout_matches_official(variant):
    if variant == "vit_t":
        from mobile_sam import sam_model_registry as official_registry
    else:
        from segment_anything import sam_model_registry as official_registry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "vit_t":  # mobile_sam's TinyViT reads tensor values in __init__: small, build on CPU
            official = official_registry[variant]()
        else:
            with torch.device("meta"):
                official = official_registry[variant]()
    with torch.device("meta"):
        ours = sam_model_registry[variant]()
    ref = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(got) == sorted(ref)
    assert got == ref


@pytest.mark.slow
def test_readme_snippet_runs_unchanged(vit_t_pair, mobile_sam_checkpoint, sample_image):
    """The official README usage, only the import line changed, gives the official answer."""
    snippet = """
sam = sam_model_registry["vit_t"](checkpoint=checkpoint_path)
predictor = SamPredictor(sam)
predictor.set_image(image)
masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label, multimask_output=True)
"""
    inputs = {"checkpoint_path": str(mobile_sam_checkpoint), "image": sample_image,
              "input_point": np.array([[128, 100]]), "input_label": np.array([1])}
    ours: dict = dict(inputs)
    exec("from imseg.sam import sam_model_registry, SamPredictor\n" + snippet, ours)  # noqa: S102
    off_pred, _ = vit_t_pair
    off_pred.set_image(sample_image)
    ref = off_pred.predict(point_coords=inputs["input_point"], point_labels=inputs["input_label"])
    ref_logits, _, _ = off_pred.predict(point_coords=inputs["input_point"], point_labels=inputs["input_label"],
                                        return_logits=True)
    assert_outputs_match(ref, (ours["masks"], ours["scores"], ours["logits"]), ref_logits)
