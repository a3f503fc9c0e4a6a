"""`imseg serve` with a SAM 2.1 model built at 256 px (random weights, constants perturbed): its low-res logits are
64 x 64, not SAM's 256 x 256. The server says that size, returns low_res_logits at it, takes them back as mask_input
with the masks the predictor gives for that mask_input, and names the size when a mask_input does not match."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import perturb_constant_parameters, shapes_image  # noqa: E402
from imseg.serve.app import ServeSettings, create_app  # noqa: E402

SIZE = 256  # SAM 2.1 input side: a 16 x 16 embedding grid
LOW = SIZE // 4


@pytest.fixture(scope="module")
def predictor():
    from imseg.sam2.checkpoint import build_model
    from imseg.sam2.predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    model = build_model("hiera_t", image_size=SIZE)
    perturb_constant_parameters(model, seed=0)
    return SAM2ImagePredictor(model.eval())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 120 x 160 RGB image with a disc and a rectangle on a gradient."""
    return shapes_image(120, 160)


@pytest.fixture(scope="module")
def served(predictor, image):
    """(client, image_id) of a server over a worker copy of the 256 px SAM 2.1 segmenter."""
    from PIL import Image

    from imseg.sam2.segmenter import Sam2Segmenter

    app = create_app(Sam2Segmenter(predictor, name="sam2.1-hiera-t-256px"), ServeSettings(cache_bytes=64 << 20))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with TestClient(app) as client:
        upload = client.post("/v1/images", files={"file": ("shapes.png", buf.getvalue(), "image/png")})
        assert upload.status_code == 200, upload.text
        yield client, upload.json()["image_id"]


def b64(logits: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(logits, "<f4").tobytes()).decode("ascii")


def decode_rles(masks: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = [{"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()} for m in masks]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def test_models_endpoint_names_the_low_res_size(served):
    client, _ = served
    info = client.get("/v1/models").json()["models"][0]
    assert info["low_res_size"] == [LOW, LOW]


def test_low_res_logits_round_trip_as_mask_input(served, predictor, image):
    client, image_id = served
    box = [30.0, 25.0, 90.0, 100.0]
    first = client.post(f"/v1/images/{image_id}/segment", json={"box": box, "multimask": False, "return_logits": True})
    assert first.status_code == 200, first.text
    assert first.json()["low_res_size"] == [LOW, LOW]
    sent = first.json()["masks"][0]["low_res_logits"]
    logits = np.frombuffer(base64.b64decode(sent), "<f4").copy()
    assert logits.size == LOW * LOW
    predictor.set_image(image)
    _, _, ref_low = predictor.predict(box=np.array(box), multimask_output=False)
    assert ref_low.shape == (1, LOW, LOW)
    np.testing.assert_allclose(logits.reshape(LOW, LOW), ref_low[0], atol=1e-3 * max(1.0, np.abs(ref_low).max()))

    # the low-res logits fed back with a point give what the predictor gives for that mask_input
    second = client.post(f"/v1/images/{image_id}/segment",
                         json={"points": [[60, 60]], "labels": [1], "mask_input": sent, "multimask": True,
                               "return_logits": True})
    assert second.status_code == 200, second.text
    body = second.json()
    masks, scores, low = predictor.predict(np.array([[60.0, 60.0]]), np.array([1]),
                                           mask_input=logits.reshape(1, LOW, LOW), multimask_output=True)
    without, _, _ = predictor.predict(np.array([[60.0, 60.0]]), np.array([1]), multimask_output=True)
    assert (without != masks).any()  # the mask_input is used, so matching it means it arrived as sent
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_allclose([m["score"] for m in body["masks"]], scores[order], atol=1e-4)
    got = decode_rles(body["masks"])
    assert got.shape == (3, *image.shape[:2])
    for k, i in enumerate(order):
        assert (got[k] == masks[i]).mean() > 0.999
        back = np.frombuffer(base64.b64decode(body["masks"][k]["low_res_logits"]), "<f4").reshape(LOW, LOW)
        np.testing.assert_allclose(back, low[i], atol=1e-3 * max(1.0, np.abs(low).max()))


def test_mask_input_of_another_size_is_a_422_naming_the_size(served):
    client, image_id = served
    sam_sized = b64(np.zeros((256, 256), np.float32))  # a SAM 1024 px low_res_logits, not this model's
    response = client.post(f"/v1/images/{image_id}/segment",
                           json={"points": [[60, 60]], "labels": [1], "mask_input": sam_sized})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"{LOW}x{LOW}" in detail and "256x256" in detail, detail
    fitting = client.post(f"/v1/images/{image_id}/segment",
                          json={"points": [[60, 60]], "labels": [1], "mask_input": b64(np.zeros((LOW, LOW)))})
    assert fitting.status_code == 200, fitting.text


def test_json_limit_follows_the_low_res_size():
    """A mask_input of a large model still fits the default JSON body limit; an explicit limit is kept."""
    from imseg.serve.settings import mask_input_chars

    assert mask_input_chars((256, 256)) == len(b64(np.zeros((256, 256))))
    assert ServeSettings().json_body_limit((256, 256)) == 2 * 1024 * 1024
    big = (1024, 1024)  # a SAM 2.1 at 4096 px
    assert ServeSettings().json_body_limit(big) > mask_input_chars(big)
    assert ServeSettings(max_json_bytes=5_000_000).json_body_limit(big) == 5_000_000
