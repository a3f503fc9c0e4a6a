"""`imseg serve --model RUN` serves an `imseg finetune` run directory: the app the command builds (caught before
uvicorn starts) answers a box prompt with the masks and scores of ``imseg.load(RUN).segment`` on the same image."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from imseg.finetune.train import finetune  # noqa: E402


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    root = data_dir / "weizmann-horse"
    if not root.is_dir():
        pytest.skip("weizmann-horse not present")
    tmp = tmp_path_factory.mktemp("ft-serve")
    data = {"path": str(root), "train": ["horse001", "horse002", "horse003", "horse004"],
            "val": ["horse009", "horse012"]}
    result = finetune(data=data, model="mobile-sam", random_init=True, imgsz=64, epochs=1, batch=2, lr=1e-3,
                      precision="32", clicks=1, project=str(tmp / "runs"), cache_dir=str(tmp / "cache"),
                      progress=False, warmup=0.0)
    return result.run_dir, root / "images" / "horse009.jpg"


def _served_app(run_dir, monkeypatch):
    from typer.testing import CliRunner

    from imseg.cli import app

    built = {}
    monkeypatch.setattr("uvicorn.run", lambda application, **kwargs: built.setdefault("app", application))
    out = CliRunner().invoke(app, ["serve", "--model", str(run_dir), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    return built["app"]


def _decode(masks: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = [{"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()} for m in masks]
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


@pytest.mark.parametrize("multimask", [False, True])
def test_serve_answers_a_box_prompt_as_the_loaded_run(run, monkeypatch, multimask):
    from PIL import Image

    import imseg

    run_dir, photo = run
    image = imseg.read_image(photo)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    box = [40.0, 30.0, 250.0, 180.0]
    expected = imseg.load(run_dir, device="cpu").segment(image, box=box, multimask=multimask)
    with TestClient(_served_app(run_dir, monkeypatch)) as client:
        uploaded = client.post("/v1/images", files={"file": ("horse.png", png.getvalue(), "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        response = client.post(f"/v1/images/{uploaded.json()['image_id']}/segment",
                               json={"box": box, "multimask": multimask})
    assert response.status_code == 200, response.text
    masks = response.json()["masks"]
    assert len(masks) == len(expected) == (3 if multimask else 1)
    np.testing.assert_allclose([m["score"] for m in masks], expected.scores, atol=1e-5)
    np.testing.assert_array_equal(_decode(masks), np.asarray(expected.masks, bool))
