"""REST API of ``imseg serve``: parity with the official predictor, limits, abuse, schema fuzzing.

The main app serves imseg's own MobileSAM (``imseg.load``) and is checked against the official
``mobile_sam`` predictor / generator built with the same random weights. Apps that only test limits
wrap the official model directly (building an app costs nothing: it only wraps the model).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import build_official_sam  # noqa: E402
from imseg.serve.app import ServeSettings, create_app  # noqa: E402
from imseg.serve.backend import Embedding, EmbeddingCache  # noqa: E402
from imseg.serve.pool import Busy, RunTimeout, WorkerPool  # noqa: E402

PROBLEM = "application/problem+json"
EVERYTHING = dict(points_per_side=2, pred_iou_thresh=-1.0, stability_score_thresh=0.0)


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header(width: int, height: int, with_data: bool = True) -> bytes:
    """A PNG whose IHDR declares width x height (plus one tiny IDAT and IEND), never decodable."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if with_data:
        out += chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    return out


def decode_rles(masks: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = [{"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()} for m in masks]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


@pytest.fixture(scope="module")
def sam_model():
    return build_official_sam("vit_t")


@pytest.fixture(scope="module")
def image(sample_image) -> np.ndarray:
    return np.ascontiguousarray(sample_image[:160, :224])  # non-square, 224 wide x 160 high


@pytest.fixture(scope="module")
def segmenter(mobile_sam_checkpoint):
    """imseg's own MobileSAM loaded from the official-layout random checkpoint (same weights as sam_model)."""
    import imseg

    return imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def client(segmenter):
    app = create_app(segmenter, ServeSettings(max_points=64, everything_options=EVERYTHING))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def uploaded(client, image) -> dict:
    response = client.post("/v1/images", files={"file": ("photo.jpg", encode(image), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def official_predictor(sam_model, image):
    from mobile_sam import SamPredictor

    predictor = SamPredictor(sam_model)
    predictor.set_image(image)
    return predictor


# ============================================================================ happy paths, parity
def test_upload_returns_size_and_caches_by_content(client, uploaded, image):
    assert (uploaded["width"], uploaded["height"]) == (224, 160)
    assert uploaded["cached"] is False and uploaded["embed_ms"] > 0
    # same bytes as a raw body (and a misleading name/type above): same id, served from the cache
    again = client.post("/v1/images", content=encode(image), headers={"Content-Type": "application/octet-stream"})
    assert again.status_code == 200
    assert again.json()["image_id"] == uploaded["image_id"] and again.json()["cached"] is True
    assert "imseg_cache_hits_total" in client.get("/metrics").text


def test_point_prompt_matches_official_predictor(client, uploaded, official_predictor):
    from PIL import Image

    points, labels = [[60.5, 80.0], [150.0, 40.0]], [1, 0]
    response = client.post(
        f"/v1/images/{uploaded['image_id']}/segment",
        json={"points": points, "labels": labels, "formats": ["rle", "png", "polygons"], "return_logits": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ref_masks, ref_scores, ref_logits = official_predictor.predict(
        np.array(points, np.float32), np.array(labels), multimask_output=True
    )
    order = np.argsort(-ref_scores, kind="stable")
    assert len(body["masks"]) == 3 and body["best"] == 0
    np.testing.assert_allclose([m["score"] for m in body["masks"]], ref_scores[order], atol=1e-5)
    got = decode_rles(body["masks"])
    assert got.shape == (3, 160, 224)
    for k, i in enumerate(order):
        agree = (got[k] == ref_masks[i]).mean()
        assert agree > 0.999, f"mask {k} differs from the official predictor in {(1 - agree):.2%} of pixels"
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["masks"][k]["png"])))) > 127
        np.testing.assert_array_equal(png, got[k])
        assert body["masks"][k]["area"] == int(got[k].sum())
        logits = np.frombuffer(base64.b64decode(body["masks"][k]["low_res_logits"]), "<f4").reshape(256, 256)
        np.testing.assert_allclose(logits, ref_logits[i], atol=1e-3)
    # polygons of the best mask rasterise back to (nearly) the same mask
    from pycocotools import mask as mask_utils

    polys = body["masks"][0]["polygons"]
    if got[0].sum() > 50 and polys:
        raster = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 160, 224))).astype(bool)
        from scipy import ndimage

        filled = ndimage.binary_fill_holes(got[0])  # polygons are outer contours: holes are filled
        iou = (raster & filled).sum() / max(1, (raster | filled).sum())
        assert iou > 0.95


def test_polygons_are_the_outer_rings_of_masks_to_polygons(client, uploaded):
    """One polygon convention: the API's polygons are imseg.Masks.to_polygons outer rings (pixel corners)."""
    from imseg.masks import Masks

    response = client.post(f"/v1/images/{uploaded['image_id']}/segment",
                           json={"points": [[60.5, 80.0]], "labels": [1], "formats": ["rle", "polygons"]})
    assert response.status_code == 200, response.text
    body = response.json()
    dense = decode_rles(body["masks"])
    rings = Masks(dense).to_polygons()
    assert all(mask["polygons"] for mask in body["masks"])
    single = 0
    for k, mask in enumerate(body["masks"]):
        expected = [r["points"].reshape(-1).tolist() for r in rings[k] if not r["hole"]]
        assert mask["polygons"] == expected
        outer = [{"points": np.asarray(p).reshape(-1, 2), "hole": False} for p in mask["polygons"]]
        if len(outer) == 1:  # a single outline rasterises back to the mask with its holes filled
            from scipy import ndimage

            single += 1
            np.testing.assert_array_equal(Masks.polygons_to_mask(outer, dense.shape[1:]),
                                          ndimage.binary_fill_holes(dense[k]))
    assert single >= 1


def test_box_mask_input_single_mask_match_official(client, uploaded, official_predictor):
    box = [20.0, 30.0, 180.0, 140.0]
    first = client.post(f"/v1/images/{uploaded['image_id']}/segment",
                        json={"box": box, "multimask": False, "return_logits": True})
    assert first.status_code == 200, first.text
    masks = first.json()["masks"]
    assert len(masks) == 1
    ref, ref_scores, ref_logits = official_predictor.predict(box=np.array(box), multimask_output=False)
    assert (decode_rles(masks)[0] == ref[0]).mean() > 0.999
    assert masks[0]["score"] == pytest.approx(float(ref_scores[0]), abs=1e-5)
    # feed the low-res logits back as mask_input together with a point (iterative refinement)
    second = client.post(f"/v1/images/{uploaded['image_id']}/segment",
                         json={"points": [[100, 90]], "labels": [1], "mask_input": masks[0]["low_res_logits"],
                               "multimask": False})
    assert second.status_code == 200, second.text
    ref2, _, _ = official_predictor.predict(np.array([[100.0, 90.0]]), np.array([1]),
                                            mask_input=ref_logits[:1], multimask_output=False)
    assert (decode_rles(second.json()["masks"])[0] == ref2[0]).mean() > 0.999


def test_one_shot_everything_matches_official_generator(client, sam_model, image):
    from mobile_sam import SamAutomaticMaskGenerator

    response = client.post("/v1/segment", files={"file": ("x.png", encode(image), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "everything" and body["image_id"] is None
    records = SamAutomaticMaskGenerator(sam_model, **EVERYTHING).generate(image)
    records.sort(key=lambda r: -r["predicted_iou"])
    assert len(records) >= 1 and len(body["masks"]) == len(records)
    got = decode_rles(body["masks"])
    for k, rec in enumerate(records):
        assert body["masks"][k]["score"] == pytest.approx(rec["predicted_iou"], abs=1e-4)
        assert body["masks"][k]["stability_score"] == pytest.approx(rec["stability_score"], abs=1e-3)
        assert (got[k] == rec["segmentation"]).mean() > 0.999


def test_one_shot_with_prompts_and_everything_on_cached_image(client, uploaded, image, official_predictor):
    prompts = json.dumps({"points": [[60.5, 80.0]], "labels": [1], "multimask": False})
    response = client.post("/v1/segment", files={"file": ("x.png", encode(image), "image/png")}, data={"prompts": prompts})
    assert response.status_code == 200, response.text
    ref, _, _ = official_predictor.predict(np.array([[60.5, 80.0]]), np.array([1]), multimask_output=False)
    assert (decode_rles(response.json()["masks"])[0] == ref[0]).mean() > 0.999
    everything = client.post(f"/v1/images/{uploaded['image_id']}/segment", json={"mode": "everything"})
    assert everything.status_code == 200 and everything.json()["mode"] == "everything"


def test_ops_endpoints_and_metrics_text(client, uploaded):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["model"] == "mobile-sam" and ready["cache_items"] >= 1
    assert "SamPredictor" in client.get("/v1/models").json()["models"][0]["summary"]
    assert client.get("/v1/models").json()["models"][0]["everything"] is True
    assert "/v1/images/{image_id}/segment" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "app.js" in page.text and client.get("/static/app.js").status_code == 200
    text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    key = 'imseg_http_requests_total{method="POST",route="/v1/images/{image_id}/segment",status="200"}'
    assert samples[key] >= 1
    assert samples['imseg_http_request_duration_seconds_count{route="/v1/images"}'] >= 1
    assert samples["imseg_cache_items"] >= 1 and samples["imseg_cache_bytes"] > 4 * 256 * 64 * 64


# ============================================================================ abuse: every bad input is a clear 4xx
def truncated_jpeg(image: np.ndarray) -> bytes:
    data = encode(image, "JPEG", quality=90)
    return data[: len(data) // 2]


ABUSE = [
    # (name, method, path-or-None (uses image id), kwargs, expected status)
    ("non-image bytes", "/v1/images", dict(content=b"MZ\x90\x00 this is an executable, not an image"), 415),
    ("html named .png", "/v1/images", dict(files={"file": ("a.png", b"<html><body>hi</body></html>", "image/png")}), 415),
    ("empty body", "/v1/images", dict(content=b""), 422),
    ("empty multipart file", "/v1/images", dict(files={"file": ("a.png", b"", "image/png")}), 422),
    ("multipart without file", "/v1/images", dict(files={"other": ("a.png", b"x", "image/png")}), 422),
    ("0x0 PNG", "/v1/images", dict(content=png_header(0, 0)), 422),
    ("100000x100000 PNG", "/v1/images", dict(content=png_header(100_000, 100_000)), 413),
    ("PNG with only a signature", "/v1/images", dict(content=b"\x89PNG\r\n\x1a\n"), 422),
    ("truncated JPEG", "/v1/images", "TRUNCATED", 422),
    ("unknown image_id", "/v1/images/0123456789abcdef/segment", dict(json={"points": [[1, 1]]}), 404),
    ("malformed JSON", None, dict(content=b'{"points": [[1, 2]', headers={"Content-Type": "application/json"}), 422),
    ("JSON array body", None, dict(json=[1, 2, 3]), 422),
    ("NaN coordinate", None, dict(content=b'{"points": [[NaN, 2]]}', headers={"Content-Type": "application/json"}), 422),
    ("points outside the image", None, dict(json={"points": [[5000, 10]], "labels": [1]}), 422),
    ("negative point", None, dict(json={"points": [[-3, 10]], "labels": [1]}), 422),
    ("huge point list", None, dict(json={"points": [[1, 1]] * 100_000}), 422),
    ("more points than max_points", None, dict(json={"points": [[1, 1]] * 65, "labels": [1] * 65}), 422),
    ("labels count mismatch", None, dict(json={"points": [[1, 1], [2, 2]], "labels": [1]}), 422),
    ("label out of range", None, dict(json={"points": [[1, 1]], "labels": [7]}), 422),
    ("point with 3 coords", None, dict(json={"points": [[1, 1, 1]]}), 422),
    ("inverted box", None, dict(json={"box": [100, 100, 10, 10]}), 422),
    ("box outside", None, dict(json={"box": [900, 900, 1000, 1000]}), 422),
    ("no prompt", None, dict(json={}), 422),
    ("bad mask_input", None, dict(json={"points": [[1, 1]], "labels": [1], "mask_input": "not-base64!"}), 422),
    ("short mask_input", None,
     dict(json={"points": [[1, 1]], "labels": [1], "mask_input": base64.b64encode(b"\0" * 16).decode()}), 422),
    ("points without labels", None, dict(json={"points": [[1, 1], [2, 2]]}), 422),
    ("points with empty labels", None, dict(json={"points": [[1, 1]], "labels": []}), 422),
    ("one-shot empty prompts", "/v1/segment", "EMPTY_PROMPTS", 422),
    ("one-shot unknown field", "/v1/segment", "TYPO_FIELD", 422),
    ("one-shot prompts as a file", "/v1/segment", "PROMPTS_FILE", 422),
    ("everything with points", None, dict(json={"mode": "everything", "points": [[1, 1]]}), 422),
    ("unknown field", None, dict(json={"points": [[1, 1]], "pointz": 1}), 422),
    ("unknown format", None, dict(json={"points": [[1, 1]], "formats": ["gif"]}), 422),
    ("one-shot bad prompts JSON", "/v1/segment", "BAD_PROMPTS", 422),
]


ONE_SHOT_PROMPTS = json.dumps({"points": [[5, 5]], "labels": [1]})
ONE_SHOT_MISTAKES = {
    "EMPTY_PROMPTS": lambda png: dict(files={"file": ("x.png", png, "image/png")}, data={"prompts": ""}),
    "TYPO_FIELD": lambda png: dict(files={"file": ("x.png", png, "image/png")}, data={"prompt": ONE_SHOT_PROMPTS}),
    "PROMPTS_FILE": lambda png: dict(files={"file": ("x.png", png, "image/png"),
                                            "prompts": ("p.json", ONE_SHOT_PROMPTS.encode(), "application/json")}),
}


@pytest.mark.parametrize("name,path,kwargs,status", ABUSE, ids=[a[0] for a in ABUSE])
def test_abuse_is_a_clear_4xx_and_server_stays_up(client, uploaded, image, name, path, kwargs, status):
    if kwargs == "TRUNCATED":
        kwargs = dict(content=truncated_jpeg(image))
    elif kwargs == "BAD_PROMPTS":
        kwargs = dict(files={"file": ("x.png", encode(image[:32, :32]), "image/png")}, data={"prompts": "{not json"})
    elif isinstance(kwargs, str):
        kwargs = ONE_SHOT_MISTAKES[kwargs](encode(image[:32, :32]))
    path = path or f"/v1/images/{uploaded['image_id']}/segment"
    response = client.post(path, **kwargs)
    assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:imseg:problem:")
    assert len(body["detail"]) > 15 and "Traceback" not in body["detail"]
    assert client.get("/healthz").status_code == 200


def test_form_mistakes_are_named(client, image):
    """Unknown fields, empty prompts and prompts sent as a file say what to fix (no silent everything mode)."""
    png = encode(image[:32, :32])
    typo = client.post("/v1/segment", **ONE_SHOT_MISTAKES["TYPO_FIELD"](png))
    assert typo.status_code == 422 and "'prompt'" in typo.json()["detail"] and "'prompts'" in typo.json()["detail"]
    empty = client.post("/v1/segment", **ONE_SHOT_MISTAKES["EMPTY_PROMPTS"](png))
    assert empty.status_code == 422 and "'prompts' is empty" in empty.json()["detail"]
    as_file = client.post("/v1/segment", **ONE_SHOT_MISTAKES["PROMPTS_FILE"](png))
    assert as_file.status_code == 422 and "text form field" in as_file.json()["detail"]
    twice = client.post("/v1/segment?prompts=" + ONE_SHOT_PROMPTS, files={"file": ("x.png", png, "image/png")},
                        data={"prompts": ONE_SHOT_PROMPTS})
    assert twice.status_code == 422 and "once" in twice.json()["detail"]
    extra = client.post("/v1/images", files={"file": ("x.png", png, "image/png"), "thumb": ("t.png", png, "image/png")})
    assert extra.status_code == 422 and "'thumb'" in extra.json()["detail"]
    text_file = client.post("/v1/images", files={"file": (None, b"hello")})  # a text part, no file name
    assert text_file.status_code == 422 and "file part" in text_file.json()["detail"]
    two = client.post("/v1/images", files=[("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))])
    assert two.status_code == 422 and "one image per request" in two.json()["detail"]


def test_points_need_labels(client, uploaded):
    for body in ({"points": [[10, 10], [40, 40]]}, {"points": [[10, 10]], "labels": []}):
        response = client.post(f"/v1/images/{uploaded['image_id']}/segment", json=body)
        assert response.status_code == 422, response.text
        assert "without labels" in response.json()["detail"] and "1 = foreground" in response.json()["detail"]


def _asgi_post(app, path: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, dict, int]:
    """POST ``chunks`` to the ASGI ``app`` without a client (so the test sees how much of the body the
    app read): returns (status, JSON body, number of body chunks received)."""
    received = 0

    async def receive():
        nonlocal received
        if received < len(chunks):
            received += 1
            return {"type": "http.request", "body": chunks[received - 1], "more_body": received < len(chunks)}
        await asyncio.sleep(3600)  # the client waits for the answer

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "server": ("t", 80),
             "client": ("c", 1), "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}

    async def run():
        await asyncio.wait_for(app(scope, receive, send), 30)

    asyncio.run(run())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), received


def test_json_body_key_first_and_size_limit(sam_model, client, uploaded):
    app = create_app(sam_model, ServeSettings(api_key="s3cret", max_json_bytes=1024 * 1024))
    chunk = b" " * 65536
    path = "/v1/images/abc/segment"
    json_headers = {"content-type": "application/json"}
    # no key: 401 before a byte of a (declared 6 MB) body is read
    status, body, read = _asgi_post(app, path, [chunk] * 96, {**json_headers, "content-length": str(96 * 65536)})
    assert (status, read) == (401, 0) and "X-API-Key" in body["detail"]
    # key, declared length over the limit: 413 at once
    keyed = {**json_headers, "x-api-key": "s3cret"}
    status, body, read = _asgi_post(app, path, [chunk] * 96, {**keyed, "content-length": str(96 * 65536)})
    assert (status, read) == (413, 0) and "1,048,576" in body["detail"] and body["type"].endswith("body-too-large")
    # key, chunked (no length): reading stops just past the limit
    status, body, read = _asgi_post(app, path, [chunk] * 96, keyed)
    assert status == 413 and read == 17
    # under the limit, the request goes on to the endpoint (unknown id -> 404)
    status, _, _ = _asgi_post(app, path, [b'{"points": [[1, 1]], "labels": [1]}'], keyed)
    assert status == 404
    # the default limit takes a real request at its largest: max_points points and a mask_input
    mask_input = base64.b64encode(np.zeros((256, 256), "<f4").tobytes()).decode()
    body = {"points": [[1.123456789, 2.123456789]] * 64, "labels": [1] * 64, "mask_input": mask_input,
            "formats": ["rle", "png", "polygons"], "return_logits": True}
    response = client.post(f"/v1/images/{uploaded['image_id']}/segment", content=json.dumps(body, indent=4),
                           headers=json_headers)
    assert response.status_code == 200, response.text[:300]
    big = client.post(f"/v1/images/{uploaded['image_id']}/segment", content=b" " * (3 * 1024 * 1024) + b"{}",
                      headers=json_headers)
    assert big.status_code == 413 and big.headers["content-type"].startswith(PROBLEM)


def test_cache_that_cannot_hold_one_embedding(sam_model, image):
    from imseg.errors import ConfigError
    from imseg.serve.backend import SamBackend

    with pytest.raises(ConfigError, match=r"--cache-mb 24 or more"):
        create_app(sam_model, ServeSettings(cache_bytes=1024 * 1024))  # imseg serve --cache-mb 1
    create_app(sam_model, ServeSettings(cache_bytes=24 * 1024 * 1024))  # 4 MiB embedding + 20 MiB upload fit
    # a backend that cannot say its embedding size: a failed cache put is an explicit error, not a dead image_id
    backend = SamBackend.from_official(sam_model)
    backend.embedding_bytes = None
    with TestClient(create_app(backend, ServeSettings(cache_bytes=1024 * 1024))) as c:
        response = c.post("/v1/images", content=encode(image[:32, :32]))
        assert response.status_code == 507 and "--cache-mb" in response.json()["detail"]
        assert response.headers["content-type"].startswith(PROBLEM)
        one_shot = c.post("/v1/segment", files={"file": ("x.png", encode(image[:32, :32]), "image/png")},
                          data={"prompts": json.dumps({"points": [[5, 5]], "labels": [1]})})
        assert one_shot.status_code == 200 and one_shot.json()["image_id"] is None


def test_extreme_aspect_ratio_is_served(client):
    """A 1x3000 image (resized short side < 1 px before the clamp) uploads and segments (was a 500)."""
    up = client.post("/v1/images", content=encode(np.full((1, 3000, 3), 90, np.uint8)))
    assert up.status_code == 200, up.text
    seg = client.post(f"/v1/images/{up.json()['image_id']}/segment", json={"points": [[1500, 0.5]], "labels": [1]})
    assert seg.status_code == 200, seg.text
    assert seg.json()["masks"][0]["rle"]["size"] == [1, 3000]


def test_routing_errors_are_problems(client):
    for response, status in [(client.get("/nope"), 404), (client.get("/v1/images"), 405)]:
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/problem+json")


def test_upload_and_pixel_limits(sam_model, image):
    app = create_app(sam_model, ServeSettings(max_upload_bytes=2000, max_pixels=100 * 100))
    with TestClient(app) as c:
        big = c.post("/v1/images", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
        assert big.status_code == 413 and "2,000" in big.json()["detail"]
        multipart = c.post("/v1/images", files={"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 5000, "image/png")})
        assert multipart.status_code == 413
        pixels = c.post("/v1/images", content=encode(np.zeros((120, 120, 3), np.uint8)))
        assert pixels.status_code == 413 and "14,400" in pixels.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_api_key_and_cors(sam_model):
    secured = create_app(sam_model, ServeSettings(api_key="s3cret", cors_origins=["http://localhost:3000"]))
    with TestClient(secured) as c:
        denied = c.get("/v1/models")
        assert denied.status_code == 401 and denied.headers["content-type"].startswith("application/problem+json")
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/images", content=b"x").status_code == 401  # auth before any work
        assert c.get("/healthz").status_code == 200
        pre = c.options("/v1/models", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
        assert pre.headers.get("access-control-allow-origin") == "http://localhost:3000"
    with TestClient(create_app(sam_model)) as c:  # defaults: no key, CORS off
        response = c.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_busy_model_answers_503_with_retry_after(sam_model, image):
    app = create_app(sam_model, ServeSettings(queue_timeout=0.2))
    pool = app.state.pool
    with TestClient(app) as c:
        async def take():
            return await pool._current_queue().get()

        async def give(worker):
            pool._current_queue().put_nowait(worker)

        worker = c.portal.call(take)  # occupy the only model worker
        try:
            response = c.post("/v1/images", content=encode(image[:64, :64]))
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1 and "busy" in response.json()["detail"]
            assert c.get("/healthz").status_code == 200
        finally:
            c.portal.call(give, worker)
        assert "imseg_model_rejected_total 1" in c.get("/metrics").text


# ============================================================================ units: pool and cache
def test_worker_pool_queue_limit_and_run_timeout():
    release = threading.Event()

    async def scenario():
        pool = WorkerPool(["w"], max_queue=1, queue_timeout=5.0, run_timeout=0.3)
        slow = asyncio.create_task(pool.run(lambda w: release.wait(5) and w))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(pool.run(lambda w: w + "!"))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="queue is full"):  # one running, one waiting: the third is refused
            await pool.run(lambda w: w)
        with pytest.raises(RunTimeout):
            await slow
        release.set()  # the abandoned call finishes; only then does its worker go back to the pool
        assert await asyncio.wait_for(waiting, 5) == "w!"
        assert pool.timeouts == 1 and pool.rejected == 1

    asyncio.run(scenario())


def test_embedding_cache_is_lru_bounded_by_count_and_bytes():
    def emb(nbytes: int) -> Embedding:
        return Embedding(state={"features": np.zeros(nbytes // 4, np.float32)}, source=b"", height=1, width=1)

    cache = EmbeddingCache(max_items=2, max_bytes=1000)
    cache.put("a", emb(400))
    cache.put("b", emb(400))
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", emb(400))  # count limit: evicts b
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    cache.put("d", emb(800))  # byte limit: evicts until it fits
    assert len(cache) == 1 and cache.bytes == 800 and cache.evictions == 3
    assert cache.put("huge", emb(4000)) is False and cache.get("d") is not None
    assert (cache.hits, cache.misses) == (3, 1)


# ============================================================================ schema fuzzing
@pytest.mark.slow
def test_openapi_fuzzing_never_5xx(client):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures: list[str] = []
    def fuzz(op) -> None:
        # uploads that happen to be valid tiny GIF/BMP files run the real image encoder: fewer cases there
        @settings(max_examples=6 if op.method.lower() == "post" else 12, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(op.as_strategy())
        def check(case):
            response = case.call(timeout=120)
            if response.status_code >= 500:
                failures.append(f"{op.method.upper()} {op.path}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                ctype = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
                assert str(ctype[0] if isinstance(ctype, list) else ctype).startswith(PROBLEM), response.text[:200]

        check()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for op in operations:
        fuzz(op)
    assert not failures, "\n".join(failures)
    assert client.get("/healthz").status_code == 200
