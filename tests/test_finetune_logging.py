"""imseg finetune --logger csv,tensorboard: a random-init MobileSAM on a few real horse photos at a small input
size; its TensorBoard events read back with tensorboard's EventAccumulator (scalars against the optimizer step,
box-prompt overlays, a resumed run that repeats no step), and the overlay panel itself."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from imseg.errors import ConfigError
from imseg.finetune.train import finetune

IMGSZ = 64  # MobileSAM's TinyViT at 64 px: cheap enough for tests


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    return EventAccumulator(str(run_dir / "tensorboard"), size_guidance={IMAGES: 0}).Reload()


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def horse(data_dir):
    root = data_dir / "weizmann-horse"
    if not root.is_dir():
        pytest.skip("weizmann-horse not present")
    return {"path": str(root), "train": ["horse001", "horse002", "horse003", "horse004"],
            "val": ["horse009", "horse012"]}


def _options(tmp, data, **extra):
    base = dict(data=data, model="mobile-sam", random_init=True, imgsz=IMGSZ, epochs=1, batch=2, lr=1e-3,
                precision="32", clicks=1, project=str(tmp / "runs"), cache_dir=str(tmp / "cache"), progress=False,
                warmup=0.0, logger="csv,tensorboard", val_samples=2)
    base.update(extra)
    return base


def test_finetune_logs_loss_lr_metrics_and_overlays_and_resume_repeats_no_step(tmp_path, horse):
    first = finetune(**_options(tmp_path, horse, name="tb"))
    run = first.run_dir
    from imseg.semantic.loggers import make_loggers

    stale = make_loggers("tensorboard", run)  # an interrupted run's step after its last checkpoint
    stale.log_scalars({"train/loss_step": 99.0}, step=3)
    stale.close()
    finetune(resume=run, epochs=2)  # the second epoch appends to the same event stream, hiding the stale step
    events, rows = _events(run), _rows(run)
    steps_per_epoch = 2  # 4 train images, batch 2
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(1, 2 * steps_per_epoch + 1))
    assert [e.step for e in events.Scalars("lr")] == list(range(1, 2 * steps_per_epoch + 1))
    assert 99.0 not in [e.value for e in events.Scalars("train/loss_step")]
    assert events.Scalars("lr")[-1].value == pytest.approx(float(rows[-1]["lr"]))
    miou = events.Scalars("val/box_miou")
    assert [e.step for e in miou] == [steps_per_epoch, 2 * steps_per_epoch]
    assert [e.value for e in miou] == pytest.approx([float(r["val_box_miou"]) for r in rows])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([float(r["train_loss"]) for r in rows])
    assert [e.value for e in events.Scalars("epoch")] == [0, 1]
    # photo | truth | prediction side by side, at the photo's size (under PANEL_SIDE)
    with Image.open(horse["path"] + "/images/horse009.jpg") as img:
        width, height = img.size
    overlays = events.Images("val/overlay_0")
    assert [(o.step, o.width, o.height) for o in overlays] == [(2, 3 * width, height), (4, 3 * width, height)]
    assert len(events.Images("val/overlay_1")) == 2 and "val/overlay_2" not in events.Tags()["images"]
    panel = np.asarray(Image.open(io.BytesIO(overlays[-1].encoded_image_string)).convert("RGB"))
    with Image.open(horse["path"] + "/images/horse009.jpg") as img:
        photo = np.asarray(img.convert("RGB"))
    np.testing.assert_allclose(panel[:, :width].astype(int), photo.astype(int), atol=8)  # PNG of the photo itself


def test_time_budget_stop_logs_the_validated_final_state(tmp_path, horse):
    result = finetune(**_options(tmp_path, horse, name="timed", epochs=50, time=1e-4, batch=1, val_samples=1))
    assert result.stopped_by_time and result.steps == 1
    events = _events(result.run_dir)
    assert [e.step for e in events.Scalars("val/box_miou")] == [1]
    assert [e.step for e in events.Images("val/overlay_0")] == [1]


def test_csv_only_writes_no_events_and_a_bad_logger_is_refused(tmp_path, horse):
    with pytest.raises(ConfigError, match="logger must be a comma-separated list of csv, tensorboard"):
        finetune(**_options(tmp_path, horse, logger="csv,wandb"))
    result = finetune(**_options(tmp_path, horse, name="csv", logger="csv"))
    assert not (result.run_dir / "tensorboard").exists() and len(_rows(result.run_dir)) == 1


def test_box_overlay_draws_prediction_and_box_over_the_photo():
    from imseg.finetune.loggers import box_overlay

    image = np.full((20, 30, 3), 100, np.uint8)
    truth = np.zeros((1, 20, 30), bool)
    truth[0, 5:10, 5:15] = True
    pred = np.zeros_like(truth)
    panel = box_overlay(image, truth, pred, np.array([[5.0, 5.0, 14.0, 9.0]]))
    assert panel.shape == (20, 90, 3)
    np.testing.assert_array_equal(panel[:, :30], image)
    assert (panel[6:9, 36:44] != 100).any()  # the truth is coloured
    prediction = panel[:, 60:]
    assert (prediction[5, 5:15] == (255, 255, 0)).all() and (prediction[7, 7] == 100).all()  # box outline only
    big = box_overlay(np.zeros((1000, 500, 3), np.uint8), np.zeros((0, 1000, 500), bool),
                      np.zeros((0, 1000, 500), bool), np.zeros((0, 4)))
    assert big.shape == (250, 375, 3)  # subsampled by 4: at most 320 px a side
