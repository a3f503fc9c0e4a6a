"""SAM encoder distillation into TinyViT: the embedding error falls, the cache is reused, and the checkpoint
loads in imseg and in the official mobile_sam package with identical embeddings."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch

from imseg.distill import CHECKPOINT_NAME, distill_sam_encoder, official_state_dict
from imseg.errors import ConfigError
from imseg.sam.checkpoint import build_model, get_config, load_into, read_state_dict


@pytest.fixture(autouse=True)
def one_thread():
    """Small models gain nothing from several threads on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mobile_sam_at(checkpoint, img_size: int):
    """A random-weight MobileSAM teacher at a reduced input size (same weights as at 1024)."""
    return load_into(build_model(get_config("vit_t", img_size=img_size)), read_state_dict(checkpoint), "vit_t")


def horses(data_dir, start: int, count: int) -> list:
    return sorted((data_dir / "weizmann-horse" / "images").glob("*.jpg"))[start : start + count]


@pytest.mark.slow
def test_distilled_student_learns_the_teacher_and_loads_in_imseg_and_mobile_sam(
        tmp_path, data_dir, make_sam_checkpoint):
    import imseg

    teacher = mobile_sam_at(make_sam_checkpoint("vit_t", seed=0), 128)
    torch.manual_seed(1)
    result = distill_sam_encoder(teacher, None, horses(data_dir, 0, 6), 5, tmp_path / "out",
                                 val_images=horses(data_dir, 100, 3), lr=2e-3, batch_size=2,
                                 cache_dir=tmp_path / "cache", device="cpu")
    # held-out embedding error before training vs after 5 epochs on 6 images: more than 5x lower
    assert len(result.val_mse) == 6 and len(result.train_mse) == 5
    assert result.val_mse[-1] < result.val_mse[0] / 5, result.val_mse
    assert result.teacher_computed == 9
    with open(tmp_path / "out" / "metrics.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6

    checkpoint = result.checkpoint
    assert checkpoint.name == CHECKPOINT_NAME
    saved = torch.load(checkpoint, weights_only=True)
    for key, value in teacher.state_dict().items():
        if not key.startswith("image_encoder."):  # prompt encoder and mask decoder are the teacher's
            torch.testing.assert_close(saved[key], value, rtol=0, atol=0)
    ours = imseg.load("mobile-sam", checkpoint=checkpoint, device="cpu").predictor.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry

        official = sam_model_registry["vit_t"](checkpoint=str(checkpoint)).eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.image_encoder(x), official.image_encoder(x)
    assert a.shape == (1, 256, 64, 64)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_teacher_embeddings_are_cached_by_image_and_teacher(tmp_path, data_dir, make_sam_checkpoint):
    images = horses(data_dir, 10, 2)
    teacher = mobile_sam_at(make_sam_checkpoint("vit_t", seed=0), 64)
    first = distill_sam_encoder(teacher, None, images, 1, tmp_path / "a", cache_dir=tmp_path / "cache", device="cpu")
    again = distill_sam_encoder(teacher, None, images, 1, tmp_path / "b", cache_dir=tmp_path / "cache", device="cpu")
    assert first.teacher_computed == 2 and again.teacher_computed == 0
    other = mobile_sam_at(make_sam_checkpoint("vit_t", seed=3), 64)
    third = distill_sam_encoder(other, None, images, 1, tmp_path / "c", cache_dir=tmp_path / "cache", device="cpu")
    assert third.teacher_computed == 2
    assert len(list((tmp_path / "cache").glob("*/*.pt"))) == 4
    # a student saved at 64 px is MobileSAM at any size: it loads strictly at 1024
    full = build_model(get_config("vit_t"))
    load_into(full, read_state_dict(first.checkpoint), "vit_t")
    assert set(official_state_dict(teacher, full)) == set(full.state_dict())


def test_distill_refuses_bad_setups(tmp_path, data_dir, make_sam_checkpoint):
    teacher = mobile_sam_at(make_sam_checkpoint("vit_t", seed=0), 64)
    images = horses(data_dir, 0, 1)
    with pytest.raises(ConfigError, match="must be TinyViT"):
        distill_sam_encoder(teacher, build_model(get_config("vit_b", img_size=64, depth=1, global_attn_indexes=())),
                            images, 1, tmp_path, cache_dir=tmp_path, device="cpu")
    with pytest.raises(ConfigError, match="differs from the teacher"):
        distill_sam_encoder(teacher, None, images, 1, tmp_path, img_size=128, cache_dir=tmp_path, device="cpu")
    with pytest.raises(ConfigError, match="teacher must be a SAM model"):
        distill_sam_encoder(torch.nn.Linear(1, 1), None, images, 1, tmp_path, cache_dir=tmp_path, device="cpu")
    with pytest.raises(ConfigError, match="epochs"):
        distill_sam_encoder(teacher, None, images, 0, tmp_path, cache_dir=tmp_path, device="cpu")


def test_distill_cli_trains_and_saves_mobile_sam(tmp_path, data_dir, make_sam_checkpoint):
    from typer.testing import CliRunner

    from imseg.cli import app

    data = str(data_dir / "weizmann-horse" / "images" / "horse00[12].jpg")
    args = ["distill", "--teacher", "mobile-sam", "--teacher-checkpoint", str(make_sam_checkpoint("vit_t", seed=0)),
            "--student", "mobile-sam", "--data", data, "--val", data, "--epochs", "1", "--imgsz", "64",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" in res.output and (tmp_path / "out" / CHECKPOINT_NAME).is_file()
    load_into(build_model(get_config("vit_t")), read_state_dict(tmp_path / "out" / CHECKPOINT_NAME), "vit_t")
    res = CliRunner().invoke(app, [*args[:1], "--student", "sam-vit-b", *args[7:9]])
    assert res.exit_code == 2 and "--student must be mobile-sam" in res.output
