"""The server under client misbehaviour and load: disconnects, slow mask encoding, loose JSON types,
out-of-range mask_input, and a burst of large junk uploads (memory)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import build_official_sam  # noqa: E402
from imseg.serve.app import ServeSettings, create_app  # noqa: E402

TESTS_DIR = Path(__file__).parent


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def metric_samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="module")
def sam_model():
    return build_official_sam("vit_t")


@pytest.fixture(scope="module")
def client(sam_model):
    with TestClient(create_app(sam_model)) as c:
        yield c


@pytest.fixture(scope="module")
def image_id(client, sample_image) -> str:
    response = client.post("/v1/images", content=encode_png(sample_image[:96, :128]))
    assert response.status_code == 200, response.text
    return response.json()["image_id"]


# ============================================================================ client disconnects mid-upload
def _post_then_disconnect(app, path: str, first_chunk: bytes, declared: int) -> list[dict]:
    """Send one body chunk of a ``declared``-byte upload, then report the client gone; returns what the app sent."""
    messages = iter([{"type": "http.request", "body": first_chunk, "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        try:
            return next(messages)
        except StopIteration:
            return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(declared).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "server": ("t", 80),
             "client": ("c", 1), "headers": headers}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))  # must not raise: a disconnect is no server error
    return sent


def test_client_disconnect_mid_upload_is_a_499_and_one_log_line(sam_model, caplog):
    app = create_app(sam_model)
    with caplog.at_level(logging.DEBUG):
        for path in ("/v1/images", "/v1/segment"):
            _post_then_disconnect(app, path, b"\x89PNG\r\n\x1a\n" + b"\0" * 1000, declared=200_000)
    with TestClient(app) as c:
        samples = metric_samples(c.get("/metrics").text)
    for route in ("/v1/images", "/v1/segment"):
        assert samples.get(f'imseg_http_requests_total{{method="POST",route="{route}",status="499"}}') == 1
        assert f'imseg_http_requests_total{{method="POST",route="{route}",status="500"}}' not in samples
    assert not [r for r in caplog.records if r.exc_info], "a client disconnect is logged with a traceback"
    gone = [r for r in caplog.records if "disconnect" in r.getMessage()]
    assert len(gone) == 2 and all(r.levelno <= logging.WARNING for r in gone), [r.getMessage() for r in gone]
    assert "1,008" in gone[0].getMessage()  # how far the upload got


def test_client_disconnect_mid_json_body_is_a_499(sam_model, caplog):
    app = create_app(sam_model)
    with caplog.at_level(logging.DEBUG):
        _post_then_disconnect(app, "/v1/images/abc/segment", b'{"points": [[1, ', declared=10_000)
    with TestClient(app) as c:
        samples = metric_samples(c.get("/metrics").text)
    assert samples.get('imseg_http_requests_total{method="POST",route="/v1/images/{image_id}/segment",status="499"}') == 1
    assert not [r for r in caplog.records if r.exc_info]
    assert len([r for r in caplog.records if "disconnect" in r.getMessage()]) == 1


# ============================================================================ mask encoding off the event loop
def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_mask_encoding_runs_off_the_event_loop(client, image_id, monkeypatch):
    from imseg.masks import Masks

    calls: list[tuple[str, bool]] = []
    to_rle, to_polygons = Masks.to_rle, Masks.to_polygons

    def spy_rle(self):
        calls.append(("rle", _on_event_loop()))
        return to_rle(self)

    def spy_polygons(self, *args, **kwargs):
        calls.append(("polygons", _on_event_loop()))
        return to_polygons(self, *args, **kwargs)

    monkeypatch.setattr(Masks, "to_rle", spy_rle)
    monkeypatch.setattr(Masks, "to_polygons", spy_polygons)
    response = client.post(f"/v1/images/{image_id}/segment",
                           json={"points": [[40, 30]], "labels": [1], "formats": ["rle", "png", "polygons"]})
    assert response.status_code == 200, response.text
    assert {name for name, _ in calls} == {"rle", "polygons"}
    assert not any(on_loop for _, on_loop in calls), calls


def test_healthz_answers_while_masks_are_encoded(client, image_id, monkeypatch):
    from imseg.masks import Masks

    started, release = threading.Event(), threading.Event()
    to_rle = Masks.to_rle

    def slow_rle(self):
        started.set()
        release.wait(30)
        return to_rle(self)

    monkeypatch.setattr(Masks, "to_rle", slow_rle)
    safety = threading.Timer(30, release.set)  # never hang the suite if the encoder blocks the loop
    safety.start()
    try:
        with ThreadPoolExecutor(1) as ex:
            segment = ex.submit(client.post, f"/v1/images/{image_id}/segment", json={"points": [[40, 30]], "labels": [1]})
            assert started.wait(30), "the segment request never reached mask encoding"
            health = client.get("/healthz")
            answered_during_encode = not release.is_set()
            release.set()
            assert segment.result(60).status_code == 200
        assert health.status_code == 200 and answered_during_encode
    finally:
        safety.cancel()
        release.set()


# ============================================================================ strict prompt types
@pytest.mark.parametrize("body,where", [
    ({"points": [["1", 2]], "labels": [1]}, "points.0.0"),
    ({"points": [[True, 2]], "labels": [1]}, "points.0.0"),
    ({"points": [[1, 2]], "labels": [True]}, "labels.0"),
    ({"points": [[1, 2]], "labels": ["1"]}, "labels.0"),
    ({"box": ["1", 2, 30, 40]}, "box.0"),
    ({"box": [1, 2, 30, False]}, "box.3"),
], ids=["string x", "bool x", "bool label", "string label", "string box", "bool box"])
def test_coordinates_and_labels_must_be_json_numbers(client, image_id, body, where):
    response = client.post(f"/v1/images/{image_id}/segment", json=body)
    assert response.status_code == 422, response.text
    assert where in response.json()["detail"]
    one_shot = client.post("/v1/segment", files={"file": ("x.png", encode_png(np.zeros((8, 8, 3), np.uint8)))},
                           data={"prompts": json.dumps(body)})
    assert one_shot.status_code == 422 and f"prompts.{where}" in one_shot.json()["detail"]


def test_mask_input_out_of_range_is_named(client, image_id):
    logits = np.zeros((256, 256), "<f4")
    logits[10, 20] = 3e38
    response = client.post(f"/v1/images/{image_id}/segment",
                           json={"points": [[40, 30]], "labels": [1], "mask_input": base64.b64encode(logits.tobytes()).decode()})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "mask_input" in detail and "NaN" not in detail.replace("NaN or inf", ""), detail
    logits[10, 20] = 40.0  # an ordinary logit is served
    ok = client.post(f"/v1/images/{image_id}/segment",
                     json={"points": [[40, 30]], "labels": [1], "mask_input": base64.b64encode(logits.tobytes()).decode()})
    assert ok.status_code == 200, ok.text


# ============================================================================ upload memory budget
def test_upload_over_the_memory_budget_waits_then_answers_503(sam_model, sample_image):
    body_limit = 100_000 + 64 * 1024
    settings = ServeSettings(max_upload_bytes=100_000, upload_memory_bytes=2 * body_limit, queue_timeout=0.3)
    app = create_app(sam_model, settings)
    budget = app.state.serve.uploads
    png = encode_png(sample_image[:32, :32])
    with TestClient(app) as c:
        held = budget.reserve(budget.total)  # other uploads in flight hold the whole budget
        c.portal.call(held.__aenter__)
        try:
            refused = c.post("/v1/images", content=png)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["type"] == "urn:imseg:problem:uploads-busy" and "retry" in refused.json()["detail"]
            assert c.get("/healthz").status_code == 200
        finally:
            c.portal.call(held.__aexit__, None, None, None)
        assert c.post("/v1/images", content=png).status_code == 200
        assert budget.held == 0  # every reservation was given back, refused or served
        samples = metric_samples(c.get("/metrics").text)
        assert samples["imseg_upload_rejected_total"] == 1 and samples["imseg_upload_bytes_reserved"] == 0


def test_upload_memory_setting_must_hold_one_upload():
    from imseg.errors import ConfigError

    with pytest.raises(ConfigError, match="upload_memory_bytes=1,000 cannot hold one upload"):
        ServeSettings(max_upload_bytes=10_000, upload_memory_bytes=1000)
    assert ServeSettings(max_upload_bytes=10_000).upload_memory == 4 * (10_000 + 64 * 1024)


# ============================================================================ memory under a burst of large uploads
SERVER = """
import sys
sys.path.insert(0, {tests!r})
import uvicorn
from conftest import build_official_sam
from imseg.serve import ServeSettings, create_app
uvicorn.run(create_app(build_official_sam("vit_t"), ServeSettings()), host="127.0.0.1", port={port}, log_level="error")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
def test_burst_of_large_junk_uploads_has_bounded_memory():
    """40 concurrent 19 MB junk uploads: the server's peak RSS grows by far less than 40 bodies."""
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(TESTS_DIR), port=port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    junk = b"\x89PNG\r\n\x1a\n" + os.urandom(19 * 1024 * 1024)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 120 s"
            time.sleep(0.3)
        assert httpx.post(f"{base}/v1/images", content=junk, timeout=60).status_code == 422  # warm the upload path
        before = _peak_rss_mib(proc.pid)

        def upload(_: int) -> int:
            for _attempt in range(60):
                response = httpx.post(f"{base}/v1/images", content=junk, timeout=120)
                if response.status_code != 503:
                    return response.status_code
                time.sleep(float(response.headers.get("retry-after", "1")))
            return 503

        with ThreadPoolExecutor(40) as ex:
            statuses = list(ex.map(upload, range(40)))
        growth = _peak_rss_mib(proc.pid) - before
        print(f"peak RSS before the burst {before:.0f} MiB, growth {growth:.0f} MiB")
        assert statuses == [422] * 40, statuses
        assert growth < 300, f"peak RSS grew by {growth:.0f} MiB under 40 concurrent 19 MB uploads"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
