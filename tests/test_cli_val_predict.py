"""`imseg val` / `imseg predict` send each kind of run (semantic, instance, fine-tuning: its config.yaml's task) to
its own handler, which refuses the options of the other kinds before loading anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imseg.cli import app


def _run(root: Path, task: str | None) -> Path:
    """A run directory whose config.yaml records ``task`` (no config.yaml for None), without weights."""
    root.mkdir()
    if task is not None:
        (root / "config.yaml").write_text(f"task: {task}\n")
    return root


@pytest.mark.parametrize("task, args, message", [
    ("finetune", ["--tta"], "--tta apply to semantic runs only; {run} is a fine-tuning (SAM) run."),
    ("instance", ["--scales", "1,2", "--resize"],
     "--resize, --scales apply to semantic runs only; {run} is an instance (Mask R-CNN) run."),
])
def test_val_refuses_semantic_options_for_other_runs(tmp_path, task, args, message):
    run = _run(tmp_path / "r", task)
    result = CliRunner().invoke(app, ["val", "--run", str(run), *args], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert message.format(run=run) in result.output


@pytest.mark.parametrize("task, args, message", [
    (None, ["--format", "png", "--conf", "0.5"], "--conf, --format apply to instance runs only; {run} is a semantic run."),
    ("instance", ["--overlap", "0.5", "--tta"], "--overlap, --tta apply to semantic runs only; {run} is an instance"),
])
def test_predict_refuses_options_of_the_other_kind_before_loading(tmp_path, task, args, message):
    run = _run(tmp_path / "r", task)
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", str(image), "--run", str(run), "--out", str(tmp_path / "out"), *args],
                                terminal_width=300)
    assert result.exit_code == 2, result.output
    assert message.format(run=run) in result.output
    assert not (tmp_path / "out").exists()


def test_runs_without_weights_are_reported_by_their_own_loader(tmp_path):
    semantic, instance = _run(tmp_path / "s", None), _run(tmp_path / "i", "instance")
    for verb in (["val"], ["predict", str(tmp_path)]):
        result = CliRunner().invoke(app, [*verb, "--run", str(semantic)], terminal_width=300)
        assert result.exit_code == 2 and "no weights/best.pt or weights/last.pt" in result.output, result.output
        result = CliRunner().invoke(app, [*verb, "--run", str(instance)], terminal_width=300)
        assert result.exit_code == 2 and "An instance run directory has weights/best.pt" in result.output, result.output


def test_val_of_a_finetune_run_without_its_options_names_the_file(tmp_path):
    run = _run(tmp_path / "f", "finetune")
    result = CliRunner().invoke(app, ["val", "--run", str(run)], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert f"{run / 'config.yaml'}: the fine-tuning options are incomplete (no train: data," in result.output
    assert "Traceback" not in result.output
