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
    # shrunk as class shares: the probabilities averaged over each student pixel's footprint
    expected = F.adaptive_avg_pool2d(big.softmax(dim=1), (32, 48)).log()
    assert got.shape == (2, 2, 32, 48)
    torch.testing.assert_close(got, expected)
    small = Teacher(model, imgsz=16, multiple=8).logits(images, (32, 48))  # a smaller teacher: enlarged bilinearly
    with torch.no_grad():
        answer = model(F.interpolate(images, size=(8, 16), mode="bilinear", align_corners=False))
    torch.testing.assert_close(small, F.interpolate(answer, size=(32, 48), mode="bilinear", align_corners=False))


def test_shrunk_logits_carry_the_share_of_each_pixel_a_class_covers():
    from imseg.semantic.distill import resize_logits

    labels = torch.zeros(1, 4, 6, dtype=torch.long)
    labels[0, :, :3] = 1  # class 1 covers columns 0-2: the second of three 2x2 output pixels is half class 1
    logits = F.one_hot(labels, 2).permute(0, 3, 1, 2).double() * 40 - 20  # confident: softmax ~ one-hot
    shares = resize_logits(logits, (2, 3)).softmax(dim=1)
    torch.testing.assert_close(shares[0, 1], torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]], dtype=torch.float64))
    assert resize_logits(logits, (4, 6)) is logits


@pytest.mark.slow
def test_teacher_targets_hold_the_teachers_answer_on_each_view_the_student_sees(teacher_run):
    from imseg.semantic.data import build_datasets
    from imseg.semantic.transforms import IMAGENET_MEAN, IMAGENET_STD

    root, data, teacher_dir = teacher_run
    teacher = load_teacher(teacher_dir, ["background", "horse"], IMAGENET_MEAN, IMAGENET_STD)
    spec = {"path": str(data), "names": ["background", "horse"]}
    augment = {"hflip": 0.5, "scale": [0.7, 1.3], "rotate": 20, "color_jitter": 0.3}
    sets = build_datasets(spec, imgsz=64, augment=augment, seed=3, cache=True)
    reference = build_datasets(spec, imgsz=64, augment=augment, seed=3, cache=True)["train"]
    calls = []
    live = teacher.logits
    teacher.logits = lambda images, size: calls.append(len(images)) or live(images, size)
    targets = TeacherTargets(sets["train"], teacher, views=2, batch=4)
    assert calls == [4, 2, 4, 2] and len(targets) == 6  # 2 views of 6 images, in batches of 4, before any item
    views = []
    for epoch in range(5):
        targets.set_epoch(epoch)
        reference.set_epoch(epoch % 2)  # epoch e trains on the views of epoch e mod 2
        for index in range(len(targets)):
            image, mask, cached = targets[index]
            ref_image, ref_mask = reference[index]
            assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)
            answer = live(image[None], (64, 64))[0]
            assert cached.shape == (2, 64, 64) and cached.dtype == torch.float32
            torch.testing.assert_close(cached, answer, atol=2e-3 * float(answer.abs().max()), rtol=1e-2)
            if epoch < 2 and index == 0:
                views.append(image)
    assert len(calls) == 4  # items never run the teacher
    assert not torch.equal(views[0], views[1])  # the two views differ
    with pytest.raises(ConfigError, match="on 2 views of 6 images would take about 0.0 GiB, over the 0.0 GiB allowed"):
        TeacherTargets(sets["train"], teacher, views=2, memory_limit=1000)


@pytest.mark.slow
def test_a_larger_teacher_answers_on_the_same_views_made_at_its_own_size(teacher_run):
    from imseg.semantic.data import build_datasets
    from imseg.semantic.distill import resize_logits
    from imseg.semantic.transforms import IMAGENET_MEAN, IMAGENET_STD

    root, data, teacher_dir = teacher_run
    teacher = load_teacher(teacher_dir, ["background", "horse"], IMAGENET_MEAN, IMAGENET_STD)
    teacher.imgsz = 128  # as if trained at 128: the same network answers at any size
    spec = {"path": str(data), "names": ["background", "horse"]}
    augment = {"hflip": 0.5, "scale": [0.7, 1.3], "color_jitter": 0.3}
    sets = build_datasets(spec, imgsz=64, augment=augment, seed=5, cache=True)
    large = sets["train"].at_size(128)
    seen = []
    live = teacher.logits
    teacher.logits = lambda images, size: seen.append((tuple(images.shape), tuple(size))) or live(images, size)
    targets = TeacherTargets(sets["train"], teacher, views=2, batch=4)
    assert seen == [((4, 3, 128, 128), (64, 64)), ((2, 3, 128, 128), (64, 64))] * 2
    for epoch in (0, 1, 2):
        targets.set_epoch(epoch)
        large.set_epoch(epoch % 2)
        for index in (0, 5):
            image, _, cached = targets[index]
            big = large[index][0]
            # the teacher's view is the student's at twice the pixels (colours and all), not an enlargement of it
            assert big.shape == (3, 128, 128) and (F.avg_pool2d(big[None], 2)[0] - image).abs().mean() < 0.1
            answer = resize_logits(live(big[None], (128, 128)), (64, 64))[0]
            torch.testing.assert_close(cached, answer, atol=2e-3 * float(answer.abs().max()), rtol=1e-2)
    # rotations (and elastic warps) resample per pixel: no twin, the teacher sees the student's view rescaled
    warped = build_datasets(spec, imgsz=64, augment={**augment, "rotate": 20}, seed=5, cache=True)["train"]
    assert warped.at_size(128) is None
    seen.clear()
    TeacherTargets(warped, teacher, views=1, batch=8)
    assert seen == [((6, 3, 64, 64), (64, 64))]


def test_teacher_targets_refuse_what_they_cannot_cache(tmp_path):
    from imseg.semantic.data import SegmentationDataset

    teacher = Teacher(_tiny(0), None, 8)
    unseeded = SegmentationDataset([], seed=None)
    with pytest.raises(ConfigError, match="seeded per epoch and item"):
        TeacherTargets(unseeded, teacher)
    with pytest.raises(ConfigError, match="seeded per epoch and item"):
        TeacherTargets([(torch.zeros(3, 8, 8), torch.zeros(8, 8))], teacher)
    with pytest.raises(ConfigError, match="distill_views must be >= 1"):
        TeacherTargets(SegmentationDataset([], seed=0), teacher, views=0)


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
    # as many cached views as epochs: the teacher's answers on the very batches the live run saw, so the same run
    # up to the cache's float16 (at the teacher's size: a larger teacher's cache sees its own-size views instead)
    opts = dict(opts, imgsz=64)
    live_run = train(_options(data, root / "runs", "live64", **opts))
    calls.clear()
    cached = train(_options(data, root / "runs", "cached", distill_cache=True, distill_views=2, **opts))
    assert calls == [3, 3, 3, 3]  # 2 views of 6 training images in batches of 3, before training; none after
    rows, live_rows = _rows(cached.run_dir), _rows(live_run.run_dir)
    assert len(rows) == 2
    for row, live_row in zip(rows, live_rows, strict=True):  # train_loss holds the KD term against the cache
        assert float(row["train_loss"]) == pytest.approx(float(live_row["train_loss"]), rel=1e-3)
    saved = yaml.safe_load((cached.run_dir / "config.yaml").read_text())["train"]
    assert saved["distill_cache"] is True and saved["distill_views"] == 2
    calls.clear()  # more views than epochs: only the views the epochs train on are made
    capped = train(_options(data, root / "runs", "capped", distill_cache=True, distill_views=5, **opts))
    assert calls == [3, 3, 3, 3] and _rows(capped.run_dir) == rows
    one_view = train(_options(data, root / "runs", "one_view", distill_cache=True, distill_views=1, **opts))
    assert _rows(one_view.run_dir) != rows  # epoch 1 trains on epoch 0's view again
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
    with pytest.raises(ConfigError, match="distill_views must be >= 1"):
        train(_options(data, tmp_path, "x", teacher=str(teacher), distill_cache=True, distill_views=0))
    with pytest.raises(ConfigError, match="the teacher predicts the classes"):
        load_teacher(teacher, ["background", "zebra"], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert not (tmp_path / "x").exists()
