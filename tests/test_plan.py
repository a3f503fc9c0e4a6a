"""The planner end to end: fingerprint of real files, `imseg train --time` (--plan stops, explicit options win),
a planned run that fits its budget and stores the test-time choice that imseg.load(run) then uses."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from imseg.cli import app


def _folder_dataset(root: Path, n: int = 8) -> Path:
    """RGB 96x128 images: a 40x40 square (class 1) and a 1 px horizontal line (class 2) on noise."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((96, 128), np.uint8)
        y, x = rng.integers(0, 40, 2)
        mask[y : y + 40, x : x + 40] = 1
        mask[81, :] = 2
        image = (rng.normal(100, 20, (96, 128, 3)) + 60 * mask[..., None]).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    spec = {"path": str(root), "names": ["background", "square", "line"],
            "train": [f"im{i}" for i in range(n - 2)], "val": [f"im{n - 2}", f"im{n - 1}"]}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return root / "data.yaml"


def test_fingerprint_measures_sizes_widths_and_class_shares(tmp_path):
    from imseg.semantic.data import build_datasets, load_data_config
    from imseg.semantic.plan import fingerprint

    config = load_data_config(_folder_dataset(tmp_path))
    fp = fingerprint(build_datasets(config, imgsz=None, augment="none"), list(config.names), config.ignore_index)
    assert (fp.num_train, fp.num_val, fp.median_size, fp.same_size, fp.grayscale) == (6, 2, (96, 128), True, False)
    assert fp.thinnest == pytest.approx(2.0)  # the 1 px line: 2 x its distance (1 px) to the background
    assert fp.class_fraction[1] == pytest.approx(1600 / (96 * 128), rel=1e-6)
    assert fp.class_fraction[2] == pytest.approx(128 / (96 * 128), rel=1e-6)
    assert sorted(fp.roundtrip) == [64, 96]  # sizes below the 128 px images
    # the 1 px line does not survive scaling down and back (IoU 0); the square does (~1): mean ~2/3
    assert all(0.6 < fp.roundtrip[size] < 0.7 for size in (64, 96))


def test_plan_prints_the_plan_and_stops_and_explicit_options_win(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    project = tmp_path / "runs"
    args = ["train", "--data", str(data), "--time", "3", "--plan", "--project", str(project), "--loss", "dice"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    assert out.startswith("plan for 3 min") and "probe:" in out and "schedule:" in out
    assert "loss = 'dice'\n      given" in out
    assert "imgsz = " in out and "epochs = " in out and "thinnest class 2.0 px" in out
    assert not project.exists()  # --plan trains nothing
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--plan"])
    assert result.exit_code != 0 and "give --time MINUTES" in result.output
    help_text = CliRunner().invoke(app, ["train", "--help"]).output
    assert "--time" in help_text and "--plan" in help_text and "plans" in help_text


def test_time_limit_stops_validates_and_saves_the_last_state(tmp_path):
    from imseg.semantic.train import train
    from test_train import NAMES, TINY, squares

    result = train(dict(TINY, epochs=100_000, time=0.05, project=str(tmp_path), name="t"), datasets=squares(),
                   class_names=NAMES)
    with open(result.run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 1 <= len(rows) < 100_000 and float(rows[-1]["val_miou"]) > 0
    assert (result.run_dir / "weights" / "last.pt").is_file() and (result.run_dir / "weights" / "best.pt").is_file()


@pytest.fixture(scope="module")
def planned_horses(data_dir, tmp_path_factory):
    """`imseg train --data horses.yaml --time 1` on 10 real horse photos (8 train, 4 val)."""
    root = data_dir / "weizmann-horse"
    split = json.loads((root / "split.json").read_text())
    tmp = tmp_path_factory.mktemp("planned")
    data = tmp / "horses.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "names": ["background", "horse"], "train": split["train"][:8],
                                    "val": split["val"][:4]}))
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", "--data", str(data), "--time", "1", "--project", str(tmp / "runs"),
                                          "--name", "h"])
    finally:
        torch.set_num_threads(threads)  # the plan picks this process's thread count
    assert result.exit_code == 0, result.output + repr(result.exception)
    return tmp / "runs" / "h", result.output


@pytest.mark.slow
def test_planned_run_follows_its_plan_within_the_budget(planned_horses):
    run, output = planned_horses
    assert output.startswith("plan for 1 min")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    plan, options = saved["plan"], saved["train"]
    for key, choice in plan["choices"].items():
        assert set(choice) == {"value", "reason"} and choice["reason"], key
    for key in ("model", "encoder", "batch", "loss", "augment", "model_kwargs", "class_weights"):
        assert options[key] == plan["choices"][key]["value"], key
    schedule, budget = plan["schedule"], 60.0
    used = plan["time_used"]  # the time the run took against its budget, printed and recorded
    assert used == {"seconds": plan["timings"]["total_s"], "budget_s": budget,
                    "share": pytest.approx(plan["timings"]["total_s"] / budget, abs=1e-3)}
    printed = re.search(r"time used: (\d+) s of the 60 s budget", output)
    assert printed and abs(int(printed.group(1)) - used["seconds"]) <= 1
    assert sum(plan["timings"][k] for k in ("planning_s", "stage1_s", "stage2_s", "tta_s")
               if k in plan["timings"]) <= used["seconds"] + 0.5
    shortest = schedule["planning_s"] + schedule["epoch_s"] + schedule["tta_s"] + 8.0  # one epoch, nothing less
    if shortest <= 0.85 * budget:  # the plan fills the budget and stays inside it
        assert 0.9 * budget <= schedule["planned_s"] <= 1.1 * budget
    else:  # a machine so busy that planning took the budget: the least there is, one epoch, one stage
        assert schedule["stage1"]["epochs"] == 1 and "stage2" not in schedule
    second = plan["choices"]["second_stage"]["value"]
    stage1 = run / "stage1" if second else run
    replanned = schedule["stage1"]["replanned"]  # the epochs refitted to the time left, as the load changed
    planned = replanned[-1]["epochs"] if replanned else schedule["stage1"]["epochs"]
    with open(stage1 / "metrics.csv") as fh:  # every planned epoch ran: the schedule annealed
        rows = list(csv.DictReader(fh))
    assert len(rows) == planned and float(rows[-1]["lr"]) < 0.2 * options["lr"] * (1 if not second else 10)
    if second:
        assert options["imgsz"] == second["imgsz"] and options["init"] == str(stage1 / "weights" / "last.pt")


@pytest.mark.slow
def test_test_time_choice_is_stored_and_used_by_load(planned_horses):
    import imseg
    from imseg.jobs import build_predict_job
    from imseg.semantic.checkpoints import load_checkpoint

    run, _ = planned_horses
    choice = yaml.safe_load((run / "config.yaml").read_text())["plan"]["tta"]
    assert len(choice["val_miou"]) == 10 and choice["reason"]
    stored = load_checkpoint(run / "weights" / "best.pt")["inference"]
    assert stored == {"resize": True, "tta": choice["tta"], "scales": choice["scales"]}
    model = imseg.load(str(run), device="cpu")
    assert (model.tta, list(model.scales)) == (choice["tta"], choice["scales"])
    job = build_predict_job(str(run), device="cpu")  # imseg predict
    assert (job.segmenter.tta, list(job.segmenter.scales)) == (choice["tta"], choice["scales"])
    plain = imseg.load(str(run), device="cpu", tta=False, scales=(1.0,))  # explicit options win
    assert (plain.tta, plain.scales) == (False, (1.0,))
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    image = next(iter(sorted((Path(data["path"]) / "images").glob("*.jpg"))))
    expected = model.predict(str(image))  # with the stored choice
    assert np.array_equal(expected, model.predict(str(image), tta=choice["tta"], scales=choice["scales"]))
    masks = model.segment(str(image))
    assert masks is not None


def test_roundtrip_of_a_huge_mask_is_measured_on_a_full_resolution_window():
    from imseg.semantic.plan.fingerprint import roundtrip_ious

    mask = np.zeros((3000, 4000), np.int64)
    mask[1000:2000, 1500:2500] = 1
    mask[1400:1404, :] = 2  # a 4 px line across a 4000 px image
    small, medium, large = roundtrip_ious(mask, 3, 255, [256, 1024, 2048])
    assert small < medium < 0.9 < large  # the line vanishes below half resolution


def test_time_report_shows_the_time_used_against_the_budget():
    from imseg.semantic.plan.runner import time_report

    line = time_report({"planning_s": 20.3, "stage1_s": 600.0, "tta_s": 29.6, "total_s": 652.4}, 840.0)
    assert line == "time used: 652 s of the 840 s budget (77.7%; planning 20 s, stage 1 600 s, test-time choice 30 s)"


@pytest.mark.parametrize("amp", [False, True])
def test_probe_times_the_planned_precision(tmp_path, amp):
    """The probe runs the steps as the planned epochs will: bf16 autocast when ``amp`` (Lightning's bf16-mixed)."""
    from imseg.semantic.data import build_datasets, load_data_config
    from imseg.semantic.plan.probe import probe
    from imseg.semantic.train import TrainConfig

    config = load_data_config(_folder_dataset(tmp_path))
    datasets = build_datasets(config, imgsz=64, augment="none")
    cfg = TrainConfig(data=str(tmp_path / "data.yaml"), imgsz=64, batch=2, amp=amp,
                      model_kwargs={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})
    seen = []
    original = torch.nn.Conv2d.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    torch.nn.Conv2d.forward = spy
    try:
        result = probe(cfg, datasets, num_classes=3, ignore_index=config.ignore_index, steps=2)
    finally:
        torch.nn.Conv2d.forward = original
    assert result.step_s > 0 and np.isfinite(result.val_image_s) and result.steps_per_epoch == 3
    assert set(seen) == ({torch.bfloat16} if amp else {torch.float32})
