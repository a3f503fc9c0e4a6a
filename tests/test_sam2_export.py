"""SAM 2.1 export: a random-weight SAM 2.1 tiny (official ``sam2`` package, saved as the official files are)
exported with ``imseg export``, run on ONNX Runtime through ``imseg.load(EXPORT_DIR)``, against the torch
segmenter on the same checkpoint (masks IoU >= 0.99, scores within 1e-3, low-res logits close) and the
official memory attention (complex RoPE) against the exported one (real cos/sin RoPE)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("sam2.build_sam")

from typer.testing import CliRunner  # noqa: E402

import imseg  # noqa: E402
from conftest import assert_same_sam2_features, assert_same_sam2_masks, build_official_sam2, mask_iou  # noqa: E402
from imseg.cli import app  # noqa: E402
from imseg.errors import CheckpointError, ConfigError, ExportError  # noqa: E402
from imseg.io import read_image  # noqa: E402

pytestmark = pytest.mark.slow  # every test here needs the exported model (about a minute to export)

SCORE_TOL = 1e-3
LOGIT_TOL = 1e-3  # relative to the largest |logit|


@pytest.fixture(scope="module")
def official():
    return build_official_sam2("t")


@pytest.fixture(scope="module")
def checkpoint(make_sam2_checkpoint):
    return make_sam2_checkpoint("t")  # the weights of ``official``: one seed, one builder


@pytest.fixture(scope="module")
def export_dir(checkpoint, tmp_path_factory):
    """Exported through the CLI, with the memory attention."""
    out = tmp_path_factory.mktemp("sam2export") / "sam2.1-t"
    result = CliRunner().invoke(app, ["export", "--model", "sam2.1-hiera-t", "--checkpoint", str(checkpoint),
                                      "--out", str(out), "--memory-attention"])
    assert result.exit_code == 0, result.output
    assert "memory_attention:" in result.output
    return out


@pytest.fixture(scope="module")
def image(data_dir):
    path = data_dir / "video-bedroom" / "00000.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


@pytest.fixture(scope="module")
def torch_segmenter(checkpoint):
    return imseg.load("sam2.1-hiera-t", checkpoint=checkpoint, device="cpu")


@pytest.fixture(scope="module")
def ort_segmenter(export_dir):
    return imseg.load(export_dir, device="cpu")


def _assert_same(ours, ref) -> None:
    assert_same_sam2_masks(ours, ref, SCORE_TOL, LOGIT_TOL)


def test_export_files_manifest_and_checker(export_dir):
    import onnx

    manifest = json.loads((export_dir / "imseg_export.json").read_text())
    assert manifest["family"] == "sam2" and manifest["model"] == "sam2.1-hiera-t"
    assert manifest["variant"] == "hiera_t" and manifest["dynamic_multimask_via_stability"] is True
    assert set(manifest["files"]) == {"encoder", "decoder", "memory_attention"}
    decoder = onnx.load(str(export_dir / manifest["files"]["decoder"]))
    assert [o.name for o in decoder.graph.output] == ["masks", "iou_predictions", "low_res_masks",
                                                      "object_score_logits"]
    for name in manifest["files"].values():
        onnx.checker.check_model(str(export_dir / name))


def test_encoder_parity(ort_segmenter, torch_segmenter, image):
    ours = ort_segmenter.embed(image).features
    ref = torch_segmenter.embed(image).features
    assert_same_sam2_features(ours, ref)


PROMPTS = [
    {"points": [(480, 270)], "labels": [1]},
    {"points": [(480, 270), (200, 400)], "labels": [1, 0]},
    {"points": [(480, 270), (600, 300)], "labels": [1, 1], "multimask": True},
    {"box": (300, 150, 700, 450)},
    {"box": (300, 150, 700, 450), "points": [(500, 300)], "labels": [0]},
    {"box": [(300, 150, 700, 450), (10, 20, 200, 300)]},
    {"box": [(300, 150, 700, 450), (10, 20, 200, 300)], "multimask": True},
]


@pytest.mark.parametrize("prompt", PROMPTS, ids=[str(i) for i in range(len(PROMPTS))])
def test_prompt_parity(ort_segmenter, torch_segmenter, image, prompt):
    _assert_same(ort_segmenter.segment(image, **prompt), torch_segmenter.segment(image, **prompt))


def test_mask_input_parity(ort_segmenter, torch_segmenter, image):
    first = torch_segmenter.segment(image, points=[(480, 270)], labels=[1])
    low = first.fields["low_res_logits"][0]
    for kwargs in ({"points": [(480, 270)], "labels": [1]}, {}):
        ours = ort_segmenter.segment(image, mask_input=low, **kwargs)
        _assert_same(ours, torch_segmenter.segment(image, mask_input=low, **kwargs))


def test_single_mask_stability_choice_matches(ort_segmenter, torch_segmenter, image):
    """The single-mask output on host (token 0, or the best multimask token when token 0 is unstable) is the
    torch decoder's choice, for prompts of both kinds."""
    emb_o, emb_t = ort_segmenter.embed(image), torch_segmenter.embed(image)
    from imseg.segmenter import Prompts

    rng = np.random.default_rng(0)
    for _ in range(6):
        pts = rng.uniform([0, 0], [960, 540], (2, 2)).astype(np.float32)
        prompts = Prompts(points=pts, labels=np.array([1, 0], np.int32))
        ours = ort_segmenter.decode(emb_o, prompts, multimask_output=False)
        ref = torch_segmenter.decode(emb_t, prompts, multimask_output=False)
        np.testing.assert_allclose(ours.iou, ref.iou, atol=SCORE_TOL)
        assert mask_iou(ours.masks[0, 0], ref.masks[0, 0]) >= 0.99


def test_everything_parity(ort_segmenter, torch_segmenter, image):
    small = np.ascontiguousarray(image[::2, ::2])
    options = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    ours = ort_segmenter.segment(small, **options)
    ref = torch_segmenter.segment(small, **options)
    assert len(ref) > 0 and len(ours) == len(ref)
    for a, b in zip(ours.masks, ref.masks, strict=True):
        assert mask_iou(a, b) >= 0.99
    np.testing.assert_allclose(ours.scores, ref.scores, atol=SCORE_TOL)


@pytest.mark.parametrize("frames,pointers", [(1, 0), (3, 16)])
def test_memory_attention_real_rope_matches_official(export_dir, official, frames, pointers):
    """The exported memory attention (real cos/sin RoPE) against the official one (complex RoPE)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_dir / "memory_attention.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(frames)
    curr, curr_pos = torch.randn(4096, 1, 256, generator=g), torch.randn(4096, 1, 256, generator=g)
    memory, memory_pos = torch.randn(frames * 4096, 1, 64, generator=g), torch.randn(frames * 4096, 1, 64, generator=g)
    ptrs, ptrs_pos = torch.randn(pointers, 1, 64, generator=g), torch.randn(pointers, 1, 64, generator=g)
    with torch.no_grad():
        ref = official.memory_attention(curr=curr, memory=torch.cat([memory, ptrs]), curr_pos=curr_pos,
                                        memory_pos=torch.cat([memory_pos, ptrs_pos]),
                                        num_obj_ptr_tokens=pointers).numpy()
    feeds = {"curr": curr, "curr_pos": curr_pos, "memory": memory, "memory_pos": memory_pos, "obj_ptrs": ptrs,
             "obj_ptrs_pos": ptrs_pos}
    (ours,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_sam2_export_refuses_sam1_only_options(checkpoint, tmp_path):
    from imseg.export import export_model

    with pytest.raises(ConfigError, match="--raw-input"):
        export_model("sam2.1-hiera-t", checkpoint=checkpoint, out=tmp_path / "x", raw_input=True)
    with pytest.raises(ConfigError, match="--memory-attention"):
        export_model("mobile-sam", checkpoint=checkpoint, out=tmp_path / "y", memory_attention=True)


def test_sam2_export_wrong_size_checkpoint(checkpoint, tmp_path):
    from imseg.export import export_model

    with pytest.raises(CheckpointError, match="hiera_t"):
        export_model("sam2.1-hiera-s", checkpoint=checkpoint, out=tmp_path / "s")
    assert not (tmp_path / "s" / "imseg_export.json").exists()


def test_wrong_family_manifest(export_dir, tmp_path):
    import shutil

    from imseg.export.ort_sam2 import OrtSam2Predictor

    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "imseg_export.json").read_text())
    manifest["family"] = "sam"
    (copy / "imseg_export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="not a SAM 2 export"):
        OrtSam2Predictor(copy, device="cpu")
    manifest["family"] = "sam2"
    manifest["files"]["decoder"] = manifest["files"]["encoder"]
    (copy / "imseg_export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="SAM 2 prompt decoder"):
        OrtSam2Predictor(copy, device="cpu")


def test_serve_sam2_export(export_dir, ort_segmenter, image, tmp_path, monkeypatch):
    """`imseg serve --model EXPORT_DIR` serves the ONNX Runtime engine with the same answers as segment()."""
    pytest.importorskip("fastapi")
    from test_serve_sam2 import check_served_like_segmenter, serve_app

    application, result = serve_app(str(export_dir), tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert application.state.backend.embedding_bytes == 16 * 256 * 64 * 64
    check_served_like_segmenter(application, ort_segmenter, image)
