"""imseg.sam2 loads the official SAM 2.1 checkpoints strictly, and refuses wrong files with clear errors.

The official model (``sam2`` package, random weights, every all-equal parameter perturbed) is saved
as the official files are, ``{"model": state_dict}``, and loaded with ours.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2.build_sam")

from conftest import build_official_sam2  # noqa: E402
from imseg.errors import CheckpointError, ConfigError  # noqa: E402
from imseg.sam2 import build_model, build_sam2, build_sam2_model  # noqa: E402
from imseg.sam2.config import variant_of  # noqa: E402

VARIANTS = ("t", "s", "b+", "l")


@pytest.fixture(scope="module")
def official_tiny():
    return build_official_sam2("t")


@pytest.fixture(scope="module")
def tiny_checkpoint(make_sam2_checkpoint):
    return make_sam2_checkpoint("t")  # the weights of ``official_tiny``: one seed, one builder


def test_official_checkpoint_loads_strictly(official_tiny, tiny_checkpoint):
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", tiny_checkpoint, device="cpu")
    ours, ref = model.state_dict(), official_tiny.state_dict()
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert torch.equal(ours[key], value), key
    assert not model.training


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_key_layout_matches_official(variant):
    from sam2.build_sam import build_sam2 as official_build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = official_build(f"configs/sam2.1/sam2.1_hiera_{variant}.yaml", None, device="cpu").state_dict()
    with torch.device("meta"):
        ours = build_model(f"hiera_{variant}").state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


@pytest.mark.parametrize("name, expected", [
    ("configs/sam2.1/sam2.1_hiera_t.yaml", "hiera_t"), ("sam2.1_hiera_s.yaml", "hiera_s"),
    ("configs/sam2.1/sam2.1_hiera_b+.yaml", "hiera_b+"), ("sam2.1_hiera_l", "hiera_l"),
    ("sam2.1-hiera-b+", "hiera_b+"), ("hiera_t", "hiera_t"),
])
def test_official_config_names(name, expected):
    assert variant_of(name) == expected


def test_sam2_0_and_unknown_configs_are_refused():
    with pytest.raises(ConfigError, match="SAM 2.0 config"):
        variant_of("configs/sam2/sam2_hiera_t.yaml")
    with pytest.raises(ConfigError, match="unknown SAM 2.1 config"):
        variant_of("configs/sam2.1/sam2.1_hiera_xl.yaml")


def test_missing_empty_directory_and_truncated_files(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="not found"):
        build_sam2_model("hiera_t", tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        build_sam2_model("hiera_t", tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        build_sam2_model("hiera_t", empty)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match="corrupted, truncated"):
        build_sam2_model("hiera_t", truncated)


def test_other_size_checkpoint_names_both_variants(tmp_path):
    small = tmp_path / "sam2.1_hiera_small.pt"
    # only the key shapes of another size matter here: imseg's own random hiera_s, cheaper than the official
    torch.save({"model": build_model("hiera_s").state_dict()}, small)
    with pytest.raises(CheckpointError, match="for SAM 2.1 hiera_s, but the model being built is hiera_t"):
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", small, device="cpu")


def test_sam1_and_non_checkpoints_are_refused(tmp_path):
    sam1 = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, sam1)
    with pytest.raises(CheckpointError, match="SAM 1"):
        build_sam2_model("hiera_t", sam1)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="not a SAM 2.1 checkpoint"):
        build_sam2_model("hiera_t", other)


def test_missing_and_reshaped_keys_are_listed(tmp_path, official_tiny):
    sd = dict(official_tiny.state_dict())
    sd.pop("no_mem_embed")
    sd["sam_mask_decoder.conv_s0.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "edited.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e.g. no_mem_embed\).*1 shape mismatches"):
        build_sam2_model("hiera_t", path)


def test_specs_table_imports_no_torch():
    code = ("import sys, imseg.sam2.specs as s; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(sorted(s.SPECS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "sam2.1-hiera-b+" in out and "sam2.1-hiera-t" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_default_device_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="pass device='cpu'"):
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml")
