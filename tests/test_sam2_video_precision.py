"""The SAM 2.1 video predictor in bfloat16 (``precision="bf16"``/``"auto"``): the Hiera encoder (and, on AMX CPUs,
the memory attention) run in bfloat16 and the masks of a tracked object stay those of exact float32; the option's
errors.
A 64 px model keeps this fast; the speed is measured in benchmarks/sam2_video.py."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imseg.errors import ConfigError  # noqa: E402
from imseg.precision import logit_mask_iou  # noqa: E402
from imseg.sam2 import build_sam2_video_predictor  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SIZE = ["++model.image_size=64"]
FRAMES = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights with every parameter perturbed (none left at zero), saved as the official files are."""
    torch.manual_seed(0)
    model = build_sam2_video_predictor(CONFIG, device="cpu", hydra_overrides_extra=SIZE).model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)  # the objects stay present
    path = tmp_path_factory.mktemp("sam2_bf16") / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Eight 96x64 JPEG frames: a bright square moving right over a textured background."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("square")
    rng = np.random.default_rng(0)
    background = rng.integers(0, 90, (64, 96, 3), dtype=np.uint8)
    for i in range(FRAMES):
        img = background.copy()
        img[18:46, 8 + 4 * i:36 + 4 * i] = 230
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def track(predictor, frames) -> dict[int, np.ndarray]:
    state = predictor.init_state(str(frames))
    predictor.add_new_points_or_box(state, 0, 1, points=np.array([[22, 32]], np.float32), labels=np.array([1]))
    predictor.add_new_points_or_box(state, 3, 2, box=np.array([60, 5, 95, 60], np.float32))
    return {f: logits[:, 0].numpy().copy() for f, _ids, logits in predictor.propagate_in_video(state)}


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_tracking_keeps_the_float32_masks(checkpoint, frames, monkeypatch, amx):
    import imseg.precision

    flags = imseg.precision.cpu_flags() - {"amx_bf16"} | ({"amx_bf16"} if amx else set())
    monkeypatch.setattr(imseg.precision, "cpu_flags", lambda: flags)
    exact = build_sam2_video_predictor(CONFIG, checkpoint, device="cpu", hydra_overrides_extra=SIZE)
    fast = build_sam2_video_predictor(CONFIG, checkpoint, device="cpu", hydra_overrides_extra=SIZE,
                                      precision="bf16")
    assert (exact.precision, fast.precision) == ("fp32", "bf16")
    model = fast.model
    assert next(model.image_encoder.parameters()).dtype == torch.bfloat16
    # the memory attention in bfloat16 where AMX makes its products faster, in float32 elsewhere
    assert next(model.memory_attention.parameters()).dtype == (torch.bfloat16 if amx else torch.float32)
    assert next(model.sam_mask_decoder.parameters()).dtype == torch.float32
    assert next(model.memory_encoder.parameters()).dtype == torch.float32
    with torch.inference_mode():
        ref, got = track(exact, frames), track(fast, frames)
    assert sorted(ref) == sorted(got) == list(range(FRAMES))
    scale = max(float(np.abs(ref[f]).max()) for f in ref)
    for f in ref:
        assert got[f].dtype == np.float32 and got[f].shape == ref[f].shape
        assert not np.array_equal(got[f], ref[f])  # bfloat16 really ran
        for obj in range(ref[f].shape[0]):
            # pixels the float32 answer is confident about (away from zero by 10 % of the largest logit)
            assert logit_mask_iou(ref[f][obj], got[f][obj], margin=0.1 * scale) >= 0.99, (f, obj)
        assert np.abs(got[f] - ref[f]).max() <= 0.25 * scale, f


def test_auto_follows_the_cpu_rule(checkpoint, monkeypatch):
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "0")
    assert build_sam2_video_predictor(CONFIG, checkpoint, device="cpu", hydra_overrides_extra=SIZE,
                                      precision="auto").precision == "fp32"
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "1")
    assert build_sam2_video_predictor(CONFIG, checkpoint, device="cpu", hydra_overrides_extra=SIZE,
                                      precision="auto").precision == "bf16"


@pytest.mark.parametrize(("options", "words"), [
    ({"precision": "int8"}, "int8"),
    ({"precision": "bf16", "mode": "train"}, "inference option"),
    ({"precision": "half"}, "precision must be one of"),
])
def test_precision_errors_are_clear(checkpoint, options, words):
    with pytest.raises(ConfigError, match=words):
        build_sam2_video_predictor(CONFIG, checkpoint, device="cpu", hydra_overrides_extra=SIZE, **options)
