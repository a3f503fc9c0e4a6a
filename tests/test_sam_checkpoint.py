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


@pytest.mark.slow
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


@pytest.fixture
def weights_server(tmp_path):
    """``serve(path) -> URL``: a local HTTP server on 127.0.0.1 (random port) serving files; stopped afterwards."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(path) -> str:
        shutil.copy(path, root / path.name)
        return f"http://127.0.0.1:{server.server_address[1]}/{path.name}"

    yield serve
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 at a port nothing listens on (a server that is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mobile_sam.pt"


def _point_weights_at(monkeypatch, url: str, sha256: str, size: int | None, name: str = "mobile-sam") -> None:
    """Make the registry entry of ``name`` (under all its aliases) download from ``url``."""
    import dataclasses

    from imseg import registry

    spec = registry.get_spec(name)
    moved = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, url=url, sha256=sha256, size=size))
    for key, value in list(registry.MODELS.items()):
        if value is spec:
            monkeypatch.setitem(registry.MODELS, key, moved)


def test_download_weights_checks_the_sha256(weights_server, tmp_path, monkeypatch):
    from imseg.errors import WeightsError
    from imseg.registry import download_weights, find_weights, sha256_file

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "cache"))
    payload = tmp_path / "mobile_sam.pt"
    payload.write_bytes(np.random.default_rng(0).bytes(3 * (1 << 20) + 17))
    url = weights_server(payload)
    _point_weights_at(monkeypatch, url, "0" * 64, payload.stat().st_size)
    with pytest.raises(WeightsError, match="checksum mismatch .* it was not kept") as err:
        download_weights("mobile-sam", progress=False)
    assert url in str(err.value) and sha256_file(payload) in str(err.value)
    assert find_weights("mobile-sam") is None and list((tmp_path / "cache").iterdir()) == []  # no partial file
    _point_weights_at(monkeypatch, url, sha256_file(payload), payload.stat().st_size)
    path = download_weights("mobile-sam", progress=False)
    assert path == find_weights("mobile-sam") and path.read_bytes() == payload.read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mobile_sam.pt"]
    _point_weights_at(monkeypatch, _closed_port_url(), sha256_file(payload), payload.stat().st_size)
    assert download_weights("mobile-sam", progress=False) == path  # cached: no request made
    with pytest.raises(WeightsError, match="could not download .* offline"):
        download_weights("mobile-sam", progress=False, force=True)
    assert path.read_bytes() == payload.read_bytes()  # a failed forced download keeps the good file


@pytest.mark.slow
def test_demo_downloads_the_official_weights(mobile_sam_checkpoint, weights_server, tmp_path, monkeypatch):
    """Online, the demo fetches the weights into the cache and segments with them (no random-weights banner)."""
    from skimage import data

    from imseg.registry import sha256_file
    from imseg.sam.demo import DEMO_PROMPTS, run_demo

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "cache"))
    url = weights_server(mobile_sam_checkpoint)
    _point_weights_at(monkeypatch, url, sha256_file(mobile_sam_checkpoint), mobile_sam_checkpoint.stat().st_size)
    lines: list[str] = []
    run_demo(out=tmp_path / "demo", images=("coffee",), device="cpu", echo=lines.append)
    assert any(url in line and "downloading" in line for line in lines)
    assert not any("RANDOM" in line or "failed" in line for line in lines)
    cached = tmp_path / "cache" / "mobile_sam.pt"
    assert cached.read_bytes() == mobile_sam_checkpoint.read_bytes()
    box = list(DEMO_PROMPTS["coffee"][1])
    expected = imseg.load("mobile-sam", checkpoint=mobile_sam_checkpoint, device="cpu").segment(data.coffee(), box=box)
    written = imseg.read_image(tmp_path / "demo" / "coffee_box_mask.png")[:, :, 0] > 0
    np.testing.assert_array_equal(written, expected.masks[0])


@pytest.mark.slow
def test_demo_command_writes_overlays(mobile_sam_checkpoint, tmp_path, monkeypatch):
    """Offline (the weights server is down) the demo says so and runs with random weights under the banner."""
    from typer.testing import CliRunner

    from imseg.cli import app

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "cache"))
    _point_weights_at(monkeypatch, _closed_port_url(), "0" * 64, None)
    result = CliRunner().invoke(app, ["demo", "--model", "mobile-sam", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "the download failed, so the demo continues offline: could not download" in result.output
    assert "WEIGHTS ARE RANDOM" in result.output and "imseg weights download mobile-sam" in result.output
    files = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert "astronaut_point_overlay.png" in files and "coffee_box_mask.png" in files and len(files) == 8
    mask = imseg.read_image(tmp_path / "demo" / "coffee_box_mask.png")
    assert mask.shape == (400, 600, 3)
    from imseg.sam.demo import run_demo

    lines: list[str] = []
    run_demo("mobile-sam", checkpoint=mobile_sam_checkpoint, out=tmp_path / "demo2", images=(), echo=lines.append)
    assert lines and not any("RANDOM" in line for line in lines)
