"""Semantic knowledge distillation: the KD and CWD losses against direct computations and torch's kl_div, the
frozen teacher, the cached teacher logits moving with the augmentation, and `imseg train --teacher` end to end
(resume included) on real Weizmann horses."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from conftest import tiny_horse_options
from imseg.errors import ConfigError
from imseg.semantic.distill import Distiller, Teacher, TeacherTargets, cwd_loss, kd_loss, load_teacher
from imseg.semantic.models import create_model


def _logits(seed: int, shape=(2, 3, 5, 7), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_is_the_per_pixel_kl_times_t_squared(temperature):
    s, t = _logits(0), _logits(1)
    got = kd_loss(s, t, temperature).item()
    # direct: at each pixel sum_c p_t (log p_t - log p_s), averaged over N*H*W pixels, times T^2
    p_s = _softmax(s.numpy() / temperature, axis=1)
    p_t = _softmax(t.numpy() / temperature, axis=1)
    direct = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean() * temperature**2
    # torch's formulation: kl_div(log q, p) over (pixels, classes) rows, "batchmean" = sum / rows
    rows_s = (s / temperature).permute(0, 2, 3, 1).reshape(-1, s.shape[1]).log_softmax(1)
    rows_t = (t / temperature).permute(0, 2, 3, 1).reshape(-1, t.shape[1]).softmax(1)
    reference = F.kl_div(rows_s, rows_t, reduction="batchmean").item() * temperature**2
    assert got == pytest.approx(direct, rel=1e-5) and got == pytest.approx(reference, rel=1e-5)
    assert got > 0.01


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cwd_loss_is_the_per_channel_spatial_kl_times_t_squared(temperature):
    s, t = _logits(2), _logits(3)
    n, c, h, w = s.shape
    got = cwd_loss(s, t, temperature).item()
    direct = 0.0
    for i in range(n):
        for k in range(c):
            q_s = _softmax(s[i, k].numpy().ravel() / temperature, axis=0)
            q_t = _softmax(t[i, k].numpy().ravel() / temperature, axis=0)
            direct += (q_t * (np.log(q_t) - np.log(q_s))).sum()
    direct *= temperature**2 / (n * c)
    rows_s = (s / temperature).reshape(n * c, h * w).log_softmax(1)
    rows_t = (t / temperature).reshape(n * c, h * w).softmax(1)
    reference = F.kl_div(rows_s, rows_t, reduction="batchmean").item() * temperature**2
    assert got == pytest.approx(direct, rel=1e-5) and got == pytest.approx(reference, rel=1e-5)
    assert got > 0.01


@pytest.mark.parametrize("loss", [kd_loss, cwd_loss])
def test_losses_are_zero_when_the_student_matches_the_teacher(loss):
    s = _logits(4).float()
    assert loss(s, s.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(s, s + 5.0, 2.0).item() == pytest.approx(0.0, abs=1e-5)  # a constant shift changes neither distribution
    assert loss(s, _logits(5).float(), 2.0).item() > 1e-3


@pytest.mark.parametrize("loss", [kd_loss, cwd_loss])
def test_gradient_reaches_the_student_only(loss):
    student = _logits(6).float().requires_grad_(True)
    teacher = _logits(7).float().requires_grad_(True)
    loss(student, teacher, 2.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        kd_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


def _tiny(seed: int, depth: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", encoder="resnet18", num_classes=2, encoder_weights=None, encoder_depth=depth,
                        decoder_channels=[32, 16, 8][:depth])


def test_distiller_trains_the_student_and_leaves_the_frozen_teacher_alone():
    teacher_model = _tiny(0)
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    student = _tiny(1).train()
    distiller = Distiller(Teacher(teacher_model, imgsz=None, multiple=8), "kd", weight=2.0, temperature=2.0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = student(images)
    loss = distiller(images, logits)
    with torch.no_grad():
        expected = 2.0 * kd_loss(logits, teacher_model(images), 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in teacher_model.parameters())
    assert not teacher_model.training  # BatchNorm statistics stay the teacher's
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for key, value in teacher_model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_teacher_of_another_size_sees_its_scale_and_answers_at_the_students():
    model = _tiny(2).eval()
    teacher = Teacher(model, imgsz=64, multiple=8)
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    got = teacher.logits(images, (32, 48))
    with torch.no_grad():
        big = model(F.interpolate(images, size=(40, 64), mode="bilinear", align_corners=False))
    expected = F.interpolate(big, size=(32, 48), mode="bilinear", align_corners=False)
    assert got.shape == (2, 2, 32, 48)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("loss", [kd_loss, cwd_loss])
def test_losses_over_valid_pixels_equal_the_losses_of_the_valid_crop(loss):
    s, t = _logits(4, shape=(2, 3, 9, 11)), _logits(5, shape=(2, 3, 9, 11))
    valid = torch.zeros(2, 9, 11, dtype=torch.bool)
    valid[:, 2:7, 1:8] = True  # the rest: padding, whatever its logits
    t_padded = t.clone()
    t_padded[~valid[:, None].expand_as(t)] = 255.0
    got = loss(s, t_padded, 2.0, valid=valid)
    expected = loss(s[:, :, 2:7, 1:8], t[:, :, 2:7, 1:8], 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6) and got.item() > 0.01
    student = s.clone().requires_grad_(True)
    loss(student, t_padded, 2.0, valid=valid).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[~valid[:, None].expand_as(s)].abs().max() == 0  # padding teaches nothing


def test_soft_maps_move_with_the_mask_through_every_geometric_augmentation():
    from imseg.semantic.transforms import build_transforms

    rng = np.random.default_rng(0)
    mask = np.zeros((50, 70), np.int64)
    mask[10:30, 20:60] = 1
    mask[35:45, 5:25] = 2
    rgb = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    soft = torch.cat([F.one_hot(torch.from_numpy(mask), 3).permute(2, 0, 1).float() * 5.0,
                      torch.full((1, 50, 70), 256.0)])  # the marker channel: never the padding value 255
    augment = {"hflip": 0.5, "vflip": 0.5, "scale": [0.5, 1.5], "rotate": 30, "rotate90": 0.5, "elastic": 0.5,
               "color_jitter": 0.4}
    tf = build_transforms(48, augment, train=True, ignore_index=255)
    padded = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, out_mask, out_soft = tf(rgb, mask, soft)
        torch.manual_seed(seed)
        image_alone, mask_alone = tf(rgb, mask)
        assert torch.equal(image, image_alone) and torch.equal(out_mask, mask_alone)  # the same draws
        assert out_soft.shape == (4, 48, 48) and out_soft.dtype == torch.float32
        inside = out_soft[-1] == 256.0
        assert torch.equal(inside, out_mask != 255)  # padding / rotation wrote the ignore value in both
        assert torch.equal(out_soft[:3].argmax(0)[inside], out_mask[inside])
        padded += int((~inside).sum())
    assert padded > 0


@pytest.mark.slow
def test_teacher_targets_cache_the_teachers_letterboxed_answer(teacher_run):
    from imseg.semantic.data import build_datasets
    from imseg.semantic.transforms import IMAGENET_MEAN, IMAGENET_STD

    root, data, teacher_dir = teacher_run
    teacher = load_teacher(teacher_dir, ["background", "horse"], IMAGENET_MEAN, IMAGENET_STD)
    spec = {"path": str(data), "names": ["background", "horse"]}
    sets = build_datasets(spec, imgsz=64, augment="none", seed=3, cache=True)
    calls = []
    live = teacher.logits
    teacher.logits = lambda images, size: calls.append(images.shape) or live(images, size)
    targets = TeacherTargets(sets["train"], teacher, imgsz=None, batch=4)
    assert len(calls) == 2 and len(targets) == len(sets["train"]) == 6  # the teacher ran once, in 2 batches
    for index in range(len(targets)):
        image, mask, cached = targets[index]
        assert torch.equal(image, sets["train"][index][0]) and torch.equal(mask, sets["train"][index][1])
        assert cached.shape == (3, 64, 64) and set(cached[-1].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(cached[-1] == 1, mask != 255)
        inside = cached[-1] == 1
        answer = live(image[None], (64, 64))[0]
        # float16 storage and a round trip through the native size: the same pixels, logits within a few %
        assert (answer.argmax(0) == cached[:2].argmax(0))[inside].float().mean() > 0.97
        assert (answer - cached[:2])[:, inside].abs().median() < 0.05 * answer.abs().max()
    with pytest.raises(ConfigError, match="over the 0.0 GiB allowed"):
        TeacherTargets(sets["train"], teacher, imgsz=None, memory_limit=1000)
    with pytest.raises(ConfigError, match="distill_cache needs a dataset built by imseg"):
        TeacherTargets([(torch.zeros(3, 8, 8), torch.zeros(8, 8))], teacher, imgsz=None)
    assert TeacherTargets(sets["train"], Teacher(teacher.model, None, 32), imgsz=32)[0][2].shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="needs an imgsz"):
        TeacherTargets(sets["train"], Teacher(teacher.model, None, 32), imgsz=None)


# ----------------------------------------------------------------------------- real data, end to end
def _options(data: Path, project: Path, name: str, **extra) -> dict:
    return tiny_horse_options(data, project, name, **{"epochs": 2, "seed": 5, **extra})


@pytest.fixture(scope="module")
def teacher_run(make_horse_subset, tmp_path_factory):
    from imseg.semantic.train import train

    root = tmp_path_factory.mktemp("distill")
    data = make_horse_subset(root / "horses")
    result = train(_options(data, root / "runs", "teacher", imgsz=64, model_kwargs={}, epochs=1))
    return root, data, result.run_dir


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_cli_train_with_a_teacher_records_it_and_logs_the_distillation_loss(teacher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from imseg.cli import app

    root, data, teacher = teacher_run
    data_yaml = root / "horses.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(data), "names": ["background", "horse"]}))
    args = ["train", "--data", str(data_yaml), "--model", "fpn", "--encoder", "resnet18", "--imgsz", "32", "--batch", "3",
            "--epochs", "1", "--workers", "0", "--patience", "0", "--project", str(root / "runs"), "--name", "cwd",
            "--teacher", str(teacher), "--distill", "cwd", "--distill-weight", "0.5", "--distill-temperature", "4",
            "--logger", "csv,tensorboard"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = root / "runs" / "cwd"
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["teacher"] == str(teacher.resolve())
    assert (saved["distill"], saved["distill_weight"], saved["distill_temperature"]) == ("cwd", 0.5, 4.0)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    distill = [e.value for e in events.Scalars("train/distill")]
    assert len(distill) == 1 and distill[0] > 0
    # the student's checkpoint holds the student only
    payload = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert payload["model"]["name"] == "fpn" and not any(k.startswith("teacher") for k in payload["state_dict"])


@pytest.mark.slow
def test_distilled_run_resumes_exactly(teacher_run, monkeypatch):
    from imseg.semantic.train import train

    root, data, teacher = teacher_run
    opts = dict(teacher=str(teacher), distill="kd", distill_weight=2.0, distill_temperature=2.0)
    straight = train(_options(data, root / "runs", "straight", **opts))
    cut = train(_options(data, root / "runs", "cut", epochs=1, **opts))
    resumed = train(resume=cut.run_dir, epochs=2)
    assert resumed.run_dir == cut.run_dir
    assert _rows(cut.run_dir) == _rows(straight.run_dir) and len(_rows(straight.run_dir)) == 2
    plain = train(_options(data, root / "runs", "plain"))  # the same run without a teacher trains otherwise
    assert _rows(plain.run_dir) != _rows(straight.run_dir)
    calls = []
    live = Teacher.logits
    monkeypatch.setattr(Teacher, "logits", lambda self, images, size: calls.append(len(images)) or live(self, images, size))
    cached = train(_options(data, root / "runs", "cached", distill_cache=True, **opts))
    assert calls == [3, 3]  # 6 training images, once, in batches of 3: not again in the 2 epochs
    rows = _rows(cached.run_dir)
    assert len(rows) == 2 and rows != _rows(plain.run_dir) and rows != _rows(straight.run_dir)
    saved = yaml.safe_load((cached.run_dir / "config.yaml").read_text())["train"]
    assert saved["distill_cache"] is True
    a = torch.load(straight.last, weights_only=True)["state_dict"]
    b = torch.load(cut.run_dir / "weights" / "last.pt", weights_only=True)["state_dict"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.mark.slow
def test_teacher_errors_are_clear(teacher_run, tmp_path):
    from imseg.semantic.train import train

    root, data, teacher = teacher_run
    with pytest.raises(ConfigError, match="--teacher.*imseg train"):
        train(_options(data, tmp_path, "x", teacher=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="distill must be one of kd, cwd"):
        train(_options(data, tmp_path, "x", teacher=str(teacher), distill="mse"))
    with pytest.raises(ConfigError, match="distill_temperature must be > 0"):
        train(_options(data, tmp_path, "x", teacher=str(teacher), distill_temperature=0))
    with pytest.raises(ConfigError, match="distill_cache caches a teacher's logits: give the teacher run"):
        train(_options(data, tmp_path, "x", distill_cache=True))
    with pytest.raises(ConfigError, match="the teacher predicts the classes"):
        load_teacher(teacher, ["background", "zebra"], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert not (tmp_path / "x").exists()
