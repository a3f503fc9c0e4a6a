"""SamPredictor / SamSegmenter behaviour: prompt validation, batching, state errors, bad images."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import imseg  # noqa: E402
from imseg.errors import ConfigError, InputError, PromptError, StateError  # noqa: E402
from imseg.masks import Masks  # noqa: E402
from imseg.sam import SamPredictor, sam_model_registry  # noqa: E402


@pytest.fixture(scope="module")
def segmenter(mobile_sam_checkpoint):
    return imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def predictor(segmenter, sample_image):
    segmenter.set_image(sample_image)
    return segmenter.predictor


def test_predict_before_set_image_is_a_state_error(mobile_sam_checkpoint):
    pred = SamPredictor(sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint))
    with pytest.raises(StateError, match="set_image"):
        pred.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(StateError):
        pred.get_image_embedding()
    with pytest.raises(StateError):
        pred.predict_batch(boxes=np.array([[0, 0, 5, 5]]))
    with pytest.raises(InputError, match="max\\(h, w\\) == 1024"):
        pred.set_torch_image(torch.zeros(1, 3, 512, 512), (512, 512))
    with pytest.raises(InputError, match="image_format"):
        pred.set_image(np.zeros((8, 8, 3), np.uint8), image_format="HSV")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(point_coords=np.array([[300, 10]]), point_labels=np.array([1])), "outside the 256x256 image"),
        (dict(point_coords=np.array([[10, -1]]), point_labels=np.array([1])), "outside"),
        (dict(box=np.array([200, 10, 100, 50])), "inverted"),
        (dict(point_coords=np.array([[10, 10], [20, 20]]), point_labels=np.array([1])), "one entry per point"),
        (dict(point_coords=np.array([[10, 10]])), "point_labels must be given"),
        (dict(point_coords=np.array([1, 2, 3]), point_labels=np.array([1])), "shape"),
        (dict(box=np.array([[0, 0, 5, 5], [1, 1, 9, 9]])), "one box"),
        (dict(box=np.array([0, 0, 5, 5]), mask_input=np.zeros((256, 256))), "mask_input must have shape"),
        (dict(point_coords=[["a", 3]], point_labels=[1]), "points must be numbers"),
        (dict(point_coords=[[1, 2], [3]], point_labels=[1, 1]), "regular array"),
        (dict(box=["x0", 1, 5, 5]), "box must be numbers"),
        (dict(point_coords=np.array([[10, 10]]), point_labels=np.array([0.5])), "whole numbers.*got 0.5"),
        (dict(point_coords=np.array([[10, 10]]), point_labels=np.array([7])), r"label 7 is not one of \[-1, 0, 1, 2, 3\]"),
        (dict(point_coords=np.array([[10, 10]]), point_labels=np.array(["fg"])), "whole numbers"),
    ],
)
def test_bad_prompts_raise_prompt_error(predictor, kwargs, match):
    with pytest.raises(PromptError, match=match):
        predictor.predict(**kwargs)


def test_predict_shapes_dtypes_and_state(predictor, sample_image):
    assert predictor.is_image_set and predictor.original_size == (256, 256) and predictor.input_size == (1024, 1024)
    assert predictor.get_image_embedding().shape == (1, 256, 64, 64)
    masks, iou, low = predictor.predict(point_coords=np.array([[128, 90]]), point_labels=np.array([1]))
    assert masks.shape == (3, 256, 256) and masks.dtype == np.bool_
    assert iou.shape == (3,) and iou.dtype == np.float32 and low.shape == (3, 256, 256) and low.dtype == np.float32
    logits, _, _ = predictor.predict(point_coords=np.array([[128, 90]]), point_labels=np.array([1]), return_logits=True)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits > 0, masks)
    single, iou1, _ = predictor.predict(box=np.array([20, 30, 200, 220]), multimask_output=False)
    assert single.shape == (1, 256, 256) and iou1.shape == (1,)


@pytest.mark.slow
def test_predict_batch_equals_one_call_per_prompt(predictor):
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 255, size=(5, 2, 2))
    labels = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [1, 1]])
    boxes = np.sort(rng.uniform(0, 255, size=(5, 2, 2)), axis=1).reshape(5, 4)  # (x0, y0) <= (x1, y1)
    predictor.decoder_batch = 2  # exercise the chunking too
    masks, iou, low = predictor.predict_batch(point_coords=coords, point_labels=labels, boxes=boxes)
    predictor.decoder_batch = 16
    assert masks.shape == (5, 3, 256, 256) and iou.shape == (5, 3) and low.shape == (5, 3, 256, 256)
    for i in range(5):
        m, s, lo = predictor.predict(point_coords=coords[i], point_labels=labels[i], box=boxes[i])
        np.testing.assert_allclose(s, iou[i], atol=1e-5)
        np.testing.assert_allclose(lo, low[i], atol=1e-4)
        assert (m != masks[i]).mean() <= 1e-3
    # logits at the original size (per-prompt postprocessing on CPU) agree with the thresholded masks
    logits, _, _ = predictor.predict_batch(point_coords=coords, point_labels=labels, boxes=boxes, return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == masks.shape
    assert np.array_equal(logits > predictor.model.mask_threshold, masks)
    # mask prompts take the official decoder path, chunked by decoder_batch
    predictor.decoder_batch = 2
    with_masks = predictor.predict_batch(point_coords=coords, point_labels=labels, mask_input=low[:, :1])
    predictor.decoder_batch = 16
    for i in (0, 4):
        one = predictor.predict(point_coords=coords[i], point_labels=labels[i], mask_input=low[i, :1])
        np.testing.assert_allclose(one[2], with_masks[2][i], atol=1e-4)
    with pytest.raises(PromptError, match="one box per prompt set"):
        predictor.predict_batch(point_coords=coords, point_labels=labels, boxes=boxes[:2])
    with pytest.raises(PromptError, match="needs point_coords"):
        predictor.predict_batch()
    with pytest.raises(PromptError, match=r"boxes must be \(B, 4\)"):
        predictor.predict_batch(boxes=np.zeros(6))
    with pytest.raises(PromptError, match="boxes must be numbers"):
        predictor.predict_batch(boxes=[[0, 0, 5, "5"], [0, 0, 5]])
    with pytest.raises(PromptError, match="point_coords must be numbers"):
        predictor.predict_batch(point_coords=[[[1, 2]], [[1]]], point_labels=[[1], [1]])
    with pytest.raises(PromptError, match="whole numbers"):
        predictor.predict_batch(point_coords=coords, point_labels=labels + 0.25)


def test_segment_prompt_modes_return_masks(segmenter, sample_image):
    one = segmenter.segment(sample_image, points=[(128, 90)], labels=[1])
    assert isinstance(one, Masks) and len(one) == 1 and one.image_size == (256, 256)
    three = segmenter.segment(sample_image, points=[(128, 90)], labels=[1], multimask=True)
    assert len(three) == 3 and np.all(np.diff(three.scores) <= 0)
    assert one.scores[0] == pytest.approx(three.scores[0], abs=1e-6)  # the best of the three
    np.testing.assert_array_equal(one.masks[0], three.masks[0])
    boxes = segmenter.segment(sample_image, box=[[10, 10, 120, 120], [100, 100, 250, 250]])
    assert len(boxes) == 2 and boxes.masks.shape == (2, 256, 256)
    with pytest.raises(PromptError, match="several boxes"):
        segmenter.segment(sample_image, box=[[10, 10, 120, 120], [100, 100, 250, 250]], points=[(5, 5)])
    with pytest.raises(PromptError, match="outside"):
        segmenter.segment(sample_image, points=[(999, 5)], labels=[1])


@pytest.mark.slow
def test_bgr_input_matches_rgb(predictor, sample_image):
    ref = predictor.predict(box=np.array([20, 30, 200, 220]))
    predictor.set_image(np.ascontiguousarray(sample_image[..., ::-1]), image_format="BGR")
    got = predictor.predict(box=np.array([20, 30, 200, 220]))
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_allclose(ref[1], got[1], atol=1e-6)


def test_dtype_on_cpu_stays_exact_fp32(mobile_sam_checkpoint):
    """float16 on CPU is ignored (exact fp32); bfloat16 runs a bf16 encoder copy, never autocast (see
    tests/test_precision.py for its drift)."""
    model = sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint)
    with pytest.warns(UserWarning, match="exact float32"):
        pred = SamPredictor(model, dtype="float16")
    assert pred.autocast_dtype is None and pred.encoder_dtype is None
    pred = SamPredictor(model, dtype="bfloat16")
    assert pred.autocast_dtype is None and pred.encoder_dtype == torch.bfloat16
    with pytest.raises(ConfigError):
        SamPredictor(model, dtype="int8")


# ----------------------------------------------------------------------------- bad images through the segmenter
def _png_bytes(array: np.ndarray, **save_kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=save_kw.pop("format", "PNG"), **save_kw)
    return buf.getvalue()


def test_unreadable_files_raise_input_error(segmenter, sample_image, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    jpeg = _png_bytes(sample_image, format="JPEG", quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 3])
    for path, match in ((text, "not a recognised image"), (empty, "empty"), (truncated, "truncated or corrupt")):
        with pytest.raises(InputError, match=match):
            segmenter.segment(path, points=[(10, 10)], labels=[1])


@pytest.mark.slow
def test_rgba_grayscale_16bit_and_exif_images(segmenter, sample_image, tmp_path):
    from PIL import Image

    ref = segmenter.segment(sample_image, box=[30, 40, 200, 230])
    # RGBA -> alpha dropped: the same pixels, so the same embedding (no re-encode) and mask
    rgba = np.dstack([sample_image, np.full(sample_image.shape[:2], 128, np.uint8)])
    (tmp_path / "rgba.png").write_bytes(_png_bytes(rgba))
    got = segmenter.segment(tmp_path / "rgba.png", box=[30, 40, 200, 230])
    np.testing.assert_array_equal(got.masks, ref.masks)
    # EXIF orientation 8 (viewer rotates 90 deg): store the image rotated the other way
    stored = Image.fromarray(sample_image).transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    stored.save(tmp_path / "exif.jpg", exif=exif, quality=95)
    upright = imseg.read_image(tmp_path / "exif.jpg")
    assert upright.shape == sample_image.shape
    assert np.abs(upright.astype(int) - sample_image.astype(int)).mean() < 6  # upright again, up to JPEG loss
    exif_masks = segmenter.segment(tmp_path / "exif.jpg", box=[30, 40, 200, 230])
    assert exif_masks.image_size == (256, 256)
    # 16-bit single-channel TIFF and 8-bit grayscale: read as 3-channel uint8, segmented at full size
    import tifffile

    gray16 = (np.linspace(0, 60000, 120 * 90).reshape(90, 120)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", gray16)
    deep = segmenter.segment(tmp_path / "deep.tif", points=[(60, 45)], labels=[1])
    assert deep.image_size == (90, 120) and deep.masks.dtype == np.bool_
    gray8 = (gray16 >> 8).astype(np.uint8)
    (tmp_path / "gray.png").write_bytes(_png_bytes(gray8))
    gray = segmenter.segment(tmp_path / "gray.png", points=[(60, 45)], labels=[1])
    assert gray.image_size == (90, 120)


@pytest.mark.slow
def test_everything_mode_returns_masks(segmenter, sample_image):
    masks = segmenter.segment(sample_image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert isinstance(masks, Masks) and masks.image_size == (256, 256)
    assert 0 < len(masks) <= 16 and masks.masks.shape[1:] == (256, 256)
    assert np.all((masks.areas > 0) & (masks.areas == masks.masks.reshape(len(masks), -1).sum(1)))


@pytest.mark.slow
def test_autocast_runs_the_encoder_in_low_precision_and_the_decoder_in_float32(sample_image, monkeypatch):
    """``SamPredictor(dtype="bfloat16")`` on CUDA runs set_image under ``torch.autocast``. Autocast does not cast
    ``out=``/in-place ops, so the encoder's buffered inference path must step aside (else its products silently
    run in float32). Prompts are encoded and decoded in float32 from the float32 embedding. CUDA is not needed
    to check this: CPU autocast has the same rules, and the predictor is pointed at it directly (its
    constructor refuses low precision on CPU)."""
    from conftest import perturb_constant_parameters
    from imseg.sam.batch_decoder import PromptBatchDecoder
    from imseg.sam.checkpoint import build_model, get_config

    torch.manual_seed(0)
    # a 512-px ViT-B of three blocks (windowed, windowed, global; 32x32 tokens, so the windows are padded):
    # bfloat16 products on a CPU without native bfloat16 took ~80 s at 1024 px
    model = build_model(get_config("vit_b", depth=3, global_attn_indexes=(2,), img_size=512))
    perturb_constant_parameters(model, seed=1)
    from torch.overrides import TorchFunctionMode

    seen: list[tuple[str, torch.dtype]] = []

    class Products(TorchFunctionMode):  # records the encoder's products without hooks (hooks change the path)
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if name in ("linear", "addmm", "addmm_"):
                seen.append((name, out.dtype))
            return out

    exact = SamPredictor(model)
    monkeypatch.setenv("IMSEG_FP32_GEMM", "mkl")  # torch's float32 products (imseg.cpu_gemm), which this mode sees
    with Products():
        exact.set_image(sample_image)
    assert {name for name, _ in seen} == {"addmm", "addmm_"}  # exact float32: the buffered products
    assert {dtype for _, dtype in seen} == {torch.float32}
    seen.clear()
    low = SamPredictor(model)
    low.autocast_dtype = torch.bfloat16
    monkeypatch.setenv("IMSEG_FP32_GEMM", "onednn")  # autocast keeps torch's products even where oneDNN is the rule
    with Products():
        low.set_image(sample_image)
    assert seen == [("linear", torch.bfloat16)] * 12  # qkv, proj, lin1, lin2 of 3 blocks, none into float32 buffers
    assert low.features.dtype == torch.float32
    scale = float(exact.features.abs().max())
    diff = float((low.features - exact.features).abs().max())
    assert 0 < diff <= 0.05 * scale  # bfloat16 rounding, not a different function
    coords = np.array([[[60.0, 80.0]], [[150.0, 40.0]], [[10.0, 200.0]]])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # decode in the calling thread (CPU workers would not see an autocast)
        _, iou, low_res = low.predict_batch(coords, np.ones((3, 1)), return_logits=True)
    finally:
        torch.set_num_threads(before)
    with torch.inference_mode():
        pts = torch.as_tensor(low.transform.apply_coords(coords, sample_image.shape[:2]), dtype=torch.float32)
        sparse, _ = model.prompt_encoder(points=(pts, torch.ones(3, 1, dtype=torch.int)), boxes=None, masks=None)
        ref_low, ref_iou = PromptBatchDecoder(model, low.features)(sparse, True)
    assert low_res.dtype == np.float32
    low_res, iou = torch.as_tensor(low_res), torch.as_tensor(iou)
    ref_scale = max(1.0, float(ref_low.abs().max()))
    assert float((low_res - ref_low).abs().max()) <= 1e-5 * ref_scale  # the decoder in float32
    assert float((iou - ref_iou).abs().max()) <= 1e-5
    masks, iou_m, _ = low.predict(point_coords=coords[0], point_labels=np.ones(1),
                                  mask_input=low_res[0, :1].numpy(), multimask_output=False)  # official layout
    assert masks.shape == (1, *sample_image.shape[:2]) and masks.dtype == bool and iou_m.dtype == np.float32


@pytest.mark.slow
def test_a_model_cast_to_bfloat16_runs_end_to_end(sample_image):
    """``sam.to(torch.bfloat16)`` (what users do for half-precision GPUs; the official predictor and generator
    fail on it with a dtype mismatch): set_image, point/box/mask prompts and the automatic generator run, with
    half-precision results close to the float32 model's. Point positions are encoded in float32 before the
    model's dtype, so a prompt's position is not rounded to 8 bits. The image encoder is a small ViT (the real
    prompt encoder and mask decoder): a full encoder in bfloat16 takes tens of seconds on a CPU."""
    import copy

    from conftest import perturb_constant_parameters
    from imseg.sam import SamAutomaticMaskGenerator
    from imseg.sam.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    model = sam_model_registry["vit_b"]().eval()
    model.image_encoder = ImageEncoderViT(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)).eval()
    perturb_constant_parameters(model, seed=1)
    half = copy.deepcopy(model).to(torch.bfloat16)
    exact, low = SamPredictor(model), SamPredictor(half)
    exact.set_image(sample_image)
    low.set_image(sample_image)
    assert low.features.dtype == torch.float32
    assert float((low.features - exact.features).abs().max()) <= 0.05 * float(exact.features.abs().max())
    with torch.inference_mode():  # the half model's own (rounded) frequencies, applied in float32
        xy = torch.rand(1, 500, 2, generator=torch.Generator().manual_seed(2)) * 1024
        pe = half.prompt_encoder.pe_layer
        got = pe.forward_with_coords(xy, (1024, 1024))
        freq = pe.positional_encoding_gaussian_matrix.float()
        proj = 2 * torch.pi * ((2 * xy / 1024 - 1) @ freq)
        ref = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - ref).abs().max()) <= 2 ** -8  # one rounding of sin/cos, no 8-bit positions
    coords = np.array([[60.0, 80.0], [150.0, 40.0]])
    for prompt in ({"point_coords": coords, "point_labels": np.array([1, 0])}, {"box": np.array([10, 20, 150, 200])}):
        ref_logits, ref_iou, ref_low = exact.predict(**prompt, return_logits=True)
        logits, iou, low_res = low.predict(**prompt, return_logits=True)
        assert logits.dtype == iou.dtype == low_res.dtype == np.float32
        assert np.abs(logits - ref_logits).max() <= 0.1 * np.abs(ref_logits).max()
        assert np.abs(iou - ref_iou).max() <= 0.02
        masks, _, _ = low.predict(**prompt, mask_input=low_res[:1], multimask_output=False)
        assert masks.shape == (1, *sample_image.shape[:2]) and masks.dtype == bool
    records = SamAutomaticMaskGenerator(half, points_per_side=2, pred_iou_thresh=0.0,
                                        stability_score_thresh=0.0).generate(sample_image)
    assert all(r["segmentation"].shape == sample_image.shape[:2] for r in records)
    # a predictor whose model is cast after its first mask prompt: the cached dense positional encoding follows
    exact.predict(box=np.array([10, 20, 150, 200]), mask_input=low_res[:1], multimask_output=False)
    model.to(torch.bfloat16)
    exact.set_image(sample_image)
    masks, _, _ = exact.predict(box=np.array([10, 20, 150, 200]), mask_input=low_res[:1], multimask_output=False)
    assert masks.shape == (1, *sample_image.shape[:2])


def _fresh_answer(model, image, **prompt):
    fresh = SamPredictor(model)
    fresh.set_image(image)
    return fresh.predict(**prompt, return_logits=True)


@pytest.mark.slow
def test_changed_weights_are_seen_without_a_new_set_image(mobile_sam_checkpoint, sample_image):
    """Tensors derived from the decoder and prompt encoder (re-associated projections, the dense positional
    encoding) follow the weights: an optimizer step or load_state_dict between predictions is honoured."""
    model = sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint)
    pred = SamPredictor(model)
    pred.set_image(sample_image)
    box = np.array([20, 30, 200, 220])
    before = pred.predict(box=box, return_logits=True)
    with torch.no_grad():
        model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.q_proj.weight.mul_(1.5)
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(1.2)
    after = pred.predict(box=box, return_logits=True)
    expected = _fresh_answer(model, sample_image, box=box)
    assert float(np.abs(after[2] - before[2]).max()) > 1e-3  # the change matters
    np.testing.assert_allclose(after[2], expected[2], atol=1e-5)
    np.testing.assert_allclose(after[1], expected[1], atol=1e-6)
    low = before[2][:1]
    with_mask = pred.predict(box=box, mask_input=low, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(with_mask[2], _fresh_answer(model, sample_image, box=box, mask_input=low,
                                                           multimask_output=False)[2], atol=1e-5)


class _LowRank(torch.nn.Module):
    """A LoRA-style wrapper: the base layer plus a low-rank update, exposing the base's weight and bias."""

    def __init__(self, base: torch.nn.Linear, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.normal_(self.up.weight, std=0.05)
        self.weight, self.bias = base.weight, base.bias
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


@pytest.mark.slow
def test_wrapped_or_hooked_modules_are_called_in_inference(sample_image):
    """The fast paths read weights straight from plain modules; a wrapper (LoRA) or a hook gets the modules
    called, so inference gives what training sees."""
    from conftest import perturb_constant_parameters

    torch.manual_seed(0)
    model = sam_model_registry["vit_b"]().eval()
    model.image_encoder.blocks = model.image_encoder.blocks[:2]
    perturb_constant_parameters(model, seed=2)
    model.image_encoder.blocks[0].attn.qkv = _LowRank(model.image_encoder.blocks[0].attn.qkv)
    attn = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    attn.q_proj = _LowRank(attn.q_proj)
    calls = []
    model.mask_decoder.output_upscaling[0].register_forward_hook(lambda *_: calls.append(1))
    image = np.ascontiguousarray(sample_image[:64, :96])
    x = model.preprocess(torch.as_tensor(model_input(model, image)))
    with torch.enable_grad():
        graph = model.image_encoder(x).detach()  # grad mode always calls the modules
    pred = SamPredictor(model)
    pred.set_image(image)
    assert float((pred.features - graph).abs().max()) <= 1e-5 * float(graph.abs().max())
    box = np.array([5, 5, 60, 40])
    _, iou, low = pred.predict(box=box, return_logits=True)
    assert calls  # the hooked upscaling layer ran
    box_t = torch.as_tensor(pred.transform.apply_boxes(box, image.shape[:2]), dtype=torch.float)
    with torch.enable_grad():
        sparse, dense = model.prompt_encoder(points=None, boxes=box_t, masks=None)
        ref_low, ref_iou = model.mask_decoder(pred.features, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
    np.testing.assert_allclose(low, ref_low[0].detach().numpy(), atol=1e-5 * max(1.0, float(ref_low.detach().abs().max())))
    np.testing.assert_allclose(iou, ref_iou[0].detach().numpy(), atol=1e-5)


def model_input(model, image):
    from imseg.sam.transforms import ResizeLongestSide

    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(image)
    return resized.transpose(2, 0, 1)[None].astype(np.float32)


@pytest.mark.slow
def test_outputs_are_ordinary_tensors_and_official_odds_and_ends(predictor, sample_image, mobile_sam_checkpoint):
    """As the official (no_grad, not inference_mode): embeddings and predict_torch outputs can be edited in
    place and used in autograd; the embedding is contiguous; BGR float arrays are flipped; the generator
    has a predictor; ResizeLongestSide takes the official keywords; a 1x3000 image works."""
    from imseg.sam import SamAutomaticMaskGenerator
    from imseg.sam.transforms import ResizeLongestSide

    emb = predictor.get_image_embedding()
    assert not emb.is_inference() and emb.is_contiguous() and emb.view(1, -1).shape[1] == 256 * 64 * 64
    head = torch.nn.Conv2d(256, 1, 1)
    head(emb).sum().backward()  # training a head on the embedding
    boxes = torch.as_tensor(predictor.transform.apply_boxes(np.array([[20, 30, 200, 220]]), predictor.original_size),
                            dtype=torch.float)
    _, _, low = predictor.predict_torch(None, None, boxes=boxes)
    low.sigmoid_()
    model = predictor.model
    logits = model.postprocess_masks(torch.zeros(1, 1, 256, 256, requires_grad=True), (10, 13), (13, 17))
    logits.sum().backward()  # the cached resize maps were not made inference tensors by the predictions above
    assert ResizeLongestSide.get_preprocess_shape(oldh=3000, oldw=1, long_side_length=1024) == (1024, 1)
    floats = sample_image.astype(np.float32) / 255
    rgb = SamPredictor(model)
    rgb.set_image(floats)
    bgr = SamPredictor(model)
    bgr.set_image(np.ascontiguousarray(floats[..., ::-1]), image_format="BGR")
    assert torch.equal(rgb.features, bgr.features)
    generator = SamAutomaticMaskGenerator(model, points_per_side=2)
    assert isinstance(generator.predictor, SamPredictor) and generator.predictor.model is model
    thin = SamPredictor(model)
    thin.set_image(np.full((1, 3000, 3), 128, np.uint8))
    masks, _, _ = thin.predict(point_coords=np.array([[1500, 0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 1, 3000)


def test_both_resize_transforms_give_the_official_answers():
    """The torch predictor's and the ONNX Runtime predictor's ``transform`` share one torch-free base and match
    the official ``ResizeLongestSide``: uint8 and 0..1 float images, points, boxes, and the ``*_torch`` methods."""
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    from imseg.export.runtime import ResizeLongestSide as OrtResize
    from imseg.sam.transforms import ResizeLongestSide as TorchResize

    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (37, 90, 3), dtype=np.uint8)
    images = [uint8, uint8.astype(np.float32) / 255.0]
    coords = rng.uniform(0, 90, (4, 3, 2))
    boxes = np.array([[3.0, 4.0, 80.5, 30.0], [0.0, 0.0, 89.0, 36.0]])
    official = Official(64)
    for ours in (TorchResize(64), OrtResize(64)):
        for image in images:
            want = official.apply_image(image)
            got = ours.apply_image(image)
            assert got.dtype == want.dtype == np.uint8 and np.array_equal(got, want)
        assert ours.get_preprocess_shape(37, 90, 64) == official.get_preprocess_shape(37, 90, 64) == (26, 64)
        np.testing.assert_allclose(ours.apply_coords(coords, (37, 90)), official.apply_coords(coords, (37, 90)))
        np.testing.assert_allclose(ours.apply_boxes(boxes, (37, 90)), official.apply_boxes(boxes, (37, 90)))
        t_coords, t_boxes = torch.as_tensor(coords), torch.as_tensor(boxes)
        got_c, want_c = ours.apply_coords_torch(t_coords, (37, 90)), official.apply_coords_torch(t_coords, (37, 90))
        got_b, want_b = ours.apply_boxes_torch(t_boxes, (37, 90)), official.apply_boxes_torch(t_boxes, (37, 90))
        assert got_c.dtype == want_c.dtype and got_b.dtype == want_b.dtype
        torch.testing.assert_close(got_c, want_c)
        torch.testing.assert_close(got_b, want_b)
