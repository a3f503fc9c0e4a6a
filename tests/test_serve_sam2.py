"""`imseg serve` with SAM 2.1 on torch: started as the CLI starts it (uvicorn replaced by a catcher of the
app), then uploads and prompts over HTTP give what ``imseg.load(...).segment`` gives on the same checkpoint."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("sam2.build_sam")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import imseg  # noqa: E402
from conftest import build_official_sam2  # noqa: E402
from imseg.cli import app as cli_app  # noqa: E402
from imseg.io import read_image  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_rles(masks: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = [{"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()} for m in masks]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def serve_app(model: str, tmp_path, monkeypatch, *args: str):
    """The app `imseg serve --model MODEL ARGS` would serve, and the CLI result."""
    caught = {}
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path))
    monkeypatch.setattr("uvicorn.run", lambda application, **kwargs: caught.setdefault("app", application))
    result = CliRunner().invoke(cli_app, ["serve", "--model", model, "--port", str(_free_port()), "--device", "cpu",
                                          *args])
    return caught.get("app"), result


def check_served_like_segmenter(application, segmenter, image: np.ndarray) -> None:
    """Upload, then point / box prompts over HTTP: same masks and scores as ``segmenter.segment``."""
    with TestClient(application) as client:
        upload = client.post("/v1/images", files={"file": ("frame.png", png_bytes(image), "image/png")})
        assert upload.status_code == 200, upload.text
        image_id = upload.json()["image_id"]
        for body, kwargs in (
            ({"points": [[480, 270], [200, 400]], "labels": [1, 0], "multimask": True},
             {"points": [(480, 270), (200, 400)], "labels": [1, 0], "multimask": True}),
            ({"box": [300, 150, 700, 450], "multimask": False}, {"box": (300, 150, 700, 450)}),
        ):
            response = client.post(f"/v1/images/{image_id}/segment", json=body)
            assert response.status_code == 200, response.text
            masks = response.json()["masks"]
            ref = segmenter.segment(image, **kwargs)
            got = decode_rles(masks)
            assert got.shape == (len(ref), *image.shape[:2])
            np.testing.assert_allclose([m["score"] for m in masks], ref.scores, atol=1e-4)
            for a, b in zip(got, ref.masks, strict=True):
                assert (a == b).mean() > 0.999


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2serve") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_official_sam2("t").state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def image(data_dir):
    path = data_dir / "video-bedroom" / "00000.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


@pytest.mark.slow
def test_serve_sam2_torch(checkpoint, image, tmp_path, monkeypatch):
    application, result = serve_app("sam2.1-hiera-t", tmp_path, monkeypatch, "--checkpoint", str(checkpoint))
    assert result.exit_code == 0, result.output
    assert application is not None
    segmenter = imseg.load("sam2.1-hiera-t", checkpoint=checkpoint, device="cpu")
    check_served_like_segmenter(application, segmenter, image)


@pytest.mark.slow
def test_serve_sam2_cache_must_hold_the_high_res_features(checkpoint, tmp_path, monkeypatch):
    """A SAM 2.1 embedding is 16 MiB with its high-resolution features: a smaller cache is refused at startup."""
    _, result = serve_app("sam2.1-hiera-t", tmp_path, monkeypatch, "--checkpoint", str(checkpoint),
                          "--cache-mb", "16", "--max-upload-mb", "1")
    assert result.exit_code == 2, result.output
    assert "--cache-mb 17 or more" in result.output and "Traceback" not in result.output


def test_serve_still_refuses_non_sam_models(tmp_path, monkeypatch):
    _, result = serve_app("otsu", tmp_path, monkeypatch)
    assert result.exit_code == 2 and "not a Segment Anything model" in result.output
