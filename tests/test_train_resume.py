"""`imseg train --resume` through the CLI in a subprocess: exact after a SIGKILL with loader workers, and a
clear error (no traceback) for a damaged last.ckpt."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
IMSEG = [sys.executable, "-c", "from imseg.cli import main; main()"]  # the `imseg` command of this checkout


def _train_cmd(data: Path, project: Path, name: str, epochs: int) -> list[str]:
    return [*IMSEG, "train", "--data", str(data), "--model", "fpn", "--encoder", "mobilenet_v2",
            "--imgsz", "64", "--batch", "4", "--epochs", str(epochs), "--workers", "2", "--save-period", "1",
            "--patience", "0", "--seed", "3", "--project", str(project), "--name", name]


def _env() -> dict:
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _complete_checkpoint(path: Path) -> bool:
    """True once ``path`` holds a whole checkpoint (Lightning writes it in place, not by renaming)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - absent, or still being written
        return False
    return True


@pytest.mark.slow
def test_resume_after_sigkill_with_loader_workers_is_exact(make_horse_subset, tmp_path):
    # Three epochs, killed once the first checkpoint is whole. The run is stopped (SIGSTOP, its loader workers
    # too) while the checkpoint is read and goes on only in slices of about 50 ms between two reads, so it
    # cannot run on to its end while this process waits to be scheduled beside the rest of the suite.
    data = make_horse_subset(tmp_path / "horses", n_train=16, n_val=4)
    runs = tmp_path / "runs"
    straight = _run(_train_cmd(data, runs, "straight", 3))
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = subprocess.Popen(_train_cmd(data, runs, "killed", 3), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = runs / "killed" / "weights" / "last.ckpt"
    try:
        deadline = time.monotonic() + 240
        while True:
            time.sleep(0.05)
            os.killpg(killed.pid, signal.SIGSTOP)
            if _complete_checkpoint(ckpt):
                break
            assert killed.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint"
            os.killpg(killed.pid, signal.SIGCONT)
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait(30)
    assert killed.returncode == -signal.SIGKILL, "the run ended on its own before the kill"
    assert 1 <= len(_rows(runs / "killed")) < 3

    resumed = _run([*IMSEG, "train", "--resume", str(runs / "killed")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(runs / "killed") == _rows(runs / "straight")  # every metric of every epoch, to the last digit
    a = torch.load(runs / "straight" / "weights" / "last.pt", weights_only=True)
    b = torch.load(runs / "killed" / "weights" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


class _Hostile:
    """Unpickling this runs a command: what a weights_only=False load of an untrusted file would do."""

    def __reduce__(self):
        return (os.system, ("touch hostile-pickle-ran",))


@pytest.fixture(scope="module")
def finished_run(make_horse_subset, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    data = make_horse_subset(root / "horses", n_train=4, n_val=2, size=32)
    cmd = _train_cmd(data, root / "runs", "r", 1)
    cmd[cmd.index("64")] = "32"
    done = _run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "r"


@pytest.mark.parametrize("damage", ["truncated", "empty", "hostile pickle"])
@pytest.mark.slow
def test_resume_from_damaged_last_ckpt_is_a_clear_error(finished_run, damage, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    ckpt = run / "weights" / "last.ckpt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"epoch": 0, "state_dict": {}, "loops": _Hostile(), "optimizer_states": []}, ckpt)
    proc = subprocess.run([*IMSEG, "train", "--resume", str(run), "--epochs", "2"],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), out
    assert "Traceback" not in out, out
    assert str(ckpt) in out and "imseg train --init" in out, out
    assert not (tmp_path / "hostile-pickle-ran").exists()
    assert len(_rows(run)) == 1  # nothing was trained or rewritten
    assert np.isfinite(float(_rows(run)[0]["train_loss"]))
