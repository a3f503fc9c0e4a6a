"""Shared fixtures: real-data location (``IMSEG_DATA``), tiny Weizmann-horse training sets, random-weight official
SAM and SAM 2.1 checkpoints.

Checkpoints are built with the *official* packages (segment-anything, mobile_sam) from a fixed
seed, every constant parameter (zeros such as pos_embed/rel_pos/biases, ones such as LayerNorm
weights) is perturbed so that those code paths are exercised, and the state_dict is saved in the
official layout. imseg must load these files unchanged.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: The one setting for where the real data sets are (benchmarks/_data.py reads the same variable and default).
DATA = Path(os.environ.get("IMSEG_DATA", REPO.parent / "shared" / "data")).expanduser()


def pytest_configure(config) -> None:
    """Under pytest-xdist, one compute thread per worker: ``-n 2`` on two cores with torch's default of a thread
    per core would run four busy threads on two cores, and OpenMP's spinning threads slow each other down many
    times over. Subprocesses started by tests (the CLI) inherit the same setting."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets: ``$IMSEG_DATA``, default ``shared/data`` beside the checkout; tests that use it skip
    cleanly when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def make_horse_subset(data_dir):
    """Factory: ``make_horse_subset(out, n_train=6, n_val=2, size=64) -> out``, a folder-pairs dataset (``images/``,
    ``masks/``, ``split.json``) of the first ``n_train``/``n_val`` Weizmann horses of each split, resized to
    ``size`` x ``size`` pixels (cheap to decode and to train on)."""
    from PIL import Image

    src = data_dir / "weizmann-horse"

    def make(out: Path, n_train: int = 6, n_val: int = 2, size: int = 64) -> Path:
        split = json.loads((src / "split.json").read_text())
        for sub in ("images", "masks"):
            (out / sub).mkdir(parents=True)
        chosen = {"train": sorted(split["train"])[:n_train], "val": sorted(split["val"])[:n_val]}
        for stems in chosen.values():
            for stem in stems:
                with Image.open(src / "images" / f"{stem}.jpg") as img:
                    img.convert("RGB").resize((size, size), Image.BILINEAR).save(out / "images" / f"{stem}.png")
                with Image.open(src / "masks" / f"{stem}.png") as mask:
                    mask.resize((size, size), Image.NEAREST).save(out / "masks" / f"{stem}.png")
        (out / "split.json").write_text(json.dumps(chosen))
        return out

    return make


def tiny_horse_options(data: Path, project: Path, name: str, **overrides) -> dict:
    """``imseg.semantic.train.train`` options for a seconds-long run on a :func:`make_horse_subset` set: a U-Net
    on a 3-stage resnet18 at 32 px, batch 3, one epoch, no early stop; ``overrides`` replace or add options."""
    options = dict(data={"path": str(data), "names": ["background", "horse"]}, model="unet", encoder="resnet18",
                   model_kwargs={"encoder_depth": 3, "decoder_channels": [32, 16, 8]}, imgsz=32, batch=3, epochs=1,
                   workers=0, patience=0, progress=False, val_samples=2, project=str(project), name=name)
    return {**options, **overrides}


def perturb_constant_parameters(model, seed: int = 0, scale: float = 0.02) -> int:
    """Add noise to every parameter whose elements are all equal (0 or 1 from init). Returns count."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for _, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            if flat.numel() and bool((flat == flat[0]).all()):
                noise = torch.randn(param.shape, generator=gen) * scale
                param.add_(noise.to(param.dtype))
                count += 1
    return count


def build_official_sam(variant: str, seed: int = 0):
    """The official model (segment_anything for vit_b/l/h, mobile_sam for vit_t), random weights."""
    import torch

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "vit_t":
            from mobile_sam import sam_model_registry as registry
        else:
            from segment_anything import sam_model_registry as registry
        model = registry[variant](checkpoint=None)
    perturb_constant_parameters(model, seed=seed + 1)
    return model.eval()


def shapes_image(height: int, width: int) -> np.ndarray:
    """An RGB uint8 test image: a gradient with a red disc and a green rectangle, placed relative to its size
    (not square unless asked, so a squash or crop shows)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 200, y / height * 150, 80 + 40 * np.sin(x / 17) * np.cos(y / 23)], axis=-1)
    cx, cy, r = round(0.3 * width), round(4 * height / 9), round(2 * height / 9)
    rgb[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = (230, 40, 40)
    rgb[height // 6 : 2 * height // 3, round(0.6 * width) : round(0.8667 * width)] = (30, 200, 90)
    return rgb.clip(0, 255).astype(np.uint8)


def build_official_sam2(variant: str = "t", seed: int = 0):
    """The official SAM 2.1 model (``sam2`` package, hiera ``t``/``s``/``b+``/``l``), random weights with every
    constant parameter perturbed, in eval mode (the modules cache tensors at ``.eval()``)."""
    import torch
    from sam2.build_sam import build_sam2 as official_build

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = official_build(f"configs/sam2.1/sam2.1_hiera_{variant}.yaml", None, device="cpu")
    perturb_constant_parameters(model, seed=seed)
    return model.eval()


_CHECKPOINTS: dict[tuple[str, int], Path] = {}
_SAM2_CHECKPOINTS: dict[tuple[str, int], Path] = {}
#: the official SAM 2.1 file name of each hiera size
SAM2_FILES = {"t": "sam2.1_hiera_tiny.pt", "s": "sam2.1_hiera_small.pt", "b+": "sam2.1_hiera_base_plus.pt",
              "l": "sam2.1_hiera_large.pt"}


@pytest.fixture(scope="session")
def make_sam_checkpoint(tmp_path_factory):
    """Factory: ``make_sam_checkpoint("vit_b" | "vit_t", seed=0) -> Path`` to a saved official state_dict."""
    import torch

    def make(variant: str, seed: int = 0) -> Path:
        key = (variant, seed)
        if key not in _CHECKPOINTS:
            model = build_official_sam(variant, seed)
            name = {"vit_t": "mobile_sam.pt"}.get(variant, f"sam_{variant}_random{seed}.pth")
            path = tmp_path_factory.mktemp(f"ckpt_{variant}_{seed}") / name
            torch.save(model.state_dict(), path)
            _CHECKPOINTS[key] = path
        return _CHECKPOINTS[key]

    return make


@pytest.fixture(scope="session")
def make_sam2_checkpoint(tmp_path_factory):
    """Factory: ``make_sam2_checkpoint(variant="t", seed=0) -> Path``: :func:`build_official_sam2`'s model saved as
    the official files are (``{"model": state_dict}`` under the official file name), built once per session.
    ``build_official_sam2(variant, seed)`` builds the same weights again where a test needs the official model."""
    import torch

    def make(variant: str = "t", seed: int = 0) -> Path:
        key = (variant, seed)
        if key not in _SAM2_CHECKPOINTS:
            path = tmp_path_factory.mktemp(f"sam2_{variant}_{seed}") / SAM2_FILES[variant]
            torch.save({"model": build_official_sam2(variant, seed).state_dict()}, path)
            _SAM2_CHECKPOINTS[key] = path
        return _SAM2_CHECKPOINTS[key]

    return make


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(make_sam_checkpoint) -> Path:
    """Random-weight MobileSAM (vit_t) checkpoint: the fast model for end-to-end tests."""
    return make_sam_checkpoint("vit_t")


@pytest.fixture(scope="session")
def sample_image() -> np.ndarray:
    """scikit-image's astronaut, downscaled to 256x256 RGB uint8 (fast, real content)."""
    from skimage import data, transform

    img = data.astronaut()
    return (transform.resize(img, (256, 256), anti_aliasing=True) * 255).round().astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_close_logits(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-3) -> None:
    """Same shape, and within ``tol`` of the largest reference |logit| (at least 1)."""
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= tol * max(1.0, np.abs(ref).max())


def assert_same_sam2_masks(ours, ref, score_tol: float = 1e-3, logit_tol: float = 1e-3) -> None:
    """Two SAM 2.1 ``Masks`` agree: masks (IoU >= 0.99), scores and low-res logits."""
    assert len(ours) == len(ref)
    for a, b in zip(ours.masks, ref.masks, strict=True):
        assert mask_iou(a, b) >= 0.99
    np.testing.assert_allclose(ours.scores, ref.scores, atol=score_tol)
    assert_close_logits(ours.fields["low_res_logits"], ref.fields["low_res_logits"], logit_tol)


def assert_same_sam2_features(ours: dict, ref: dict) -> None:
    """SAM 2.1 image features (embedding and high-resolution levels) within 1e-4 of the reference's scale."""
    pairs = [(ours["image_embed"], ref["image_embed"])] + list(zip(ours["high_res_feats"], ref["high_res_feats"],
                                                                  strict=True))
    for a, b in pairs:
        b = b.numpy()
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
