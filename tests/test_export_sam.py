"""SAM export: our MobileSAM (random weights, from an official-layout checkpoint) exported through
``imseg.export.export_model``, run on ONNX Runtime, vs the official PyTorch MobileSAM with the same
weights; everything mode vs our generator on our PyTorch model; int8, raw-input encoder."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("mobile_sam")

from conftest import build_official_sam  # noqa: E402


@pytest.fixture(scope="session")
def official_mobile_sam():
    return build_official_sam("vit_t")


@pytest.fixture(scope="session")
def our_mobile_sam(mobile_sam_checkpoint):
    """Our MobileSAM as the exporter builds it (same weights as ``official_mobile_sam``)."""
    from imseg.export import build_sam

    return build_sam("vit_t", mobile_sam_checkpoint)


@pytest.fixture(scope="session")
def sam_export(mobile_sam_checkpoint, tmp_path_factory):
    from imseg.export import export_model

    out = tmp_path_factory.mktemp("sam_export") / "mobile-sam"
    export_model("mobile-sam", checkpoint=mobile_sam_checkpoint, out=out)
    return out


@pytest.fixture(scope="session")
def official_predictor(official_mobile_sam, sample_image):
    from mobile_sam import SamPredictor

    predictor = SamPredictor(official_mobile_sam)
    predictor.set_image(sample_image)
    return predictor


@pytest.fixture(scope="session")
def ort_predictor(sam_export, sample_image):
    from imseg.export.runtime import OrtSamPredictor

    predictor = OrtSamPredictor(sam_export, device="cpu", threads=1)
    predictor.set_image(sample_image)
    return predictor


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_export_builds_our_sam(our_mobile_sam, official_mobile_sam):
    import torch

    from imseg.sam import Sam

    assert isinstance(our_mobile_sam, Sam) and not our_mobile_sam.training
    ours, ref = our_mobile_sam.state_dict(), official_mobile_sam.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_export_files_interface_and_checker(sam_export):
    import onnx

    manifest = json.loads((sam_export / "imseg_export.json").read_text())
    assert manifest["family"] == "sam" and manifest["variant"] == "vit_t" and manifest["opset"] >= 17
    assert manifest["normalization"]["mean"] == [123.675, 116.28, 103.53]
    decoder = onnx.load(str(sam_export / manifest["files"]["decoder"]))
    onnx.checker.check_model(decoder, full_check=True)
    assert [i.name for i in decoder.graph.input] == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    assert [o.name for o in decoder.graph.output] == ["masks", "iou_predictions", "low_res_masks"]
    num_points = decoder.graph.input[1].type.tensor_type.shape.dim[1]
    assert num_points.dim_param == "num_points"  # dynamic number of points
    assert max(o.version for o in decoder.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in decoder.metadata_props}
    assert meta["imseg_model"] == "mobile-sam"


def test_encoder_embeddings_match_pytorch(ort_predictor, official_predictor):
    ref = official_predictor.features.numpy()
    assert ort_predictor.features.shape == ref.shape == (1, 256, 64, 64)
    assert _rel(ort_predictor.features, ref) <= 1e-3


@pytest.mark.parametrize(
    "prompt",
    [
        {"point_coords": [[100, 80]], "point_labels": [1], "multimask_output": True},
        {"point_coords": [[100, 80], [30, 200], [220, 40]], "point_labels": [1, 0, 1], "multimask_output": False},
        {"box": [40, 30, 200, 220], "multimask_output": False},
        {"point_coords": [[120, 120]], "point_labels": [1], "box": [40, 30, 200, 220], "multimask_output": True},
    ],
    ids=["one-point", "three-points", "box", "point+box"],
)
def test_decoder_matches_pytorch(ort_predictor, official_predictor, prompt):
    kwargs = {k: (np.asarray(v) if k != "multimask_output" else v) for k, v in prompt.items()}
    m_ref, s_ref, lr_ref = official_predictor.predict(**kwargs)
    m, s, lr = ort_predictor.predict(**kwargs)
    assert m.shape == m_ref.shape and m.dtype == bool
    assert np.abs(s - s_ref).max() <= 1e-3
    assert (m != m_ref).mean() <= 1e-3  # identical except boundary pixels
    assert m_ref.any(axis=(1, 2)).all() or not m_ref.any()
    # a mask prompt from the previous step is passed through too
    m2_ref, s2_ref, _ = official_predictor.predict(**kwargs, mask_input=lr_ref[:1])
    m2, s2, _ = ort_predictor.predict(**kwargs, mask_input=lr[:1])
    assert np.abs(s2 - s2_ref).max() <= 1e-3 and (m2 != m2_ref).mean() <= 1e-3


def test_decoder_non_square_and_batched_prompts(ort_predictor, official_predictor, official_mobile_sam, sample_image):
    import torch
    from mobile_sam import SamPredictor

    image = np.ascontiguousarray(sample_image[:, :170])  # 256x170: padding + non-square output size
    ref = SamPredictor(official_mobile_sam)
    ref.set_image(image)
    ort_predictor.set_image(image)
    coords = torch.tensor([[[30.0, 40.0]], [[100.0, 200.0]], [[150.0, 20.0]]])
    coords = ref.transform.apply_coords_torch(coords, ref.original_size)
    labels = torch.ones(3, 1)
    m_ref, s_ref, _ = ref.predict_torch(coords, labels, multimask_output=True)
    m, s, _ = ort_predictor.predict_torch(coords, labels, multimask_output=True)
    assert m.shape == m_ref.shape == (3, 3, 256, 170)
    assert (s - s_ref).abs().max() <= 1e-3
    assert (m != m_ref).float().mean() <= 1e-3
    ort_predictor.set_image(sample_image)


def test_automatic_mask_generation_matches_pytorch(sam_export, our_mobile_sam, sample_image):
    """Everything mode: our generator on ONNX Runtime vs our generator on our PyTorch model."""
    import imseg
    from imseg.export.runtime import OrtAmgBackend
    from imseg.sam.automatic import SamAutomaticMaskGenerator

    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7}
    ref = SamAutomaticMaskGenerator(our_mobile_sam, **options).generate_masks(sample_image)
    segmenter = imseg.load(sam_export, backend="onnxruntime", device="cpu", threads=1, **options)
    generator = segmenter.automatic_generator()
    assert isinstance(generator, SamAutomaticMaskGenerator) and isinstance(generator.backend, OrtAmgBackend)
    masks = segmenter.segment(sample_image)
    assert isinstance(masks, imseg.Masks) and masks.image_size == (256, 256)
    assert len(masks) == len(ref) > 0
    ref_dense, dense = ref.masks, masks.masks
    free = list(range(len(ref)))
    for i in range(len(masks)):  # greedy one-to-one matching by mask IoU
        ious = [(dense[i] & ref_dense[j]).sum() / max((dense[i] | ref_dense[j]).sum(), 1) for j in free]
        best = int(np.argmax(ious))
        j = free.pop(best)
        assert ious[best] >= 0.99
        assert abs(masks.scores[i] - ref.scores[j]) <= 1e-3
        assert abs(masks.fields["stability_score"][i] - ref.fields["stability_score"][j]) <= 1e-3
        assert np.allclose(masks.fields["point_coords"][i], ref.fields["point_coords"][j])


def test_load_export_dir_prompt_mode(sam_export, sample_image, official_predictor):
    import imseg
    from imseg.export.runtime import OrtSamSegmenter

    model = imseg.load(sam_export)  # manifest present -> ONNX Runtime
    assert isinstance(model, OrtSamSegmenter)
    masks = model.segment(sample_image, points=[(100, 80)], labels=[1])
    ref, scores, _ = official_predictor.predict(np.array([[100, 80]]), np.array([1]), multimask_output=True)
    assert len(masks) == 3 and masks.image_size == (256, 256)
    best = int(np.argmax(scores))
    assert (masks.masks[0] != ref[best]).mean() <= 1e-3


def test_raw_input_encoder_matches_pytorch(official_mobile_sam, official_predictor, sample_image, tmp_path):
    import onnxruntime as ort

    from imseg.export.onnx import export_sam_encoder

    path = export_sam_encoder(official_mobile_sam, tmp_path / "encoder.onnx", raw_input=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    emb, size = session.run(None, {"image": sample_image})
    assert tuple(size) == official_predictor.input_size
    assert _rel(emb, official_predictor.features.numpy()) <= 1e-3
    # a different (non-square) size runs through the same graph
    image = np.ascontiguousarray(sample_image[:, :170])
    _, size = session.run(None, {"image": image})
    assert tuple(size) == (1024, 680)


def test_int8_dynamic_size_and_accuracy(sam_export, tmp_path, sample_image):
    from imseg.export.quantize import quantize_sam_export
    from imseg.export.runtime import OrtSamPredictor

    target = tmp_path / "int8"
    shutil.copytree(sam_export, target)
    report = quantize_sam_export(target)
    enc = report["files"]["encoder"]
    assert enc["int8"] <= 0.35 * enc["fp32"]
    assert report["size_ratio"] <= 0.35
    assert report["accuracy"]["mask_iou_mean"] >= 0.97
    manifest = json.loads((target / "imseg_export.json").read_text())
    assert manifest["files"]["encoder"] == "encoder.int8.onnx" and manifest["files_fp32"]["encoder"] == "encoder.onnx"
    # the int8 export loads as a normal export dir and answers prompts
    predictor = OrtSamPredictor(target, device="cpu")
    predictor.set_image(sample_image)
    masks, scores, _ = predictor.predict(np.array([[100, 80]]), np.array([1]))
    assert masks.shape == (3, 256, 256) and np.isfinite(scores).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.dumps(report)  # the report is plain JSON
