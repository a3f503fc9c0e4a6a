"""Multi-device fine-tuning: the devices/nodes options, the strategy, and a real two-process DDP run on CPU (gloo)
of a random-init MobileSAM on a small synthetic data set through the CLI."""

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

from imseg.errors import ConfigError
from imseg.finetune.train import FinetuneConfig, finetune
from imseg.io import write_image

IMGSZ = 64  # MobileSAM's TinyViT at 64 px: a 4 x 4 embedding grid, cheap enough for tests


def synthetic_objects(root: Path, n_train: int = 6, n_val: int = 3, size: int = 64, seed: int = 0) -> dict:
    """images/ (noise with one to three bright rectangles) + masks/ (one id per rectangle) + split.json
    (n_train:n_val)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = []
    for i in range(n_train + n_val):
        image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for obj in range(1, int(rng.integers(1, 4)) + 1):
            h, w = rng.integers(8, 24, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            mask[y:y + h, x:x + w] = obj
            image[y:y + h, x:x + w] = rng.integers(150, 255, 3, dtype=np.uint8)
        stem = f"s{i:02d}"
        write_image(root / "images" / f"{stem}.png", image)
        write_image(root / "masks" / f"{stem}.png", mask)
        stems.append(stem)
    split = {"train": stems[:n_train], "val": stems[n_train:]}
    (root / "split.json").write_text(json.dumps(split))
    return {"path": str(root), **split}


def _options(tmp: Path, data: dict, **extra) -> dict:
    base = dict(data=data, model="mobile-sam", random_init=True, imgsz=IMGSZ, epochs=1, batch=2, lr=1e-3,
                precision="32", clicks=1, project=str(tmp / "runs"), cache_dir=str(tmp / "cache"), progress=False,
                warmup=0.0, accelerator="cpu")
    base.update(extra)
    return base


@pytest.mark.parametrize("devices", [0, "0", "abc", -2, "", ",", [], [-1], True, 1.5])
def test_bad_devices_are_a_config_error(devices):
    with pytest.raises(ConfigError, match=r"devices must be a count >= 1, -1 or 'auto' \(all\), or device ids"):
        FinetuneConfig(data="x", devices=devices).validate()


@pytest.mark.parametrize("nodes", [0, -1, 1.5, "2", True])
def test_bad_nodes_are_a_config_error(nodes):
    with pytest.raises(ConfigError, match="nodes must be a whole number >= 1"):
        FinetuneConfig(data="x", nodes=nodes).validate()


@pytest.mark.parametrize("devices", [1, 2, -1, "auto", "-1", "2", "0,1", [0, 1]])
def test_good_devices_pass(devices):
    FinetuneConfig(data="x", devices=devices).validate()


def test_bad_options_fail_before_any_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="devices must be"):
        finetune(**_options(tmp_path, {"path": str(tmp_path)}, devices="abc"))
    with pytest.raises(ConfigError, match="nodes must be"):
        finetune(**_options(tmp_path, {"path": str(tmp_path)}, nodes=0))
    assert not (tmp_path / "runs").exists()


def test_cli_names_the_option(tmp_path):
    from typer.testing import CliRunner

    from imseg.cli import app

    base = ["finetune", "--data", str(tmp_path), "--random-init", "--project", str(tmp_path / "runs")]
    for flags, message in ((["--devices", "0"], "devices must be a count >= 1"),
                           (["--devices", "abc"], "devices must be a count >= 1"),
                           (["--nodes", "0"], "nodes must be a whole number >= 1")):
        out = CliRunner().invoke(app, [*base, *flags])
        assert out.exit_code == 2 and message in out.output, out.output
    assert not (tmp_path / "runs").exists()


def test_a_device_count_the_machine_lacks_is_a_config_error(tmp_path):
    data = synthetic_objects(tmp_path / "data", n_train=2, n_val=1)
    with pytest.raises(ConfigError, match=r"devices=-1, nodes=1, accelerator='cpu' cannot run on this machine"):
        finetune(**_options(tmp_path, data, devices=-1))


def test_time_planning_refuses_several_devices(tmp_path):
    from imseg.finetune.planned import plan_and_finetune

    data = synthetic_objects(tmp_path / "data", n_train=2, n_val=1)
    for devices, nodes in ((2, 1), ("0,1", 1), (1, 2)):
        with pytest.raises(ConfigError, match="plans the run from timings on one device"):
            plan_and_finetune(1.0, plan_only=True, **_options(tmp_path, data, devices=devices, nodes=nodes))


def test_strategy_follows_what_trains():
    """DDP is told to look for unused parameters exactly when something besides the mask decoder trains (the
    prompt encoder's embedding of each prompt kind is used only by the prompts a step draws)."""
    from imseg.finetune.module import set_trainable
    from imseg.finetune.run import build_start_model
    from imseg.finetune.train import _leaves_parameters_unused
    from imseg.semantic.ddp import ddp_strategy

    model, _ = build_start_model("mobile-sam", None, IMGSZ, allow_random=True)
    expected = {"decoder": "ddp", "decoder+prompt": "ddp_find_unused_parameters_true",
                "all": "ddp_find_unused_parameters_true"}
    for train, strategy in expected.items():
        set_trainable(model, train)
        assert ddp_strategy(2, 1, lambda m=model: _leaves_parameters_unused(m), "cpu") == strategy
        assert ddp_strategy(1, 1, lambda m=model: _leaves_parameters_unused(m), "cpu") == "auto"
        assert ddp_strategy("auto", 1, lambda m=model: _leaves_parameters_unused(m), "cpu") == "auto"
        assert ddp_strategy(1, 2, lambda m=model: _leaves_parameters_unused(m), "cpu") == strategy



def test_batchnorm_statistics_are_shared_across_gpu_processes(monkeypatch):
    """SyncBatchNorm (Lightning's sync_batchnorm) exactly when several processes train on GPUs: the batch's
    statistics are then the whole batch's, as in one process; one process, or processes on CPUs (where torch's
    SyncBatchNorm cannot run), keep BatchNorm as it is."""
    import torch

    from imseg.semantic.ddp import sync_batchnorm

    for devices, nodes in ((2, 1), ("0,1", 1), (1, 2), (-1, 1)):
        assert sync_batchnorm(devices, nodes, "gpu") and sync_batchnorm(devices, nodes, "cuda")
        assert not sync_batchnorm(devices, nodes, "cpu")
    for accelerator in ("gpu", "cuda", "cpu", "auto"):
        assert not sync_batchnorm(1, 1, accelerator) and not sync_batchnorm("1", 1, accelerator)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert sync_batchnorm(2, 1, "auto") and sync_batchnorm("auto", 1, "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert not sync_batchnorm(2, 1, "auto") and not sync_batchnorm("auto", 1, "auto")

@pytest.mark.slow
def test_every_decoder_weight_gets_a_gradient_in_a_decoder_step(tmp_path):
    """Plain "ddp" (no search for unused parameters) is right for --train decoder only if every step gives every
    mask-decoder weight a gradient, whatever prompts it draws."""
    from imseg.semantic.module import _lightning

    L = _lightning()
    missing: list[set[str]] = []

    class GradCheck(L.Callback):
        def on_after_backward(self, trainer, module) -> None:
            missing.append({n for n, p in module.model.named_parameters() if p.requires_grad and p.grad is None})

    data = synthetic_objects(tmp_path / "data", n_train=4, n_val=1)
    for prompts in ("box", "point", "box,point,mask"):
        finetune(**_options(tmp_path, data, train="decoder", prompts=prompts, name=prompts, batch=1),
                 callbacks=[GradCheck()])
    assert len(missing) == 12 and all(not m for m in missing), missing


def _run_ranks(cmd: list[str], env: dict, log: Path, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` (close_fds=False: spawned, this test process is not forked) with its output in ``log``; on a
    timeout also kill the rank Lightning started (left waiting for the other, it would never exit)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, close_fds=False)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            import psutil

            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            pytest.fail(f"the DDP run did not finish in {timeout} s:\n{log.read_text()[-6000:]}")
    return proc.returncode, log.read_text()


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_process_ddp_finetune_on_cpu(tmp_path):
    """`imseg finetune --devices 2 --accelerator cpu`: Lightning starts the second process (the CLI again), both
    train on their shard and validate theirs; one run directory, written by rank 0; the cache whole."""
    import imseg

    data = synthetic_objects(tmp_path / "data", n_train=6, n_val=3)
    cmd = [sys.executable, "-m", "imseg", "finetune", "--data", str(data["path"]), "--model", "mobile-sam",
           "--random-init", "--imgsz", str(IMGSZ), "--epochs", "2", "--batch", "2", "--clicks", "1",
           "--precision", "32", "--train", "decoder+prompt", "--project", str(tmp_path / "runs"), "--name", "ddp",
           "--cache-dir", str(tmp_path / "cache"), "--devices", "2", "--accelerator", "cpu", "--time", "60"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    returncode, output = _run_ranks(cmd, env, tmp_path / "ddp.log", timeout=1800)
    assert returncode == 0, output[-6000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["ddp"], runs
    run = tmp_path / "runs" / "ddp"
    for name in ("config.yaml", "metrics.csv", "results.png", "weights/best.pt", "weights/last.pt",
                 "weights/last.ckpt"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    # epoch 0: every image encoded once by the two ranks together (each its own shard; the distributed sampler
    # repeats an image where the shards need evening out), later epochs read all of them from disk
    assert int(rows[0]["cache_misses"]) >= 9 and int(rows[0]["encoder_calls"]) == int(rows[0]["cache_misses"])
    assert int(rows[1]["encoder_calls"]) == 0 and int(rows[1]["cache_hits"]) >= 9
    entries = list((tmp_path / "cache").rglob("*.pt"))
    assert len(entries) == 9 and not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]
    for path in entries:
        assert set(torch.load(path, weights_only=True)) >= {"embedding", "input_size", "original_size"}
    segmenter = imseg.load(run)
    # validation was reduced over both ranks' shards (an image the sampler repeated counted once): best.pt scored
    # on the whole validation set in this one process, from the cached embeddings, gives the best epoch's mIoU
    best = max(float(r["val_box_miou"]) for r in rows)
    assert _box_miou(segmenter.model, data, tmp_path / "cache") == pytest.approx(best, abs=1e-6)


def _box_miou(model, data: dict, cache_root: Path) -> float:
    from imseg.finetune.cache import EmbeddingCache
    from imseg.finetune.data import load_finetune_data
    from imseg.finetune.dataset import FinetuneDataset
    from imseg.finetune.module import sam_box_ious

    (key,) = [p.name for p in cache_root.iterdir()]
    found = load_finetune_data(data["path"], objects="ids", min_area=4, val_fraction=0.2, seed=0)
    assert sorted(Path(s.image).stem for s in found.splits["val"]) == data["val"]
    dataset = FinetuneDataset(found.splits["val"], IMGSZ, EmbeddingCache(cache_root, key), full_masks=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run's processes computed it
    try:
        ious = [iou for item in dataset for iou in sam_box_ious(model.cpu().eval(), item["embedding"][None], item)]
    finally:
        torch.set_num_threads(threads)
    assert len(ious) >= 3
    return float(np.mean(ious))
