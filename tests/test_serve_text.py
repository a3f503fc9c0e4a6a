"""Text prompts over REST: a plug-in detector + a random-weight MobileSAM, checked against ``TextSegmenter``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import build_official_sam  # noqa: E402
from imseg.serve.app import ServeSettings, create_app  # noqa: E402
from imseg.text import TextSegmenter  # noqa: E402

TEXT = "Horse. rider."
# two overlapping "horse" boxes (NMS keeps the better), a "rider" box nearly equal to the first horse box
# (dropped by NMS across phrases), a low "rider" box and one reaching past the image (clipped)
BOXES = [[10, 10, 100, 100], [14, 12, 98, 104], [11, 11, 100, 101], [120, 40, 200, 150], [150, 90, 260, 170]]
SCORES = [0.9, 0.7, 0.6, 0.85, 0.4]
INDEX = [0, 0, 1, 1, 0]


class FixedDetector:
    """A plug-in detector returning given boxes and keeping the images it was given."""

    def __init__(self, boxes=BOXES, scores=SCORES, index=INDEX):
        self.result = (np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(index))
        self.seen: list[tuple[np.ndarray, list[str]]] = []

    def detect(self, rgb, phrases):
        self.seen.append((np.array(rgb), list(phrases)))
        return self.result


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_rles(masks: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = [{"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()} for m in masks]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


@pytest.fixture(scope="module")
def image(sample_image) -> np.ndarray:
    return np.ascontiguousarray(sample_image[:160, :224])


@pytest.fixture(scope="module")
def segmenter(mobile_sam_checkpoint):
    import imseg

    return imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def detector() -> FixedDetector:
    return FixedDetector()


@pytest.fixture(scope="module")
def client(segmenter, detector):
    with TestClient(create_app(segmenter, ServeSettings(), detector=detector)) as c:
        yield c


@pytest.fixture(scope="module")
def expected(segmenter, detector, image):
    out = TextSegmenter(segmenter, detector).segment(image, text=TEXT).sort_by("score")
    assert 1 < len(out) < len(BOXES)  # the filtering and several boxes are exercised
    return out


def assert_same(response_json: dict, expected) -> None:
    masks = response_json["masks"]
    assert len(masks) == len(expected)
    assert [m["label"] for m in masks] == [expected.class_names[k] for k in expected.labels]
    assert np.allclose([m["score"] for m in masks], expected.scores, atol=1e-5)
    assert np.allclose([m["detector_score"] for m in masks], expected.fields["detector_score"], atol=1e-6)
    assert np.array_equal(decode_rles(masks), expected.masks)


def test_text_on_an_uploaded_image_matches_text_segmenter(client, segmenter, detector, image, expected):
    encoder_calls = [0]
    hook = segmenter.predictor.model.image_encoder.register_forward_hook(
        lambda *_: encoder_calls.__setitem__(0, encoder_calls[0] + 1))
    up = client.post("/v1/images", files={"file": ("a.png", png(image), "image/png")})
    assert up.status_code == 200, up.text
    image_id = up.json()["image_id"]
    for text in (TEXT, "horse. rider"):
        before = len(detector.seen)
        r = client.post(f"/v1/images/{image_id}/segment", json={"text": text})
        assert r.status_code == 200, r.text
        assert_same(r.json(), expected)
        assert len(detector.seen) == before + 1
        rgb, phrases = detector.seen[-1]
        assert phrases == ["horse", "rider"] and np.array_equal(rgb, image)
    hook.remove()
    assert encoder_calls[0] == 1  # one encoder run for the upload, none for the text requests


@pytest.mark.slow
def test_one_shot_text_matches_text_segmenter(client, image, expected):
    r = client.post("/v1/segment", files={"file": ("a.png", png(image), "image/png")},
                    data={"prompts": json.dumps({"text": TEXT, "formats": ["rle", "polygons"]})})
    assert r.status_code == 200, r.text
    assert_same(r.json(), expected)


def test_text_with_no_detection_gives_no_masks(segmenter, image):
    empty = FixedDetector(np.zeros((0, 4)), [], [])
    with TestClient(create_app(segmenter, ServeSettings(), detector=empty)) as c:
        image_id = c.post("/v1/images", content=png(image)).json()["image_id"]
        r = c.post(f"/v1/images/{image_id}/segment", json={"text": "unicorn."})
    assert r.status_code == 200 and r.json()["masks"] == [] and r.json()["best"] is None


def test_official_model_decodes_boxes_in_one_batch_like_text_segmenter(segmenter, detector, image, expected):
    # the official mobile_sam model with the same random weights as ``segmenter``
    with TestClient(create_app(build_official_sam("vit_t"), ServeSettings(), detector=detector)) as c:
        image_id = c.post("/v1/images", content=png(image)).json()["image_id"]
        r = c.post(f"/v1/images/{image_id}/segment", json={"text": TEXT})
    assert r.status_code == 200, r.text
    masks = r.json()["masks"]
    assert [m["label"] for m in masks] == [expected.class_names[k] for k in expected.labels]
    assert np.allclose([m["score"] for m in masks], expected.scores, atol=1e-4)
    agree = (decode_rles(masks) == expected.masks).mean()
    assert agree > 0.999


@pytest.mark.parametrize("extra, named", [
    ({"points": [[5, 5]], "labels": [1]}, "points"),
    ({"box": [1, 1, 50, 50]}, "box"),
    ({"mode": "everything"}, "everything"),
])
def test_text_with_other_prompts_is_a_named_422(client, image, extra, named):
    image_id = client.post("/v1/images", content=png(image)).json()["image_id"]
    r = client.post(f"/v1/images/{image_id}/segment", json={"text": TEXT, **extra})
    assert r.status_code == 422 and "text-with-prompts" in r.json()["type"]
    assert named in r.json()["detail"] and "'text'" in r.json()["detail"]


@pytest.mark.parametrize("text", ["", "  ", "horse..rider", "horse. . rider"])
def test_empty_phrase_is_422(client, image, text):
    image_id = client.post("/v1/images", content=png(image)).json()["image_id"]
    r = client.post(f"/v1/images/{image_id}/segment", json={"text": text})
    assert r.status_code == 422 and "phrase" in r.json()["detail"]


def test_text_without_detector_names_the_option(segmenter, image):
    with TestClient(create_app(segmenter, ServeSettings())) as c:
        image_id = c.post("/v1/images", content=png(image)).json()["image_id"]
        r = c.post(f"/v1/images/{image_id}/segment", json={"text": TEXT})
        once = c.post("/v1/segment", files={"file": ("a.png", png(image), "image/png")},
                      data={"prompts": json.dumps({"text": TEXT})})
    for resp in (r, once):
        assert resp.status_code == 422 and "no-detector" in resp.json()["type"]
        assert "--detector" in resp.json()["detail"]


def test_detector_that_cannot_detect_is_refused_at_startup(segmenter):
    from imseg.errors import ConfigError

    with pytest.raises(ConfigError, match="detect"):
        create_app(segmenter, ServeSettings(), detector=object())


def test_page_has_a_find_box_that_sends_text(client):
    page = client.get("/").text
    assert 'id="find-text"' in page and 'id="find-form"' in page
    script = client.get("/static/app.js").text
    assert "JSON.stringify({ text," in script and "m.label" in script


def test_cli_serve_builds_the_named_detector_and_refuses_unknown_names():
    from typer.testing import CliRunner

    from imseg.cli import app

    result = CliRunner().invoke(app, ["serve", "--detector", "no-such-detector"])
    assert result.exit_code != 0 and "unknown detector 'no-such-detector'" in result.output
    assert "grounding-dino-tiny" in result.output
