"""Checkpoint loading: wrong variant, corrupted/truncated/empty/missing files, weights cache, random weights."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import imseg  # noqa: E402
from imseg.errors import CheckpointError  # noqa: E402
from imseg.sam import sam_model_registry  # noqa: E402
from imseg.sam.checkpoint import build_sam, detect_variant, read_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def reduced_vit_b_checkpoint(tmp_path_factory):
    """A 2-block vit_b checkpoint saved by imseg itself (cheap stand-in for the 375 MB file)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "sam_vit_b_depth2.pth"
    torch.save(build_sam("vit_b", depth=2, global_attn_indexes=(1,)).state_dict(), path)
    return path


def test_checkpoint_of_another_variant_names_both(mobile_sam_checkpoint, reduced_vit_b_checkpoint):
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_b", mobile_sam_checkpoint, depth=2, global_attn_indexes=(1,))
    msg = str(err.value)
    assert "vit_t" in msg and "vit_b" in msg and "imseg weights download sam-vit-b" in msg
    with pytest.raises(CheckpointError) as err:
        sam_model_registry["vit_t"](checkpoint=reduced_vit_b_checkpoint)
    msg = str(err.value)
    assert "vit_t" in msg and "embed_dim 768, depth 2" in msg and "missing keys" in msg


def test_reduced_checkpoint_round_trip(reduced_vit_b_checkpoint):
    sd = read_state_dict(reduced_vit_b_checkpoint)
    assert detect_variant(sd) == "custom ViT (embed_dim 768, depth 2)"
    model = build_sam("vit_b", reduced_vit_b_checkpoint, depth=2, global_attn_indexes=(1,))
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    with pytest.raises(CheckpointError, match="does not match the vit_b architecture"):
        build_sam("vit_b", reduced_vit_b_checkpoint, depth=3, global_attn_indexes=(1,))


def test_bad_checkpoint_files(mobile_sam_checkpoint, tmp_path):
    data = mobile_sam_checkpoint.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("<html>404 Not Found</html>")
    for name in ("truncated.pt", "garbage.pth", "text.pth"):
        with pytest.raises(CheckpointError, match="corrupted, truncated or not a checkpoint|not a loadable") as err:
            sam_model_registry["vit_t"](checkpoint=tmp_path / name)
        assert f"{type(err.value.__cause__).__name__}: {err.value.__cause__}" in str(err.value)  # quoted whole
    with pytest.raises(CheckpointError, match="empty file"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="imseg weights download"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "nowhere.pth")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "meta.pth")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="vit_t"):
        sam_model_registry["vit_t"](checkpoint=tmp_path / "other.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a checkpoint that would run arbitrary code is rejected, not executed."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"image_encoder.pos_embed": Payload()}, fh)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(tmp_path / "evil.pth")
    torch_message = str(err.value.__cause__)
    assert len(torch_message) > 200 and torch_message in str(err.value)  # PyTorch's explanation, not cut short


def test_checkpoint_saved_from_ddp_loads(mobile_sam_checkpoint, sample_image, tmp_path):
    """Every key prefixed ``module.`` (DistributedDataParallel) or ``module._orig_mod.``: the prefix is removed."""
    state_dict = torch.load(mobile_sam_checkpoint, map_location="cpu", weights_only=True)
    reference = imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu")
    expected = reference.segment(sample_image, points=[(128, 100)], labels=[1])
    for prefix in ("module.", "module._orig_mod."):
        path = tmp_path / "ddp.pt"
        torch.save({"model": {prefix + k: v for k, v in state_dict.items()}, "epoch": 3}, path)
        model = imseg.load("mobile-sam", checkpoint=path, device="cpu")
        masks = model.segment(sample_image, points=[(128, 100)], labels=[1])
        np.testing.assert_array_equal(masks.masks, expected.masks)
        np.testing.assert_array_equal(masks.scores, expected.scores)


def test_checkpoint_with_prefix_on_some_keys_is_named(mobile_sam_checkpoint, tmp_path):
    state_dict = torch.load(mobile_sam_checkpoint, map_location="cpu", weights_only=True)
    keys = sorted(state_dict)
    mixed = {("module." + k if i % 2 else k): state_dict[k] for i, k in enumerate(keys)}
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"carry the prefix 'module\.' .* ambiguous") as err:
        build_sam("vit_t", tmp_path / "mixed.pt")
    assert f"{len(keys) // 2} of its {len(keys)} keys" in str(err.value)
    torch.save({"module.weights": torch.zeros(3), "module.bias": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a SAM checkpoint .*keys start with module\. \(2 of 2\)"):
        build_sam("vit_t", tmp_path / "other.pt")


def test_segmenter_weights_lookup(mobile_sam_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="imseg weights download mobile-sam") as err:
        imseg.load("mobile-sam", device="cpu")
    assert "--checkpoint PATH" in str(err.value)
    with pytest.warns(UserWarning, match="WEIGHTS ARE RANDOM"):
        random_model = imseg.load("mobile-sam", device="cpu", allow_random=True)
    assert random_model.random_weights and random_model.supports_prompts
    (tmp_path / "cache").mkdir()
    shutil.copy(mobile_sam_checkpoint, tmp_path / "cache" / "mobile_sam.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cached = imseg.load("mobile-sam", device="cpu")
    assert not cached.random_weights and cached.checkpoint.endswith("mobile_sam.pt")
    with pytest.raises(imseg.errors.ConfigError, match="unknown options"):
        imseg.load("mobile-sam", device="cpu", colour="red")
    with pytest.raises(imseg.errors.ConfigError, match="device"):
        imseg.load("mobile-sam", device="tpu")
    from imseg.sam.segmenter import resolve_device

    for device, match in [("mps", "MPS"), ("meta", "device must be"), ("cuda:99", "cuda")]:
        if device == "mps" and torch.backends.mps.is_available():
            continue
        with pytest.raises(imseg.errors.ConfigError, match=match):
            resolve_device(device)


def test_demo_command_writes_overlays(mobile_sam_checkpoint, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imseg.cli import app

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["demo", "--model", "mobile-sam", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "WEIGHTS ARE RANDOM" in result.output and "imseg weights download mobile-sam" in result.output
    files = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert "astronaut_point_overlay.png" in files and "coffee_box_mask.png" in files and len(files) == 8
    mask = imseg.read_image(tmp_path / "demo" / "coffee_box_mask.png")
    assert mask.shape == (400, 600, 3)
    from imseg.sam.demo import run_demo

    lines: list[str] = []
    run_demo("mobile-sam", checkpoint=mobile_sam_checkpoint, out=tmp_path / "demo2", images=(), echo=lines.append)
    assert lines and not any("RANDOM" in line for line in lines)
