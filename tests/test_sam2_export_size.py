"""SAM 2.1 export below 1024 px: a random-weight SAM 2.1 tiny (the official weights of ``make_sam2_checkpoint``)
built at 256 px, exported, and run on ONNX Runtime against our torch model at the same size: encoder features,
mask logits, IoU predictions and object scores for point, box and mask prompts, with the tolerances of the
1024 px test (tests/test_sam2_export.py); bad sizes get clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("sam2.build_sam")

import imseg  # noqa: E402
from conftest import (  # noqa: E402
    assert_close_logits,
    assert_same_sam2_features,
    assert_same_sam2_masks,
    mask_iou,
    shapes_image,
)
from imseg.errors import ExportError, PromptError  # noqa: E402

SIZE = 256  # a 16 x 16 embedding grid, 64 x 64 low-res masks
LOW = SIZE // 4
SCORE_TOL = 1e-3
LOGIT_TOL = 1e-3  # relative to the largest |logit|


@pytest.fixture(scope="module")
def model(make_sam2_checkpoint):
    from imseg.sam2.checkpoint import build_model, load_into, read_state_dict

    path = make_sam2_checkpoint("t")
    return load_into(build_model("hiera_t", image_size=SIZE), read_state_dict(path), where=str(path)).eval()


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    from imseg.export.onnx_sam2 import export_sam2

    out = tmp_path_factory.mktemp("sam2export256") / "sam2.1-t-256"
    export_sam2(model, out, model_name="sam2.1-hiera-t", variant="hiera_t")
    return out


@pytest.fixture(scope="module")
def torch_segmenter(model):
    from imseg.sam2.predictor import SAM2ImagePredictor
    from imseg.sam2.segmenter import Sam2Segmenter

    return Sam2Segmenter(SAM2ImagePredictor(model))


@pytest.fixture(scope="module")
def ort_segmenter(export_dir):
    return imseg.load(export_dir, device="cpu")


@pytest.fixture(scope="module")
def image():
    """A 180 x 300 RGB image with a few smooth shapes on a gradient (not square, so the squash matters)."""
    return shapes_image(180, 300)


@pytest.fixture(scope="module")
def embeddings(ort_segmenter, torch_segmenter, image):
    """The image's embedding on ONNX Runtime and on torch."""
    return ort_segmenter.embed(image), torch_segmenter.embed(image)


def test_manifest_records_the_size(export_dir, ort_segmenter):
    manifest = json.loads((export_dir / "imseg_export.json").read_text())
    assert manifest["img_size"] == SIZE and manifest["low_res_size"] == LOW
    assert manifest["inputs"]["encoder"]["shape"] == [1, 3, SIZE, SIZE]
    predictor = ort_segmenter.predictor
    assert predictor.image_size == SIZE and predictor.low_res == LOW


def test_encoder_parity(embeddings):
    ours, ref = (e.features for e in embeddings)
    sides = [ours["image_embed"].shape[-1]] + [f.shape[-1] for f in ours["high_res_feats"]]
    assert sides == [SIZE // 16, LOW, SIZE // 8]
    assert_same_sam2_features(ours, ref)


PROMPTS = [
    {"points": [(90, 80)], "labels": [1]},
    {"points": [(90, 80), (220, 70)], "labels": [1, 0], "multimask": True},
    {"box": (170, 25, 270, 125)},
    {"box": (170, 25, 270, 125), "points": [(220, 70)], "labels": [0], "multimask": True},
    {"box": [(170, 25, 270, 125), (40, 30, 140, 130)]},
]


def _assert_same(ours, ref) -> None:
    assert ours.fields["low_res_logits"].shape[-2:] == (LOW, LOW)
    assert_same_sam2_masks(ours, ref, SCORE_TOL, LOGIT_TOL)


@pytest.mark.parametrize("prompt", PROMPTS, ids=[str(i) for i in range(len(PROMPTS))])
def test_prompt_parity(ort_segmenter, torch_segmenter, image, prompt):
    _assert_same(ort_segmenter.segment(image, **prompt), torch_segmenter.segment(image, **prompt))


def test_mask_input_parity(ort_segmenter, torch_segmenter, image):
    first = torch_segmenter.segment(image, points=[(90, 80)], labels=[1])
    low = first.fields["low_res_logits"][0]
    assert low.shape == (LOW, LOW)
    for kwargs in ({"points": [(90, 80)], "labels": [1]}, {}):
        _assert_same(ort_segmenter.segment(image, mask_input=low, **kwargs),
                     torch_segmenter.segment(image, mask_input=low, **kwargs))


@pytest.mark.parametrize("prompt", ["points", "box", "mask"])
def test_decoder_outputs_with_object_scores(ort_segmenter, torch_segmenter, model, embeddings, image, prompt):
    """All four mask tokens' low-res logits, IoU predictions and the object-score logits of one decoder run,
    against our torch prompt encoder + mask decoder at the same size."""
    predictor = ort_segmenter.predictor
    emb_o, emb_t = embeddings
    hw = image.shape[:2]
    points = np.array([[90, 80], [220, 70]], np.float32) if prompt == "points" else None
    labels = np.array([1, 0]) if prompt == "points" else None
    boxes = np.array([[170, 25, 270, 125]], np.float32) if prompt == "box" else None
    mask = torch_segmenter.segment(image, points=[(90, 80)], labels=[1]).fields["low_res_logits"][:1]
    mask = mask[None] if prompt == "mask" else None
    coords, labs = predictor._prompt_arrays(hw, points, labels, boxes)
    _, iou, low, obj = predictor.run_decoder(emb_o.features, hw, coords, labs, mask)
    with torch.no_grad():
        pe = model.sam_prompt_encoder
        # the torch prompt encoder appends the padding point the host adds for ONNX
        pts = None if coords.shape[1] == 0 else (torch.from_numpy(coords[:, :-1]),
                                                 torch.from_numpy(labs[:, :-1]).int())
        sparse, dense = pe(points=pts, boxes=None, masks=None if mask is None else torch.from_numpy(mask))
        feats = emb_t.features
        ref = model.sam_mask_decoder.predict_masks(feats["image_embed"], pe.get_dense_pe(), sparse, dense, True,
                                                   list(feats["high_res_feats"]))
    ref_low, ref_iou, _, ref_obj = (t.numpy() for t in ref)
    assert low.shape == (1, 4, LOW, LOW) and obj.shape == (1, 1)
    assert_close_logits(low, ref_low, LOGIT_TOL)
    np.testing.assert_allclose(iou, ref_iou, atol=SCORE_TOL)
    np.testing.assert_allclose(obj, ref_obj, atol=SCORE_TOL * max(1.0, float(np.abs(ref_obj).max())))


def test_mask_input_of_another_size_is_refused(ort_segmenter, image):
    with pytest.raises(PromptError, match=f"\\(1, {LOW}, {LOW}\\).*{SIZE} px export"):
        ort_segmenter.segment(image, mask_input=np.zeros((256, 256), np.float32))


def test_sizes_hiera_cannot_run_are_refused(tmp_path):
    """Hiera's encoder fails inside at sizes that are not multiples of 32; the export says so up front."""
    from imseg.export.onnx_sam2 import export_sam2
    from imseg.sam2.checkpoint import build_model

    model = build_model("hiera_t", image_size=240)
    with pytest.raises(RuntimeError):
        model.image_features(torch.zeros(1, 3, 240, 240))
    with pytest.raises(ExportError, match="multiples of 32.*got 240 px.*e.g. 256 px"):
        export_sam2(model, tmp_path / "x", model_name="sam2.1-hiera-t")
    assert not (tmp_path / "x").exists()


def test_manifest_size_that_disagrees_with_the_graphs(export_dir, tmp_path):
    import shutil

    from imseg.export.ort_sam2 import OrtSam2Predictor

    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "imseg_export.json").read_text())
    for size, match in ((1024, "img_size=1024"), (100, "multiples of 32")):
        manifest["img_size"] = size
        (copy / "imseg_export.json").write_text(json.dumps(manifest))
        with pytest.raises(ExportError, match=match):
            OrtSam2Predictor(copy, device="cpu")


def test_everything_parity(ort_segmenter, torch_segmenter, image):
    """Automatic mode in the 64 x 64 low-res frame on both engines: the same masks and scores."""
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    ours = ort_segmenter.segment(image, **options)
    ref = torch_segmenter.segment(image, **options)
    assert len(ref) > 0 and len(ours) == len(ref)
    for a, b in zip(ours.masks, ref.masks, strict=True):
        assert mask_iou(a, b) >= 0.99
    np.testing.assert_allclose(ours.scores, ref.scores, atol=SCORE_TOL)


def test_memory_attention_on_the_smaller_grid(model, tmp_path):
    """The exported memory attention (real RoPE tables of the 16 x 16 grid) against ours (complex RoPE)."""
    import onnxruntime as ort

    from imseg.export.onnx_sam2 import export_sam2_memory_attention

    path = export_sam2_memory_attention(model, tmp_path / "memory_attention.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = (SIZE // 16) ** 2
    g = torch.Generator().manual_seed(0)
    curr, curr_pos = torch.randn(tokens, 1, 256, generator=g), torch.randn(tokens, 1, 256, generator=g)
    memory, memory_pos = torch.randn(2 * tokens, 1, 64, generator=g), torch.randn(2 * tokens, 1, 64, generator=g)
    ptrs, ptrs_pos = torch.randn(4, 1, 64, generator=g), torch.randn(4, 1, 64, generator=g)
    with torch.no_grad():
        ref = model.memory_attention(curr=curr, memory=torch.cat([memory, ptrs]), curr_pos=curr_pos,
                                     memory_pos=torch.cat([memory_pos, ptrs_pos]), num_obj_ptr_tokens=4).numpy()
    feeds = {"curr": curr, "curr_pos": curr_pos, "memory": memory, "memory_pos": memory_pos, "obj_ptrs": ptrs,
             "obj_ptrs_pos": ptrs_pos}
    (ours,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    assert ours.shape == ref.shape == (tokens, 1, 256)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
