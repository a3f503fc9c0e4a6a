"""The re-associated many-prompt decoder and the banded mask resize against their plain forms.

End-to-end parity with the official predictor (which now runs through both) is in test_sam_parity.py;
these tests pin the pieces directly, on inputs where the plain form is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imseg.sam import sam_model_registry  # noqa: E402
from imseg.sam.batch_decoder import PromptBatchDecoder  # noqa: E402
from imseg.sam.model import _axis_resize_matrix, axis_resize_band, band_resize  # noqa: E402


@pytest.fixture(scope="module")
def model(mobile_sam_checkpoint):
    return sam_model_registry["vit_t"](checkpoint=mobile_sam_checkpoint).eval()


def _sparse(model, batch: int, seed: int):
    """Mixed prompts: 1-3 points with random labels, half of them with a box too."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, 3, 2, generator=g) * 1024
    labels = torch.randint(0, 2, (batch, 3), generator=g, dtype=torch.int)
    labels[:, 2] = -1  # a padding point, as the official predictor adds without a box
    boxes = torch.sort(torch.rand(batch, 2, 2, generator=g) * 1024, dim=1).values.reshape(batch, 4)
    with torch.inference_mode():
        points_only, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        with_box, _ = model.prompt_encoder(points=(coords[:, :2], labels[:, :2]), boxes=boxes, masks=None)
    return points_only, with_box, dense


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("library", ["mkl", "onednn"])
@pytest.mark.slow
def test_batch_decoder_equals_mask_decoder(model, multimask, library, monkeypatch):
    """Against the official module layout, with the float32 products in either library (imseg.cpu_gemm)."""
    monkeypatch.setenv("IMSEG_FP32_GEMM", library)
    torch.manual_seed(0)
    embedding = torch.randn(1, 256, 64, 64)
    pe = model.prompt_encoder.get_dense_pe()
    for sparse in _sparse(model, 5, seed=1)[:2]:
        with torch.inference_mode():
            dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(5, -1, 64, 64)
            ref_low, ref_iou = model.mask_decoder(embedding, pe, sparse, dense, multimask)
            # neither the chunking nor the accelerator layout (every prompt of a chunk per product) may change it
            for chunk, per_prompt in ((1, True), (3, True), (64, True), (3, False), (64, False)):
                decoder = PromptBatchDecoder(model, embedding, chunk=chunk)
                decoder.per_prompt = per_prompt
                low, iou = decoder(sparse, multimask)
                assert low.shape == ref_low.shape == (5, 3 if multimask else 1, 256, 256)
                scale = float(ref_low.abs().max())
                assert float((low - ref_low).abs().max()) <= 1e-4 * max(1.0, scale)
                assert float((iou - ref_iou).abs().max()) <= 1e-5
    empty_low, empty_iou = PromptBatchDecoder(model, embedding)(sparse[:0], multimask)
    assert empty_low.shape == (0, 3 if multimask else 1, 256, 256) and empty_iou.shape[0] == 0


@pytest.mark.slow
def test_factored_first_upscaling_equals_the_plain_product(model):
    """In fp32 inference the first upscaling product is assembled from the blocks' low-rank updates and LayerNorm
    statistics (``record``); it must give the plain ``keys @ W`` path's logits, and the call must take it."""
    torch.manual_seed(1)
    embedding = torch.randn(1, 256, 64, 64) * 3 + 0.5  # tokens with a mean: the LayerNorm mean terms matter
    sparse = _sparse(model, 4, seed=2)[1]
    decoder = PromptBatchDecoder(model, embedding)
    with torch.inference_mode():
        record: list = []
        _, (hs, keys) = decoder.predict(sparse, record)
        assert len(record) == len(model.mask_decoder.transformer.layers)
        factored = decoder.masks(hs, keys, [1, 2, 3], record=record)
        plain = decoder.masks(hs, keys, [1, 2, 3])
        decoder.per_prompt = False  # the accelerator layout: each product covers all 4 prompts
        factored_batched = decoder.masks(hs, keys, [1, 2, 3], record=record)
        plain_batched = decoder.masks(hs, keys, [1, 2, 3])
        fresh = PromptBatchDecoder(model, embedding)
        assert fresh._stage1 is None
        called, _ = fresh(sparse, True)
        assert fresh._stage1 is not None  # __call__ took the factored path
    scale = max(1.0, float(plain.abs().max()))
    assert float((factored - plain).abs().max()) <= 1e-5 * scale
    assert float((factored_batched - plain).abs().max()) <= 1e-5 * scale
    assert float((plain_batched - plain).abs().max()) <= 1e-5 * scale
    assert float((called - plain).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_masks_of_chosen_prompts_equal_the_whole_batch_in_any_chunking(model, library, monkeypatch):
    """The automatic generator decodes every prompt (``predict_chunks``) and makes masks only for the prompts its
    IoU filter keeps (``masks_of``): in any chunking and any order of the kept ids, those must be the rows of the
    whole batch's masks."""
    monkeypatch.setenv("IMSEG_FP32_GEMM", library)
    torch.manual_seed(2)
    embedding = torch.randn(1, 256, 64, 64)
    sparse = _sparse(model, 7, seed=3)[0]
    with torch.inference_mode():
        whole_iou, (hs, keys) = PromptBatchDecoder(model, embedding, chunk=7).predict(sparse)
        whole = PromptBatchDecoder(model, embedding, chunk=7).masks(hs, keys, [1, 2, 3])
        for chunk in (1, 3, 7):
            decoder = PromptBatchDecoder(model, embedding, chunk=chunk)
            iou, chunks = decoder.predict_chunks(sparse)
            assert len(chunks) == -(-7 // chunk)
            assert torch.allclose(iou, whole_iou, atol=1e-5)
            for ids in ([0, 1, 2, 3, 4, 5, 6], [1, 2, 5], [6, 0, 3], [4], []):
                got = decoder.masks_of(chunks, torch.tensor(ids, dtype=torch.long), [1, 2, 3])
                assert got.shape == (len(ids), 3, 256, 256)
                if ids:
                    scale = max(1.0, float(whole.abs().max()))
                    assert float((got - whole[ids]).abs().max()) <= 1e-5 * scale, (chunk, ids)


@pytest.mark.slow
def test_predictor_splits_prompts_across_cpu_threads_without_changing_the_answer(model):
    """On CPU, predict_batch decodes the prompts on one single-threaded worker per torch thread, each writing
    its share of the outputs; the result is the plain decoder + postprocessing, and the thread count is restored."""
    from imseg.sam import SamPredictor

    predictor = SamPredictor(model)
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    predictor.set_image(image)
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, 200, (7, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (7, 2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        logits, iou, low = predictor.predict_batch(coords, labels, return_logits=True)
        masks, iou_b, _ = predictor.predict_batch(coords, labels)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with torch.inference_mode():
        pts = torch.as_tensor(predictor.transform.apply_coords(coords, (200, 300)))
        sparse, dense = model.prompt_encoder(points=(pts, torch.as_tensor(labels, dtype=torch.int)), boxes=None,
                                             masks=None)
        ref_low, ref_iou = model.mask_decoder(predictor.features, model.prompt_encoder.get_dense_pe(), sparse, dense,
                                              True)
        ref = model.postprocess_masks(ref_low, predictor.input_size, (200, 300)).numpy()
    assert logits.shape == ref.shape == (7, 3, 200, 300) and masks.dtype == bool
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(low - ref_low.numpy()).max() <= 1e-4 * scale
    assert np.abs(logits - ref).max() <= 1e-4 * scale
    np.testing.assert_allclose(iou, ref_iou.numpy(), atol=1e-5)
    np.testing.assert_array_equal(iou_b, iou)
    confident = np.abs(ref) > 1e-3 * scale
    assert np.array_equal(masks[confident], (ref > 0)[confident])


def _aten_ops(fn) -> int:
    """Top-level aten ops ``fn`` dispatches (on CUDA each is at least one kernel launch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


@pytest.mark.slow
def test_off_cpu_the_predictor_decodes_a_prompt_batch_in_as_few_ops_as_the_official(model):
    """On CUDA a prompt per decoder pass costs ~150 small kernel launches per prompt (64 boxes: ~24k against ~500
    for the official predictor). Off the CPU the decoder takes 64 prompts per pass with every product covering
    all of them, so the ops do not grow with the prompts and stay near the official count. Run on the meta
    device (shapes, no compute), which takes the predictor's non-CPU branches; the values of that layout are
    checked on CPU above."""
    import copy

    from mobile_sam import SamPredictor as OfficialPredictor

    from conftest import build_official_sam
    from imseg.sam import SamPredictor
    from imseg.sam.batch_decoder import DEVICE_CHUNK

    image = torch.zeros(1, 3, 1024, 1024, device="meta")
    predictor = SamPredictor(copy.deepcopy(model).to("meta"))
    predictor.set_torch_image(image, (600, 800))
    official = OfficialPredictor(build_official_sam("vit_t").to("meta"))
    official.set_torch_image(image, (600, 800))

    def boxes(n: int, who=predictor):
        return who.predict_torch(None, None, boxes=torch.zeros(n, 4, device="meta"))

    masks, iou, low = boxes(5)  # also builds the decoder for this embedding
    assert masks.shape == (5, 3, 600, 800) and masks.dtype == torch.bool and low.shape == (5, 3, 256, 256)
    decoder = predictor._decoder[1]
    assert decoder.chunk == DEVICE_CHUNK and not decoder.per_prompt
    few, many = _aten_ops(lambda: boxes(2)), _aten_ops(lambda: boxes(DEVICE_CHUNK))
    reference = _aten_ops(lambda: boxes(DEVICE_CHUNK, official))
    assert many == few <= 1.25 * reference
    # the CPU layout, forced on the same device, grows with every prompt
    decoder.chunk, decoder.per_prompt = 1, True
    assert _aten_ops(lambda: boxes(8)) > 3 * _aten_ops(lambda: boxes(2))


def test_batch_decoder_refuses_a_batch_of_embeddings(model):
    with pytest.raises(ValueError, match="one"):
        PromptBatchDecoder(model, torch.zeros(2, 256, 64, 64))


@pytest.mark.parametrize(
    "input_size, original",
    [((1024, 1024), (512, 512)), ((683, 1024), (200, 300)), ((640, 1024), (20, 32)), ((1024, 768), (2000, 1500)),
     ((1024, 1024), (1024, 1024))],
)
@pytest.mark.slow
def test_banded_resize_equals_the_dense_map(model, input_size, original):
    torch.manual_seed(0)
    low = torch.randn(2, 3, 256, 256, dtype=torch.float64)
    ry = _axis_resize_matrix(256, 1024, input_size[0], original[0], "cpu", torch.float64)
    rx = _axis_resize_matrix(256, 1024, input_size[1], original[1], "cpu", torch.float64)
    dense = ry @ low @ rx.t()
    iy, wy = axis_resize_band(256, 1024, input_size[0], original[0], "cpu", torch.float64)
    ix, wx = axis_resize_band(256, 1024, input_size[1], original[1], "cpu", torch.float64)
    assert iy.shape[1] <= 4 and ix.shape[1] <= 4  # a few taps per output pixel
    banded = band_resize(low, iy, wy, ix, wx)
    assert banded.shape == (2, 3, *original)
    torch.testing.assert_close(banded, dense, atol=1e-12, rtol=0)
    # and through the model's float32 postprocessing
    out = model.postprocess_masks(low.float(), input_size, original)
    torch.testing.assert_close(out, dense.float(), atol=1e-5, rtol=0)
    # the official form on float32 logits: upsample to the padded input, crop, resize (the maps' weights are
    # float32's own; what is left is the official's float32 rounding of the upsampled logits)
    up = torch.nn.functional.interpolate(low.float(), (1024, 1024), mode="bilinear", align_corners=False)
    official = torch.nn.functional.interpolate(up[..., : input_size[0], : input_size[1]], original, mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(banded.float(), official, atol=2e-6 * float(low.abs().max()), rtol=0)
    assert np.isfinite(banded.numpy()).all()


def test_batch_decoder_under_autocast_computes_in_the_embedding_dtype(model):
    """Called inside ``torch.autocast`` (a user's, or a predictor's on CUDA), the decoder turns autocast off:
    its in-place accumulations would otherwise meet bfloat16 products and fail, and its factored first
    upscaling product is checked in float32 only. The answer is the float32 one (CPU autocast: same rules)."""
    torch.manual_seed(3)
    embedding = torch.randn(1, 256, 64, 64)
    sparse = _sparse(model, 3, seed=4)[1]
    with torch.inference_mode():
        ref_low, ref_iou = PromptBatchDecoder(model, embedding)(sparse, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoder = PromptBatchDecoder(model, embedding)
            low, iou = decoder(sparse, True)
            assert torch.is_autocast_enabled("cpu")  # the caller's autocast is left as it was
    assert decoder._stage1 is not None  # the factored float32 path
    assert low.dtype == iou.dtype == torch.float32
    scale = max(1.0, float(ref_low.abs().max()))
    assert float((low - ref_low).abs().max()) <= 1e-6 * scale
    assert float((iou - ref_iou).abs().max()) <= 1e-6
