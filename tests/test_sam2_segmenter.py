"""``imseg.load("sam2.1-hiera-*")``: SAM 2.1 behind the one ``Segmenter.segment``.

A random-weight SAM 2.1 tiny built with the official ``sam2`` package (every all-equal parameter
perturbed) is saved as the official files are, ``{"model": state_dict}``. The segmenter's masks,
scores and low-res logits must equal :class:`SAM2ImagePredictor`'s on the same prompts, under the
contract's selection rules, with the image encoded once per image.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2.build_sam")

import imseg  # noqa: E402
from imseg.errors import CheckpointError, ConfigError  # noqa: E402
from imseg.io import read_image  # noqa: E402
from imseg.registry import download_weights, get_spec, list_models  # noqa: E402
from imseg.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor  # noqa: E402
from imseg.sam2.segmenter import Sam2Segmenter  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(make_sam2_checkpoint):
    return make_sam2_checkpoint("t")


@pytest.fixture(scope="module")
def image(data_dir):
    path = data_dir / "video-bedroom" / "00000.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return imseg.load("sam2.1-hiera-t", checkpoint=checkpoint, device="cpu")


@pytest.fixture(scope="module")
def reference(segmenter, image):
    """The predictor on the same model, with the image set independently of the segmenter."""
    predictor = SAM2ImagePredictor(segmenter.model)
    predictor.set_image(image)
    return predictor


def _encoder_calls(model):
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def _assert_same(result, masks, iou, low):
    assert result.masks.shape == masks.shape
    assert np.array_equal(result.masks, masks)
    np.testing.assert_allclose(result.scores, iou, atol=TOL, rtol=0)
    np.testing.assert_allclose(result.fields["low_res_logits"], low, atol=TOL, rtol=0)
    assert result.fields["low_res_logits"].shape[1:] == (256, 256)


def test_load_builds_the_sam2_engine(segmenter, checkpoint):
    assert isinstance(segmenter, Sam2Segmenter)
    assert segmenter.name == "sam2.1-hiera-t" and not segmenter.random_weights
    assert segmenter.checkpoint == str(checkpoint)
    for alias in ("sam2.1_hiera_tiny", "sam2-t", "SAM2.1-HIERA-T"):
        assert get_spec(alias).name == "sam2.1-hiera-t"
    assert {s.name for s in list_models("sam2")} == {"sam2.1-hiera-t", "sam2.1-hiera-s", "sam2.1-hiera-b+",
                                                      "sam2.1-hiera-l"}


@pytest.mark.slow
def test_single_point_is_decoded_multimask_and_best_kept(segmenter, reference, image):
    h, w = image.shape[:2]
    point = [[w * 0.4, h * 0.5]]
    result = segmenter.segment(image, points=point, labels=[1])
    masks, iou, low = reference.predict(np.array(point), np.array([1]), multimask_output=True)
    best = int(np.argmax(iou))
    _assert_same(result, masks[best:best + 1], iou[best:best + 1], low[best:best + 1])


@pytest.mark.slow
def test_points_box_and_multimask_match_the_predictor(segmenter, reference, image):
    h, w = image.shape[:2]
    points = np.array([[w * 0.4, h * 0.5], [w * 0.7, h * 0.3]])
    labels = np.array([1, 0])
    box = np.array([w * 0.2, h * 0.1, w * 0.8, h * 0.7])
    _assert_same(segmenter.segment(image, points=points, labels=labels),
                 *reference.predict(points, labels, multimask_output=False))
    _assert_same(segmenter.segment(image, box=box), *reference.predict(box=box, multimask_output=False))
    result = segmenter.segment(image, points=points[:1], labels=[1], box=box, multimask=True)
    masks, iou, low = reference.predict(points[:1], labels[:1], box, multimask_output=True)
    order = np.argsort(-iou, kind="stable")
    _assert_same(result, masks[order], iou[order], low[order])
    assert list(result.scores) == sorted(result.scores, reverse=True) and len(result) == 3


@pytest.mark.parametrize("multimask", [False, True])
def test_several_boxes_give_one_mask_each(segmenter, reference, image, multimask):
    h, w = image.shape[:2]
    boxes = np.array([[w * 0.1, h * 0.1, w * 0.5, h * 0.6], [w * 0.4, h * 0.3, w * 0.9, h * 0.9],
                      [0, 0, w - 1, h - 1]])
    result = segmenter.segment(image, box=boxes, multimask=multimask)
    masks, iou, low = reference.predict(box=boxes, multimask_output=multimask)
    best = iou.argmax(axis=1)
    rows = np.arange(len(boxes))
    _assert_same(result, masks[rows, best], iou[rows, best], low[rows, best])
    assert list(result.fields["prompt_index"]) == [0, 1, 2]


def test_low_res_logits_feed_back_as_mask_input(segmenter, reference, image):
    h, w = image.shape[:2]
    points, labels = np.array([[w * 0.4, h * 0.5], [w * 0.45, h * 0.55]]), np.array([1, 1])
    first = segmenter.segment(image, points=points, labels=labels)
    again = segmenter.segment(image, points=points, labels=labels, mask_input=first.fields["low_res_logits"][0])
    _assert_same(again, *reference.predict(points, labels, mask_input=first.fields["low_res_logits"][:1],
                                           multimask_output=False))
    # the mask prompt took part in the decoding
    assert not np.allclose(again.fields["low_res_logits"], first.fields["low_res_logits"])


@pytest.mark.slow
def test_image_is_encoded_once_per_image(segmenter, image):
    segmenter.clear_embeddings()
    calls, handle = _encoder_calls(segmenter.model)
    try:
        h, w = image.shape[:2]
        segmenter.segment(image, points=[[w / 2, h / 2]], labels=[1])
        segmenter.segment(image, box=[10, 10, w / 2, h / 2])
        assert len(calls) == 1
        segmenter.segment(image[:, ::-1].copy(), points=[[w / 2, h / 2]], labels=[1])
        assert len(calls) == 2
    finally:
        handle.remove()


@pytest.mark.slow
def test_everything_reuses_the_embedding_and_matches_the_generator(segmenter, image):
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    expected = SAM2AutomaticMaskGenerator(segmenter.model, **options).generate_masks(image)
    assert len(expected) > 0
    segmenter.clear_embeddings()
    h, w = image.shape[:2]
    segmenter.segment(image, points=[[w / 2, h / 2]], labels=[1])
    calls, handle = _encoder_calls(segmenter.model)
    try:
        result = segmenter.segment(image, **options)
    finally:
        handle.remove()
    assert calls == []  # the cached whole-image embedding was used
    assert np.array_equal(result.masks, expected.masks)
    np.testing.assert_allclose(result.scores, expected.scores, atol=TOL, rtol=0)


def test_weights_rules_random_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="imseg weights download sam2.1-hiera-t"):
        imseg.load("sam2.1-hiera-t", device="cpu")
    with pytest.warns(UserWarning, match="WEIGHTS ARE RANDOM: sam2.1-hiera-t"):
        random = imseg.load("sam2-t", device="cpu", allow_random=True)
    assert random.random_weights and random.checkpoint is None
    with pytest.raises(ConfigError, match="unknown options"):
        imseg.load("sam2.1-hiera-t", device="cpu", allow_random=True, points_per_side=4)


def test_download_without_known_checksum_is_kept_with_a_warning(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))

    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "5"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"hello"))
    assert get_spec("sam2.1-hiera-t").weights.sha256 is None
    with pytest.warns(UserWarning, match="NOT verified"):
        path = download_weights("sam2.1-hiera-t", progress=False)
    assert path == tmp_path / "sam2.1_hiera_tiny.pt" and path.read_bytes() == b"hello"

    from typer.testing import CliRunner

    from imseg.cli import app

    result = CliRunner().invoke(app, ["weights", "download", "sam2-s"])
    assert result.exit_code == 0, result.output
    assert "NOT verified" in result.output and (tmp_path / "sam2.1_hiera_small.pt").read_bytes() == b"hello"


@pytest.mark.slow
def test_cli_segment_and_weights_list(checkpoint, data_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imseg.cli import app

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "cache"))
    src = data_dir / "video-bedroom" / "00000.jpg"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    runner = CliRunner()
    listed = runner.invoke(app, ["weights", "list"])
    assert listed.exit_code == 0 and "sam2.1-hiera-b+" in listed.output and "unknown" in listed.output
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(src), "--model", "sam2.1-hiera-t", "--checkpoint", str(checkpoint),
                                 "--points", "200,150", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = sorted((out / "masks" / "00000").glob("00000_*.png"))
    assert len(written) == 1
    from PIL import Image

    with Image.open(written[0]) as mask:
        assert mask.size == Image.open(src).size
