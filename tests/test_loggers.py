"""Training loggers: make_loggers' TensorBoard events read back with tensorboard's EventAccumulator, and
`imseg train --logger csv,tensorboard` on real Weizmann horses (scalars, overlays, a resumed run)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_horse_options
from imseg.errors import ConfigError
from imseg.semantic.loggers import make_loggers, overlay_panel, parse_logger_spec


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    return EventAccumulator(str(run_dir / "tensorboard"), size_guidance={IMAGES: 0}).Reload()


def test_make_loggers_writes_scalars_and_images_tensorboard_reads_back(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    loggers = make_loggers("csv,tensorboard", tmp_path)
    loggers.log_scalars({"train/loss": 0.5, "val/miou": 0.25, "skipped": float("nan")}, step=3)
    loggers.log_scalars({"train/loss": 0.125}, step=7)
    loggers.log_image("val/overlay_0", image, step=7)
    loggers.close()
    events = _events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.5), (7, 0.125)]
    assert [(e.step, e.value) for e in events.Scalars("val/miou")] == [(3, 0.25)]
    assert "skipped" not in events.Tags()["scalars"]
    (stored,) = events.Images("val/overlay_0")
    assert (stored.step, stored.width, stored.height) == (7, 24, 16)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored.encoded_image_string)).convert("RGB")), image)


def test_csv_only_writes_no_events_and_bad_specs_are_refused(tmp_path):
    loggers = make_loggers("csv", tmp_path)
    loggers.log_scalars({"a": 1.0}, 0)
    loggers.close()
    assert not loggers.active and not (tmp_path / "tensorboard").exists()
    assert parse_logger_spec(" TensorBoard , csv,csv") == ("tensorboard", "csv")
    for bad in ("csv,wandb", "", ","):
        with pytest.raises(ConfigError, match="logger must be a comma-separated list of csv, tensorboard"):
            parse_logger_spec(bad)


def test_overlay_panel_keeps_the_photo_on_background():
    image = np.full((4, 5, 3), 100, dtype=np.uint8)
    truth = np.zeros((4, 5), dtype=np.int64)
    truth[1:3, 1:3] = 1
    pred = np.zeros_like(truth)
    panel = overlay_panel(image, truth, pred, num_classes=2)
    assert panel.shape == (4, 15, 3)
    np.testing.assert_array_equal(panel[:, :5], image)
    np.testing.assert_array_equal(panel[:, 10:], image)  # an all-background prediction: the photo itself
    assert (panel[1:3, 6:8] != 100).any() and (panel[0, 5:10] == 100).all()


@pytest.mark.slow
def test_train_logs_scalars_and_overlays_to_tensorboard_and_resumes(make_horse_subset, tmp_path):
    from imseg.semantic.train import train

    data = make_horse_subset(tmp_path / "horses", size=48)
    options = tiny_horse_options(data, tmp_path / "runs", "tb", logger="csv,tensorboard")
    run = train(options).run_dir
    train(resume=run, epochs=2)  # the resumed epoch appends to the same event stream
    events = _events(run)
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps_per_epoch = 2  # 6 images, batch 3
    miou = events.Scalars("val/miou")
    assert [e.step for e in miou] == [steps_per_epoch, 2 * steps_per_epoch]
    assert [e.value for e in miou] == pytest.approx([float(r["val_miou"]) for r in rows])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([float(r["train_loss"]) for r in rows])
    # the step is the number of optimizer steps taken (as at epoch end): 1..4, none repeated by the resume
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(1, 2 * steps_per_epoch + 1))
    assert [e.value for e in events.Scalars("lr")][-1] == pytest.approx(float(rows[-1]["lr"]))
    for tag in ("val/loss", "val/mdice", "val/pixel_accuracy", "epoch"):
        assert len(events.Scalars(tag)) == 2, tag
    overlays = events.Images("val/overlay_0")
    assert [(o.step, o.width, o.height) for o in overlays] == [(2, 96, 32), (4, 96, 32)]
    assert len(events.Images("val/overlay_1")) == 2 and "val/overlay_2" not in events.Tags()["images"]
