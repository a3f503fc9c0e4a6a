"""TextSegmenter end to end on real photos: random tiny detectors / CLIP + a random-weight MobileSAM."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

import imseg  # noqa: E402
from imseg.errors import ConfigError, PromptError  # noqa: E402
from imseg.io import read_image  # noqa: E402
from imseg.text import TextSegmenter, mask_crops  # noqa: E402
from test_text_models import count_calls, tiny_clip_labeler, tiny_grounding_dino, tiny_owlv2  # noqa: E402


@pytest.fixture(scope="module")
def sam(mobile_sam_checkpoint):
    return imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def horses(data_dir):
    paths = sorted((data_dir / "weizmann-horse" / "images").glob("*.jpg"))[:2]
    if len(paths) < 2:
        pytest.skip("weizmann-horse images not found")
    return [read_image(p) for p in paths]


@pytest.fixture(scope="module")
def gdino():
    return tiny_grounding_dino(box_threshold=0.3, text_threshold=0.2)


class FixedDetector:
    """A plug-in detector returning given boxes, counting its calls."""

    def __init__(self, boxes, scores, index):
        self.result = (np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(index))
        self.calls = 0

    def detect(self, rgb, phrases):
        self.calls += 1
        return self.result


def test_text_prompts_give_labelled_masks_with_combined_scores(sam, gdino, horses):
    seg = TextSegmenter(sam, gdino, cross_nms_threshold=None)
    out = seg.segment(horses[0], text="Horse. rider.")
    h, w = horses[0].shape[:2]
    assert len(out) > 0 and out.masks.shape == (len(out), h, w) and out.image_size == (h, w)
    assert out.class_names == ["unlabeled", "horse", "rider"]
    assert set(out.labels.tolist()) <= {1, 2}
    det, iou = out.fields["detector_score"], out.fields["sam_iou"]
    assert np.allclose(out.scores, det * np.clip(iou, 0, 1), atol=1e-6)
    boxes = out.fields["box_prompt"]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    # the detector's own output, filtered only by NMS within phrases and the per-phrase limit
    raw_boxes, raw_scores, raw_index = gdino.detect(horses[0], ["horse", "rider"])
    assert len(out) <= len(raw_scores)
    for b, s, k in zip(boxes, det, out.labels - 1, strict=True):
        j = np.flatnonzero((np.abs(raw_boxes - b).max(axis=1) < 1e-3) & (raw_index == k))
        assert j.size and np.isclose(raw_scores[j[0]], s)


@pytest.mark.slow
def test_box_to_mask_step_equals_one_box_at_a_time(sam, gdino, horses):
    out = TextSegmenter(sam, gdino, max_per_phrase=2).segment(horses[1], text="horse. grass. sky.")
    assert len(out) > 1
    for i, box in enumerate(out.fields["box_prompt"]):
        one = sam.segment(horses[1], box=box)
        assert np.array_equal(one.masks[0], out.masks[i])
        assert np.isclose(one.scores[0], out.fields["sam_iou"][i], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("make", [tiny_grounding_dino, tiny_owlv2])
def test_each_image_is_encoded_once_per_model(sam, horses, make):
    detector = make(box_threshold=0.0) if make is tiny_owlv2 else make(box_threshold=0.3, text_threshold=0.2)
    backbone = detector.model.model.backbone if make is tiny_grounding_dino else detector.model.owlv2.vision_model
    detector_calls, sam_calls = count_calls(backbone), count_calls(sam.model.image_encoder)
    seg = TextSegmenter(sam, detector, max_per_phrase=1)
    for rgb in horses:
        seg.segment(rgb, text="horse. rider. grass. sky. dog.")
    assert detector_calls[0] == len(horses) and sam_calls[0] == len(horses)


def test_thresholds_nms_and_per_phrase_limit(sam, horses):
    rgb = horses[0]
    h, w = rgb.shape[:2]
    boxes = [[10, 10, 100, 100], [12, 11, 101, 99],   # phrase 0: near-duplicates -> NMS keeps the first
             [10, 10, 100, 100],                      # phrase 1: the same box as phrase 0 (cross-phrase NMS)
             [120, 40, 200, 150], [130, 50, 190, 140.0],  # phrase 1: overlapping (IoU ~0.6), both kept at 0.7
             [-20, -5, 60, 40],                       # phrase 0: clipped to the image
             [w + 5, 0, w + 50, 30],                  # outside: clipped to nothing and dropped
             [30, 100, 80, 160]]                      # phrase 0: below min_score
    scores = [0.9, 0.8, 0.7, 0.85, 0.6, 0.5, 0.95, 0.05]
    index = [0, 0, 1, 1, 1, 0, 0, 0]
    det = FixedDetector(boxes, scores, index)
    out = TextSegmenter(sam, det, min_score=0.1, nms_threshold=0.7, cross_nms_threshold=0.8).segment(
        rgb, text="horse. rider.")
    assert det.calls == 1
    kept = out.fields["box_prompt"].tolist()
    assert kept == [[10, 10, 100, 100], [120, 40, 200, 150], [130, 50, 190, 140], [0, 0, 60, 40]]
    assert out.labels.tolist() == [1, 2, 2, 1]
    assert out.fields["detector_score"].tolist() == pytest.approx([0.9, 0.85, 0.6, 0.5])
    no_cross = TextSegmenter(sam, det, min_score=0.1, nms_threshold=0.7, cross_nms_threshold=None).segment(
        rgb, text="horse. rider.")
    assert len(no_cross) == 5 and [10, 10, 100, 100] in no_cross.fields["box_prompt"][no_cross.labels == 2].tolist()
    limited = TextSegmenter(sam, det, min_score=0.1, nms_threshold=1.0, max_per_phrase=1).segment(
        rgb, text="horse. rider.")
    assert limited.fields["box_prompt"].tolist() == [[10, 10, 100, 100], [120, 40, 200, 150]]


def test_detector_thresholds_only_remove_boxes(sam, horses):
    low = TextSegmenter(sam, tiny_grounding_dino(box_threshold=0.25, text_threshold=0.2), nms_threshold=1.0,
                        cross_nms_threshold=None, max_per_phrase=100).segment(horses[0], text="horse. rider.")
    high = TextSegmenter(sam, tiny_grounding_dino(box_threshold=0.4, text_threshold=0.35), nms_threshold=1.0,
                         cross_nms_threshold=None, max_per_phrase=100).segment(horses[0], text="horse. rider.")
    assert len(high) < len(low)
    assert (high.fields["detector_score"] > 0.35).all()
    low_boxes = {tuple(np.round(b, 3)) for b in low.fields["box_prompt"]}
    assert all(tuple(np.round(b, 3)) in low_boxes for b in high.fields["box_prompt"])


def test_no_detections_give_empty_masks(sam, horses):
    out = TextSegmenter(sam, FixedDetector(np.zeros((0, 4)), [], [])).segment(horses[0], text="horse.")
    assert len(out) == 0 and out.image_size == horses[0].shape[:2] and out.class_names == ["unlabeled", "horse"]


def test_bad_text_inputs_are_refused_clearly(sam, gdino, horses):
    seg = TextSegmenter(sam, gdino)
    with pytest.raises(PromptError, match="empty"):
        seg.segment(horses[0], text="horse..rider")
    with pytest.raises(PromptError, match="at most 256"):
        seg.segment(horses[0], text="long " * 300)
    with pytest.raises(ConfigError, match="not both"):
        seg.segment(horses[0], text="horse.", classify=["horse"])
    with pytest.raises(ConfigError, match="box prompts"):
        TextSegmenter(imseg.load("otsu"), gdino)
    with pytest.raises(ConfigError, match="needs a detector"):
        TextSegmenter(sam).segment(horses[0], text="horse.")
    with pytest.raises(ConfigError, match="must match"):
        TextSegmenter(sam, FixedDetector([[0, 0, 5, 5]], [0.5, 0.4], [0])).segment(horses[0], text="horse.")
    with pytest.raises(ConfigError, match="outside 0..0"):
        TextSegmenter(sam, FixedDetector([[0, 0, 5, 5]], [0.5], [1])).segment(horses[0], text="horse.")


# ----------------------------------------------------------------------------- everything mode + CLIP names
@pytest.mark.slow
def test_classify_names_every_mask_with_clip(sam, horses):
    labeler = tiny_clip_labeler(batch_size=2)
    image_calls, text_calls = count_calls(labeler.model.visual), [0]
    encode_text = labeler.model.encode_text
    labeler.model.encode_text = lambda *a, **k: (text_calls.__setitem__(0, text_calls[0] + 1), encode_text(*a, **k))[1]
    names = ["horse", "grass", "sky"]
    options = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    out = TextSegmenter(sam, labeler=labeler, label_threshold=0.0).segment(horses[0], classify=names, **options)
    plain = sam.segment(horses[0], **options)
    assert len(out) == len(plain) > 0 and np.array_equal(out.masks, plain.masks)
    assert np.array_equal(out.scores, plain.scores)
    assert out.class_names == ["unlabeled", *names] and text_calls[0] == 1
    assert image_calls[0] == math.ceil(len(out) / 2)
    probs = labeler.probabilities(mask_crops(horses[0], plain.masks, plain.boxes), names)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert out.labels.tolist() == (probs.argmax(axis=1) + 1).tolist()
    assert np.allclose(out.fields["label_probability"], probs.max(axis=1), atol=1e-6)
    # a threshold between the probabilities leaves the less certain masks without a name
    cut = float(np.median(probs.max(axis=1)))
    strict = TextSegmenter(sam, labeler=labeler, label_threshold=cut).segment(horses[0], classify=names, **options)
    assert strict.labels.tolist() == np.where(probs.max(axis=1) >= cut, probs.argmax(axis=1) + 1, 0).tolist()


def test_classify_refuses_bad_names(sam, horses):
    seg = TextSegmenter(sam, labeler=tiny_clip_labeler())
    with pytest.raises(PromptError, match="list of names"):
        seg.segment(horses[0], classify="horse")
    with pytest.raises(PromptError, match="empty"):
        seg.segment(horses[0], classify=["horse", ""])
    with pytest.raises(PromptError, match="token text limit"):
        seg.labeler.probabilities([horses[0]], ["horse " * 80])
    with pytest.raises(ConfigError, match="labeler"):
        TextSegmenter(sam).segment(horses[0], classify=["horse"])


@pytest.mark.slow
def test_cli_text_prompt_writes_labelled_masks(mobile_sam_checkpoint, data_dir, tmp_path):
    """``imseg segment --text`` through the real CLI with a saved tiny Grounding DINO; bad phrases fail up front."""
    import json

    from typer.testing import CliRunner

    from imseg.cli import app

    det = tiny_grounding_dino(box_threshold=0.0, text_threshold=0.0)
    det.model.save_pretrained(tmp_path / "gdino")
    det.processor.save_pretrained(tmp_path / "gdino")
    image = sorted((data_dir / "weizmann-horse" / "images").glob("*.jpg"))[0]
    base = ["segment", str(image), "--model", "mobile-sam", "--checkpoint", str(mobile_sam_checkpoint),
            "--device", "cpu", "--format", "coco"]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--text", "horse, rider", "--detector", f"grounding-dino:{tmp_path / 'gdino'}",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert doc["annotations"], "a zero threshold keeps the detector's boxes"
    marker = next((tmp_path / "out" / "done").glob("*.json"))
    assert json.loads(marker.read_text())["settings"]["prompts"] == {"text": "horse. rider"}
    result = runner.invoke(app, [*base, "--text", "horse..rider", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "is empty" in result.output and not (tmp_path / "bad" / "done").exists()
    result = runner.invoke(app, [*base, "--text", "horse", "--points", "5,5", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--text finds its own boxes" in result.output


def test_segment_with_names_is_everything_mode_named_by_clip(sam, horses):
    """`segment(image, labels=["horse", ...])` (names, no points) equals TextSegmenter's classify."""
    labeler = tiny_clip_labeler(batch_size=2)
    names = ["horse", "grass", "sky"]
    options = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    direct = TextSegmenter(sam, labeler=labeler).segment(horses[0], classify=names, **options)
    named = sam.segment(horses[0], labels=names, labeler=labeler, **options)
    assert len(named) == len(direct) > 0 and np.array_equal(named.masks, direct.masks)
    assert named.class_names == ["unlabeled", *names] and named.labels.tolist() == direct.labels.tolist()
    with pytest.raises(PromptError, match="labels were given without points"):
        sam.segment(horses[0], labels=[1])  # numbers are still point labels
