"""SAM2AutomaticMaskGenerator against the official one (``sam2`` package) on the same random weights.

Random weights give weak, low-contrast masks, so the filters are loosened (no IoU filter, a small
stability offset, NMS off) to keep many candidates; each official record must have a counterpart
with mask IoU >= 0.99 and the same point, box and scores.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2.automatic_mask_generator")

from conftest import build_official_sam2  # noqa: E402
from imseg.errors import ConfigError  # noqa: E402
from imseg.io import read_image  # noqa: E402
from imseg.sam2 import SAM2AutomaticMaskGenerator, build_model, build_sam2  # noqa: E402

LOOSE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.5, stability_score_offset=0.05,
             box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    official = build_official_sam2()
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": official.state_dict()}, path)
    return official, build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", path, device="cpu")


def _image(request, kind: str) -> np.ndarray:
    if kind == "random":
        return np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    path = request.getfixturevalue("data_dir") / "video-bedroom" / "00000.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["real"])  # the random image adds time, not coverage
def test_generate_matches_official(models, request, kind):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as OfficialGenerator

    image = _image(request, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = OfficialGenerator(models[0], **LOOSE).generate(image)
    ours = SAM2AutomaticMaskGenerator(models[1], **LOOSE).generate(image)
    assert len(ref) >= 3  # a comparison, not an empty match
    assert len(ours) == len(ref)
    for a, b in zip(ref, ours, strict=True):
        inter = np.logical_and(a["segmentation"], b["segmentation"]).sum()
        union = np.logical_or(a["segmentation"], b["segmentation"]).sum()
        assert inter / union >= 0.99
        np.testing.assert_allclose(b["point_coords"], a["point_coords"], atol=1e-3)
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=1)
        assert abs(b["predicted_iou"] - a["predicted_iou"]) < 1e-4
        assert abs(b["stability_score"] - a["stability_score"]) < 1e-2
        assert b["crop_box"] == [0, 0, image.shape[1], image.shape[0]]


def test_unsupported_options_are_refused():
    with pytest.raises(ConfigError, match="use_m2m"):
        SAM2AutomaticMaskGenerator(build_model("hiera_t"), use_m2m=True)
    with pytest.raises(ConfigError, match="imseg.sam2 model"):
        SAM2AutomaticMaskGenerator(torch.nn.Linear(1, 1))
