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


@pytest.mark.slow
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
    masks = model.segment(sample_image, points=[(100, 80)], labels=[1], multimask=True)
    ref, scores, _ = official_predictor.predict(np.array([[100, 80]]), np.array([1]), multimask_output=True)
    assert len(masks) == 3 and masks.image_size == (256, 256)
    best = int(np.argmax(scores))
    assert (masks.masks[0] != ref[best]).mean() <= 1e-3
    one = model.segment(sample_image, points=[(100, 80)], labels=[1])  # without multimask: the best one only
    assert len(one) == 1 and (one.masks[0] != ref[best]).mean() <= 1e-3


@pytest.mark.slow
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
    # an extreme aspect ratio keeps a 1 px short side inside the graph too (was resized to 0 px)
    emb, size = session.run(None, {"image": np.full((1, 3000, 3), 90, np.uint8)})
    assert tuple(size) == (1, 1024) and np.isfinite(emb).all()


@pytest.mark.slow
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


# ============================================================================ extreme aspect ratios
@pytest.mark.slow
def test_extreme_aspect_ratio_runs_on_onnx_runtime(ort_predictor, sam_export, tmp_path, sample_image):
    from imseg.errors import InputError
    from imseg.export.runtime import OrtSamPredictor, ResizeLongestSide

    assert ResizeLongestSide.get_preprocess_shape(1, 3000, 1024) == (1, 1024)  # short side >= 1 px, as torch
    assert ResizeLongestSide.get_preprocess_shape(3000, 1, 1024) == (1024, 1)
    for shape, point in [((1, 3000), [[1500, 0.5]]), ((3000, 1), [[0.5, 1500]])]:
        ort_predictor.set_image(np.full((*shape, 3), 128, np.uint8))
        assert ort_predictor.input_size == ResizeLongestSide.get_preprocess_shape(*shape, 1024)
        masks, scores, low_res = ort_predictor.predict(np.array(point), np.array([1]))
        assert masks.shape == (3, *shape) and np.isfinite(scores).all() and low_res.shape == (3, 256, 256)
    ort_predictor.set_image(sample_image)
    # an export made before the decoder clamped the short side refuses such images clearly
    old = _variant(sam_export, tmp_path / "old", lambda m: m.pop("min_resized_side"))
    predictor = OrtSamPredictor(old, device="cpu", threads=1)
    with pytest.raises(InputError, match="export the model again"):
        predictor.set_image(np.zeros((1, 3000, 3), np.uint8))


# ============================================================================ single-mask exports
@pytest.mark.slow
def test_single_mask_export_box_only_matches_torch_single_mask(sam_export, our_mobile_sam, official_predictor,
                                                                sample_image, tmp_path):
    from imseg.export.onnx import export_sam_decoder
    from imseg.export.runtime import OrtSamPredictor

    single = _variant(sam_export, tmp_path / "single", lambda m: m.update(single_mask=True), decoder=False)
    export_sam_decoder(our_mobile_sam, single / "decoder.onnx", single_mask=True)
    box = np.array([40, 30, 200, 220])
    ref, ref_scores, _ = official_predictor.predict(box=box, multimask_output=False)
    best_multi = official_predictor.predict(box=box, multimask_output=True)[0]
    predictor = OrtSamPredictor(single, device="cpu", threads=1)
    predictor.set_image(sample_image)
    masks, scores, _ = predictor.predict(box=box)
    assert masks.shape == (1, 256, 256)
    assert abs(scores[0] - ref_scores[0]) <= 1e-3 and (masks[0] != ref[0]).mean() <= 1e-3
    # one point still gets the best multimask candidate (the official single-mask rule)
    m1, s1, _ = predictor.predict(np.array([[100, 80]]), np.array([1]))
    r1, rs1, _ = official_predictor.predict(np.array([[100, 80]]), np.array([1]), multimask_output=True)
    assert abs(s1[0] - rs1.max()) <= 1e-3 and (m1[0] != r1[int(np.argmax(rs1))]).mean() <= 1e-3
    # a decoder exported before the box rule: a padding point selects the single-mask output
    legacy = OrtSamPredictor(_variant(single, tmp_path / "legacy", lambda m: m.pop("single_mask_box")),
                             device="cpu", threads=1)
    assert not legacy.single_mask_box
    coords, labels = legacy._prompt_arrays(None, None, box.reshape(1, 4).astype(np.float32))
    assert labels.tolist() == [[2.0, 3.0, -1.0]] and coords.shape == (1, 3, 2)
    legacy.set_image(sample_image)
    masks, _, _ = legacy.predict(box=box)
    assert (masks[0] == ref[0]).mean() >= 0.9
    assert (masks[0] == ref[0]).mean() > max((masks[0] == b).mean() for b in best_multi)


# ============================================================================ mismatched files and manifests
def _variant(src, out, edit=None, encoder=True, decoder=True, files=None, manifest=None):
    """An export directory at ``out``: links to ``src``'s .onnx files (and ``files`` {name: path}) and
    ``src``'s manifest changed in place by ``edit`` (or replaced by ``manifest``)."""
    out.mkdir(parents=True)
    original = json.loads((src / "imseg_export.json").read_text())
    links = {**({"encoder.onnx": src / "encoder.onnx"} if encoder else {}),
             **({"decoder.onnx": src / "decoder.onnx"} if decoder else {}), **(files or {})}
    for name, target in links.items():
        (out / name).symlink_to(target)
    if edit is not None:
        edit(original)
    (out / "imseg_export.json").write_text(json.dumps(original if manifest is None else manifest))
    return out


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory):
    """A semantic-model .onnx (a 3x3 conv, 2 classes) to put where the SAM encoder should be."""
    import torch

    from imseg.export.onnx import export_semantic

    out = tmp_path_factory.mktemp("foreign")
    export_semantic(torch.nn.Conv2d(3, 2, 3, padding=1), out, class_names=["a", "b"], mean=(0.5,) * 3, std=(0.5,) * 3)
    return out


def test_mismatched_onnx_files_and_manifests_raise_export_error(sam_export, foreign_onnx, tmp_path):
    import imseg
    from imseg.errors import ExportError

    def drop(key):
        return lambda m: m.pop(key)

    cases = [
        ("decoder-as-encoder", dict(encoder=False, files={"encoder.onnx": sam_export / "decoder.onnx"}),
         r"encoder\.onnx: this is not the SAM image encoder"),
        ("encoder-as-decoder", dict(decoder=False, files={"decoder.onnx": sam_export / "encoder.onnx"}),
         r"decoder\.onnx: this is not the SAM prompt decoder"),
        ("semantic-as-encoder", dict(encoder=False, files={"encoder.onnx": foreign_onnx / "model.onnx"}),
         "expected outputs .*image_embeddings"),
        ("raw-input-flag", dict(edit=lambda m: m.update(raw_input=True)), r'"raw_input": false'),
        ("single-mask-flag", dict(edit=lambda m: m.update(single_mask=True)), r'"single_mask": false'),
        ("no-files", dict(edit=drop("files")), "no 'files' object"),
        ("no-normalization", dict(edit=drop("normalization")), "no 'normalization'"),
        ("bad-std", dict(edit=lambda m: m["normalization"].update(std=[1, 2])), r"normalization\.std must be 3 numbers"),
        ("list", dict(manifest=[]), "must be a JSON object, got a JSON list"),
        ("sam-labelled-semantic", dict(edit=lambda m: m.update(family="semantic")), "is 'family' wrong"),
        ("unknown-family", dict(edit=lambda m: m.update(family="yolo")), "unknown model family"),
        ("escaping-file", dict(edit=lambda m: m["files"].update(encoder="../encoder.onnx")), "inside the export directory"),
    ]
    for name, kwargs, message in cases:
        directory = _variant(sam_export, tmp_path / name, **kwargs)
        with pytest.raises(ExportError, match=message) as info:
            imseg.load(directory, device="cpu", threads=1)
        assert "imseg export" in str(info.value) or "imseg_export.json" in str(info.value), name
    # a semantic export whose manifest disagrees with its graph, or that is really a SAM encoder
    sem = _variant(foreign_onnx, tmp_path / "sem-classes", lambda m: m.update(class_names=["a", "b", "c"]),
                   encoder=False, decoder=False, files={"model.onnx": foreign_onnx / "model.onnx"})
    with pytest.raises(ExportError, match="2 class channel"):
        imseg.load(sem, device="cpu")
    sam_as_sem = _variant(foreign_onnx, tmp_path / "sem-sam", encoder=False, decoder=False,
                          files={"model.onnx": sam_export / "encoder.onnx"})
    with pytest.raises(ExportError, match="looks like a SAM image encoder"):
        imseg.load(sam_as_sem, device="cpu")


# ============================================================================ serving an ONNX Runtime export
@pytest.mark.slow
def test_serve_an_onnx_runtime_export(sam_export, sample_image):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    import imseg
    from imseg.export.runtime import OrtSamPredictor
    from imseg.serve.app import ServeSettings, create_app

    def png(image) -> bytes:
        import io

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return buf.getvalue()

    segmenter = imseg.load(sam_export, device="cpu", threads=1)
    app = create_app(segmenter, ServeSettings(concurrency=2, everything_options=dict(points_per_side=2)))
    workers = app.state.pool._idle
    assert isinstance(workers[0].predictor, OrtSamPredictor) and workers[0].predictor is not workers[1].predictor
    assert workers[0].predictor.encoder is segmenter.predictor.encoder  # sessions are shared, image state is not
    image = np.ascontiguousarray(sample_image[:160, :224])
    with TestClient(app) as client:
        assert "ONNX Runtime" in client.get("/v1/models").json()["models"][0]["summary"]
        up = client.post("/v1/images", content=png(image))
        assert up.status_code == 200, up.text
        seg = client.post(f"/v1/images/{up.json()['image_id']}/segment", json={"points": [[60, 80]], "labels": [1]})
        assert seg.status_code == 200, seg.text
        ref = OrtSamPredictor(sam_export, device="cpu", threads=1)
        ref.set_image(image)
        _, scores, _ = ref.predict(np.array([[60, 80]]), np.array([1]))
        np.testing.assert_allclose([m["score"] for m in seg.json()["masks"]], np.sort(scores)[::-1], atol=1e-5)
        everything = client.post(f"/v1/images/{up.json()['image_id']}/segment", json={"mode": "everything"})
        assert everything.status_code == 200, everything.text
        # an extreme aspect ratio is served (was a 500)
        wide = client.post("/v1/images", content=png(np.full((1, 3000, 3), 90, np.uint8)))
        assert wide.status_code == 200, wide.text
        seg = client.post(f"/v1/images/{wide.json()['image_id']}/segment", json={"points": [[1500, 0.5]], "labels": [1]})
        assert seg.status_code == 200 and seg.json()["masks"][0]["rle"]["size"] == [1, 3000], seg.text


def test_onnx_runtime_predictor_needs_no_torch(sam_export):
    """The ONNX Runtime predictor (and its ``transform``) runs in a process where torch cannot be imported."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from imseg.export.runtime import OrtSamPredictor
predictor = OrtSamPredictor({str(sam_export)!r}, device="cpu", threads=1)
image = np.random.default_rng(0).random((40, 60, 3))  # 0..1 floats: the transform scales them
predictor.set_image((image * 255).astype(np.uint8))
masks, iou, low_res = predictor.predict(np.array([[30.0, 20.0]]), np.array([1]))
resized = predictor.transform.apply_image(image)
import json
print(json.dumps([masks.shape, iou.shape, low_res.shape, resized.shape, str(resized.dtype)]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[3, 40, 60], [3], [3, 256, 256], [683, 1024, 3], "uint8"]
