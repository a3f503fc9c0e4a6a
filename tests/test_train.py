"""Training: loss falls, run directory, determinism, exact resume, DDP reduction, CLI on real data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from imseg.errors import CheckpointError, ConfigError
from imseg.semantic.metrics import ConfusionMatrix
from imseg.semantic.train import load_checkpoint, model_from_checkpoint, train

NAMES = ["background", "square"]
TINY = {"model": "unet", "encoder": "resnet18", "imgsz": 32, "batch": 4, "lr": 3e-3, "workers": 0, "progress": False,
        "warmup": 0.5, "model_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}


class Squares(torch.utils.data.Dataset):
    """Noisy images with one bright rectangle (class 1); row 0 of every mask is ignore (255).

    Items follow the data contract: (float32 (3, H, W), int64 (H, W)); the noise is drawn from torch's
    global RNG (train split) so that the training's per-sample seeding is exercised.
    """

    def __init__(self, n: int, size: int = 32, seed: int = 0, noise: float = 0.05) -> None:
        self.noise = noise
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            img = rng.normal(0, 0.3, (3, size, size)).astype(np.float32)
            mask = np.zeros((size, size), np.int64)
            y, x = rng.integers(0, size - 12, 2)
            h, w = rng.integers(6, 12, 2)
            img[:, y : y + h, x : x + w] += 1.5
            mask[y : y + h, x : x + w] = 1
            mask[0] = 255
            self.items.append((torch.from_numpy(img), torch.from_numpy(mask)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        img, mask = self.items[i]
        return (img + self.noise * torch.randn_like(img) if self.noise else img), mask


def squares() -> dict:
    return {"train": Squares(16), "val": Squares(8, seed=1, noise=0.0)}


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    return train(dict(TINY, epochs=2, project=str(project), name="a"), datasets=squares(), class_names=NAMES)


def test_run_directory_loss_falls_and_iou_above_chance(straight_run):
    run = straight_run.run_dir
    for name in ("weights/best.pt", "weights/last.pt", "weights/last.ckpt", "metrics.csv", "results.png",
                 "confusion_matrix.png", "val_samples.png", "config.yaml"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # chance level: predicting everything as background gives foreground IoU 0 -> mIoU ~0.45
    assert straight_run.metrics["miou"] > 0.55
    payload = load_checkpoint(straight_run.best)  # weights_only=True inside
    assert payload["class_names"] == NAMES and payload["imgsz"] == 32
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    # the logged confusion matrix is the best checkpoint's, over all val pixels except ignore
    model = model_from_checkpoint(payload)
    cm = ConfusionMatrix(2, ignore_index=255)
    with torch.no_grad():
        for img, mask in squares()["val"]:
            cm.update(model(img[None]).argmax(1)[0], mask)
    np.testing.assert_array_equal(straight_run.confusion_matrix, cm.matrix.numpy())
    assert cm.matrix.sum() == 8 * 31 * 32


@pytest.mark.slow
def test_deterministic_and_resume_is_exact(straight_run, tmp_path):
    import lightning.pytorch as L

    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    first = train(dict(TINY, epochs=2, project=str(tmp_path), name="b"), datasets=squares(), class_names=NAMES,
                  callbacks=[StopAfterFirstEpoch()])
    assert first.epochs_run == 1
    # same seed -> same first epoch, to the last digit
    assert _rows(first.run_dir)[0] == _rows(straight_run.run_dir)[0]
    resumed = train(resume=first.run_dir, datasets=squares(), class_names=NAMES)
    assert resumed.run_dir == first.run_dir
    a = torch.load(straight_run.last, weights_only=True)
    b = torch.load(resumed.last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _rows(resumed.run_dir) == _rows(straight_run.run_dir)


def test_init_fine_tunes_from_a_run_at_another_size(straight_run, tmp_path):
    """--init starts a new run (and its moving average) from a run's weights, here at a larger imgsz; a checkpoint
    of another architecture is refused with the options it holds."""
    import lightning.pytorch as L

    start = {}

    class RecordStart(L.Callback):
        def on_train_start(self, trainer, module):
            start["model"] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
            start["ema"] = {k: v.detach().clone() for k, v in module.ema.module.state_dict().items()}

    tuned = train(dict(TINY, imgsz=40, epochs=1, lr=1e-3, warmup=0, ema=0.9, project=str(tmp_path), name="ft",
                       init=str(straight_run.run_dir)), datasets=squares(), class_names=NAMES, callbacks=[RecordStart()])
    trained = load_checkpoint(straight_run.best)["state_dict"]
    for key, value in trained.items():
        assert torch.equal(start["model"][key], value), key
        assert torch.equal(start["ema"][key], value), key
    payload = load_checkpoint(tuned.last)
    assert payload["imgsz"] == 40 and payload["train"]["init"] == str(straight_run.run_dir)
    # it trained on from there: the weights moved, and the fine-tuned model is still well above chance
    assert any(not torch.equal(payload["state_dict"][k], v) for k, v in trained.items() if v.is_floating_point())
    assert tuned.metrics["miou"] > 0.55
    with pytest.raises(ConfigError, match=r"holds model=unet, encoder=resnet18, 2 classes, model_kwargs=\{'encoder_depth': 3"):
        train(dict(TINY, model_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 8]}, project=str(tmp_path),
                   init=str(straight_run.best)), datasets=squares(), class_names=NAMES)
    with pytest.raises(CheckpointError, match="--init: .* no weights/best.pt or weights/last.pt"):
        train(dict(TINY, project=str(tmp_path), init=str(tmp_path / "nothing")), datasets=squares(), class_names=NAMES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # refused before any run directory was made


@pytest.mark.slow
def test_fewer_encoder_stages_allow_a_finer_training_size(tmp_path):
    from imseg.errors import InputError
    from imseg.semantic.infer import load_run
    from imseg.semantic.models import input_multiple

    assert input_multiple("unet", {"encoder_depth": 4}) == 16 and input_multiple("Unet++", {"encoder_depth": 3}) == 8
    assert input_multiple("unet", {}) == input_multiple("fcn_resnet50", {"encoder_depth": 3}) == 32
    # imgsz 40 is not a multiple of 32, but the depth-3 U-Net (stride 8) trains, saves and predicts at it
    result = train(dict(TINY, imgsz=40, epochs=1, project=str(tmp_path), name="i40"), datasets=squares(),
                   class_names=NAMES)
    assert load_checkpoint(result.best)["imgsz"] == 40
    image = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    letterboxed = load_run(result.run_dir, device="cpu")  # the image letterboxed to 40x40, as validated
    assert letterboxed.imgsz == 40 and letterboxed.predict_probs(image).shape == (2, 30, 50)
    tiled = load_run(result.run_dir, device="cpu", resize=False, imgsz=24)  # 24 px tiles, a multiple of 8
    assert tiled.predict_probs(np.tile(image, (3, 3, 1))).shape == (2, 90, 150)
    with pytest.raises(InputError, match="imgsz must be a positive multiple of 8 for this model, got 20"):
        load_run(result.run_dir, device="cpu", imgsz=20)


def test_bad_options_and_resume_targets(tmp_path):
    with pytest.raises(ConfigError, match=r"imgsz must be a multiple of 8 \(>= 8\) for encoder_depth 3, got 50"):
        train(dict(TINY, imgsz=50), datasets=squares(), class_names=NAMES)
    with pytest.raises(ConfigError, match="imgsz must be a multiple of 32"):  # the full 5-stage encoder
        train(dict(TINY, imgsz=40, model_kwargs={}), datasets=squares(), class_names=NAMES)
    with pytest.raises(ConfigError, match="unknown training option"):
        train(TINY, datasets=squares(), class_names=NAMES, epoch=3)
    with pytest.raises(ConfigError, match="scheduler"):
        train(dict(TINY, scheduler="step"), datasets=squares(), class_names=NAMES)
    with pytest.raises(ConfigError, match=r"ema must be in \[0, 1\)"):
        train(dict(TINY, ema=1.0), datasets=squares(), class_names=NAMES)
    with pytest.raises(ConfigError, match="save_period must be >= 1"):
        train(dict(TINY, save_period=0), datasets=squares(), class_names=NAMES)
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(resume=tmp_path)
    with pytest.raises(ConfigError, match="accelerator must be auto, cpu or gpu, got 'tpu'"):
        train(dict(TINY, accelerator="tpu"), datasets=squares(), class_names=NAMES)
    for devices in ("abc", 0, [], True):
        with pytest.raises(ConfigError, match="devices must be"):
            train(dict(TINY, devices=devices), datasets=squares(), class_names=NAMES)
    with pytest.raises(ConfigError, match=r"a binary task has two classes, e.g. \['background', 'square'\]"):
        train(dict(TINY, project=str(tmp_path / "one")), datasets=squares(), class_names=["square"])
    assert not (tmp_path / "one").exists()  # refused before a run directory is made


@pytest.mark.slow
def test_cli_epochs_zero_resume_flags_and_resume_from_another_directory(tmp_path, monkeypatch):
    """--epochs 0 is refused (not read as the default), --resume refuses flags it would ignore, and a resumed
    run finds its dataset from any working directory (the run records it resolved)."""
    from PIL import Image

    from imseg.cli import app

    work = tmp_path / "work"
    for sub in ("images", "masks"):
        (work / "ds" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(work / "ds" / "images" / f"s{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 1
        Image.fromarray(mask).save(work / "ds" / "masks" / f"s{i}.png")
    (work / "ds" / "data.yaml").write_text(yaml.safe_dump({"names": ["background", "square"], "val_ratio": 0.34}))
    monkeypatch.chdir(work)
    base = ["train", "--data", "ds/data.yaml", "--model", "unet", "--encoder", "resnet18", "--imgsz", "32",
            "--batch", "2", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "r"]
    zero = CliRunner().invoke(app, [*base, "--epochs", "0"])
    assert zero.exit_code == 2 and "epochs must be >= 1, got 0" in zero.output, zero.output
    assert CliRunner().invoke(app, [*base, "--epochs", "1"]).exit_code == 0
    run = tmp_path / "runs" / "r"
    flags = CliRunner().invoke(app, ["train", "--resume", str(run), "--lr", "0.5", "--imgsz", "64"])
    assert flags.exit_code == 2 and "--imgsz, --lr would be ignored" in flags.output, flags.output
    monkeypatch.chdir(tmp_path)  # ds/data.yaml is not reachable from here
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert len(_rows(run)) == 2


DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from test_train import NAMES, TINY, squares
from imseg.semantic.train import train
r = train(dict(TINY, epochs=2, project={project!r}, name="ddp", devices=2, accelerator="cpu", patience=0, ema=0.9),
          datasets=squares(), class_names=NAMES)
rank = int(os.environ["RANK"])
with open(os.path.join({project!r}, f"rank{{rank}}.json"), "w") as fh:
    json.dump({{"run_dir": str(r.run_dir), "cm": r.confusion_matrix.tolist(), "metrics": r.metrics}}, fh)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_reduce_metrics(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), project=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29531", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0 == r1  # both ranks agree on run dir, metrics and the reduced confusion matrix
    assert Path(r0["run_dir"]).name == "ddp" and not (tmp_path / "ddp2").exists()
    assert (Path(r0["run_dir"]) / "weights" / "last.ckpt").is_file()
    # the matrix is summed over ranks: it equals one process evaluating best.pt (the weights' moving average,
    # updated alike on both ranks) on the whole val set
    model = model_from_checkpoint(load_checkpoint(Path(r0["run_dir"]) / "weights" / "best.pt"))
    cm = ConfusionMatrix(2, ignore_index=255)
    with torch.no_grad():
        for img, mask in squares()["val"]:
            cm.update(model(img[None]).argmax(1)[0], mask)
    np.testing.assert_array_equal(np.asarray(r0["cm"]), cm.matrix.numpy())


@pytest.mark.slow
def test_cli_train_val_on_real_horses(data_dir, tmp_path):
    """imseg train on a tiny Weizmann-horse subset (real data), then imseg val on the held-out images."""
    from imseg.cli import app

    root = data_dir / "weizmann-horse"
    split = json.loads((root / "split.json").read_text())
    data_yaml = tmp_path / "horses.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(root), "names": ["background", "horse"],
        "train": split["train"][:24], "val": split["val"][:4],
    }))
    args = ["train", "--data", str(data_yaml), "--model", "fpn", "--encoder", "resnet18", "--epochs", "4",
            "--imgsz", "64", "--batch", "4", "--lr", "3e-3", "--workers", "0", "--project", str(tmp_path / "runs"),
            "--name", "horse", "--cache", "--patience", "0", "--ema", "0.9", "--save-period", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = tmp_path / "runs" / "horse"
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["ema"] == 0.9 and saved["save_period"] == 3
    assert torch.load(run / "weights" / "last.ckpt", weights_only=False, map_location="cpu")["epoch"] == 3
    rows = _rows(run)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # above chance: a random labelling with the true class frequencies p_c scores IoU_c = p_c / (2 - p_c)
    from PIL import Image

    fg = np.mean([np.asarray(Image.open(root / "masks" / f"{s}.png")).astype(bool).mean() for s in split["val"][:4]])
    chance = np.mean([p / (2 - p) for p in (fg, 1 - fg)])
    assert max(float(r["val_miou"]) for r in rows) > chance + 0.05
    result = CliRunner().invoke(app, ["val", "--run", str(run), "--device", "cpu", "--resize"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "horse" in result.output and "pixel accuracy" in result.output
    assert (run / "confusion_matrix_val.png").is_file()
    # --init: one more epoch at 96 px from that run's weights
    args = ["train", "--data", str(data_yaml), "--model", "fpn", "--encoder", "resnet18", "--epochs", "1", "--imgsz", "96",
            "--batch", "4", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "horse96", "--cache",
            "--init", str(run)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert yaml.safe_load((tmp_path / "runs" / "horse96" / "config.yaml").read_text())["train"]["init"] == str(run)
    result = CliRunner().invoke(app, args[:4] + ["unet"] + args[5:-2] + ["--name", "bad", "--init", str(run)])
    assert result.exit_code != 0 and "that checkpoint holds model=fpn" in result.output


def test_weight_ema_rule():
    """Each update moves float tensors towards the model by 1 - min(decay, (1+t)/(10+t)); integer buffers copy."""
    from imseg.semantic.train import WeightEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = WeightEMA(model, decay=0.5)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for t in (1, 2, 3):
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 3, 8, 8))  # moves the BatchNorm statistics and its step counter
        ema.update(model)
        d = min(0.5, (1 + t) / (10 + t))
        assert int(ema.updates) == t and ema.current_decay() == d  # the decay this update used
        for name, value in model.state_dict().items():
            got = ema.module.state_dict()[name]
            if value.is_floating_point():
                torch.testing.assert_close(got, d * before[name] + (1 - d) * value, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(got, value), name
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not torch.equal(ema.module[0].weight, start["0.weight"])


def _stop_after(epochs: int):
    import lightning.pytorch as L

    class StopAfter(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch + 1 >= epochs:
                trainer.should_stop = True

    return StopAfter()


@pytest.mark.slow
def test_ema_weights_are_validated_saved_and_resumed(tmp_path):
    """With ema: best.pt/last.pt hold the average (not the trained weights), the logged confusion matrix is
    best.pt's, last.ckpt is written every save_period epochs and at the stop, and resume is exact."""
    import lightning.pytorch as L

    class SeeLastCkpt(L.Callback):
        seen: list[bool] = []

        def on_train_epoch_start(self, trainer, module):
            self.seen.append((Path(trainer.default_root_dir) / "weights" / "last.ckpt").is_file())

    cfg = dict(TINY, epochs=3, ema=0.9, save_period=2, project=str(tmp_path))
    straight = train(dict(cfg, name="s"), datasets=squares(), class_names=NAMES, callbacks=[SeeLastCkpt()])
    assert SeeLastCkpt.seen == [False, False, True]  # not after epoch 0; after epoch 1 (period 2)
    ckpt = torch.load(straight.run_dir / "weights" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["epoch"] == 2  # the final epoch (index 2) though 3 % save_period != 0
    raw = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    avg = {k[len("ema.module."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    assert int(ckpt["state_dict"]["ema.updates"]) == 3 * 4  # 16 images / batch 4, every step
    last = load_checkpoint(straight.last)
    assert raw.keys() == avg.keys() == last["state_dict"].keys()
    for key, value in last["state_dict"].items():
        assert torch.equal(value, avg[key]), key
    assert any(not torch.equal(avg[k], raw[k]) for k in raw if raw[k].is_floating_point())
    model = model_from_checkpoint(load_checkpoint(straight.best))
    cm = ConfusionMatrix(2, ignore_index=255)
    with torch.no_grad():
        for img, mask in squares()["val"]:
            cm.update(model(img[None]).argmax(1)[0], mask)
    np.testing.assert_array_equal(straight.confusion_matrix, cm.matrix.numpy())

    # stopped by a callback at epoch end after 1 epoch: last.ckpt is written at the stop, not only at period ends
    stopped = train(dict(cfg, name="r"), datasets=squares(), class_names=NAMES, callbacks=[_stop_after(1)])
    assert stopped.epochs_run == 1
    resumed_ckpt = torch.load(stopped.run_dir / "weights" / "last.ckpt", weights_only=False, map_location="cpu")
    assert resumed_ckpt["epoch"] == 0
    with pytest.raises(ConfigError, match="cannot change ema when resuming"):  # the average is in last.ckpt
        train(resume=stopped.run_dir, datasets=squares(), class_names=NAMES, ema=0.0)
    resumed = train(resume=stopped.run_dir, datasets=squares(), class_names=NAMES, ema=0.9)  # same value: fine
    a, b = load_checkpoint(straight.last), load_checkpoint(resumed.last)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert _rows(resumed.run_dir) == _rows(straight.run_dir)
