"""`imseg serve` as a user starts it: a real process on a loopback port, answering HTTP."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_imseg_serve_process(mobile_sam_checkpoint, sample_image, tmp_path):
    port = _free_port()
    env = {**os.environ, "IMSEG_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "imseg.cli", "serve", "--model", "mobile-sam", "--checkpoint",
           str(mobile_sam_checkpoint), "--port", str(port), "--api-key", "s3cret"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"imseg serve exited early:\n{proc.stdout.read()}"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "imseg serve did not answer /healthz within 120 s"
            time.sleep(0.5)
        buf = io.BytesIO()
        Image.fromarray(sample_image).save(buf, format="PNG")
        denied = httpx.post(f"{base}/v1/images", content=buf.getvalue(), timeout=60)
        assert denied.status_code == 401 and denied.headers["content-type"].startswith("application/problem+json")
        headers = {"X-API-Key": "s3cret"}
        uploaded = httpx.post(f"{base}/v1/images", content=buf.getvalue(), headers=headers, timeout=120)
        assert uploaded.status_code == 200, uploaded.text
        info = uploaded.json()
        assert (info["height"], info["width"]) == sample_image.shape[:2]
        seg = httpx.post(f"{base}/v1/images/{info['image_id']}/segment", headers=headers, timeout=120,
                         json={"points": [[128, 100]], "labels": [1]})
        assert seg.status_code == 200, seg.text
        body = seg.json()
        assert len(body["masks"]) >= 1 and np.isfinite(body["masks"][0]["score"])
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert "imseg" in metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_imseg_serve_refuses_a_cache_smaller_than_one_embedding(mobile_sam_checkpoint, tmp_path, monkeypatch):
    """`--cache-mb 1` would make every uploaded image_id unusable: refused at startup, before serving."""
    from typer.testing import CliRunner

    from imseg.cli import app

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: None)  # never serve: a missed check exits 0
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(mobile_sam_checkpoint), "--cache-mb", "1",
                                      "--port", str(_free_port()), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--cache-mb 24 or more" in result.output and "Traceback" not in result.output
