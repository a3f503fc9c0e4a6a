"""``backend="auto"``: the candidates of the rule, the pick (fastest within the drift limit), the cache of the
decision (written once, reused, re-measured when its key changes, survives a corrupt file), a real measured
load whose masks match torch fp32, and the CLI's one-line report."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import imseg
from conftest import mask_iou
from imseg import engines_auto
from imseg.engines_auto import MIN_IOU, EngineChoice, Row, candidates, pick
from imseg.errors import CheckpointError, ConfigError


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty imseg cache, no forced re-measurement."""
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(engines_auto.REMEASURE_ENV, raising=False)
    return tmp_path / "home"


@pytest.fixture
def fake_measure(monkeypatch):
    """Replaces the measurement by given rows; ``calls`` counts the measurements."""

    class Fake:
        calls = 0
        rows = [Row("torch", "fp32", 1.0, 1.0)]

        def __call__(self, target, pairs):
            self.calls += 1
            return [Row(r.engine, r.precision, r.seconds, r.iou, r.error) for r in self.rows]

    fake = Fake()
    monkeypatch.setattr(engines_auto, "measure_all", fake)
    return fake


@pytest.fixture
def checkpoint(mobile_sam_checkpoint, tmp_path):
    """A private copy of the random MobileSAM checkpoint (tests change its mtime)."""
    path = tmp_path / "mobile_sam.pt"
    shutil.copy(mobile_sam_checkpoint, path)
    return path


def test_pick_is_the_fastest_passing_candidate_never_a_faster_drifting_one():
    rows = [Row("torch", "fp32", 1.0, 1.0), Row("torch", "bf16", 0.4, MIN_IOU - 0.01),
            Row("openvino", "bf16", None, None, "ExportError: no"), Row("onnxruntime", "fp32", 0.8, 0.999),
            Row("openvino", "fp32", 0.9, MIN_IOU)]
    assert not rows[1].passed and not rows[2].passed and rows[4].passed
    assert pick(rows).label == "onnxruntime fp32"
    assert pick(rows, [("torch", "fp32"), ("openvino", "fp32")]).label == "openvino fp32"
    assert pick(rows, [("torch", "bf16")]) is None


def test_candidates_follow_native_bf16_imports_and_the_precision_asked(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "1")
    assert candidates() == [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
                            ("openvino", "bf16")]
    assert candidates("bf16") == [("torch", "bf16"), ("openvino", "bf16")]
    assert candidates(exported=False) == [("torch", "fp32"), ("torch", "bf16")]
    monkeypatch.setenv("IMSEG_NATIVE_BF16", "0")
    assert candidates() == [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    assert candidates("fp32", exported=False) == [("torch", "fp32")]


def test_load_uses_the_pick_and_caches_it(home, fake_measure, checkpoint):
    fake_measure.rows = [Row("torch", "fp32", 1.0, 1.0), Row("torch", "bf16", 0.5, 0.995),
                         Row("openvino", "bf16", 0.3, 0.9)]  # fastest, but beyond the drift limit
    seg = imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert (seg.engine_choice.engine, seg.engine_choice.precision, seg.precision) == ("torch", "bf16", "bf16")
    assert type(seg).__name__ == "SamSegmenter" and not seg.engine_choice.cached and fake_measure.calls == 1
    stored = json.loads((home / engines_auto.CACHE_FILE).read_text())
    (entry,) = stored["entries"].values()
    assert entry["key"]["model"] == "mobile-sam" and str(checkpoint.resolve()) in entry["key"]["checkpoint"]
    assert entry["choice"]["engine"] == "torch" and len(entry["choice"]["rows"]) == 3
    again = imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert fake_measure.calls == 1 and again.engine_choice.cached and again.precision == "bf16"
    assert again.engine_choice.rows == seg.engine_choice.rows
    line = engines_auto.choice_line(again)
    assert line.startswith("auto: torch bf16, 0.50 s per image vs torch fp32 1.00 s; mask IoU 0.995") and "cached" in line


def test_a_changed_key_measures_again(home, fake_measure, checkpoint, monkeypatch):
    import torch

    imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert fake_measure.calls == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
        assert fake_measure.calls == 2
    finally:
        torch.set_num_threads(threads)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert fake_measure.calls == 3
    imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu", precision="fp32")  # another restriction
    assert fake_measure.calls == 4
    imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")  # every key above is stored side by side
    assert fake_measure.calls == 4
    monkeypatch.setenv(engines_auto.REMEASURE_ENV, "1")
    imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert fake_measure.calls == 5


@pytest.mark.parametrize("content", ["{not json", '{"entries": []}', "\udcff"])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(home, fake_measure, checkpoint, content):
    home.mkdir(parents=True)
    (home / engines_auto.CACHE_FILE).write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.warns(UserWarning, match="unreadable engine-choice cache"):
        seg = imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert fake_measure.calls == 1 and seg.engine_choice.engine == "torch"
    assert len(json.loads((home / engines_auto.CACHE_FILE).read_text())["entries"]) == 1
    imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    assert fake_measure.calls == 1


def test_unsupported_models_and_precisions_are_clear_errors(home, fake_measure, checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="otsu is a classical model: use backend='torch'"):
        imseg.load("otsu", backend="auto", device="cpu")
    with pytest.raises(CheckpointError, match="no weights/best.pt or weights/last.pt"):
        imseg.load(tmp_path, backend="auto", device="cpu")
    (tmp_path / "imseg_export.json").write_text("{}")
    with pytest.raises(ConfigError, match="is an export directory.*backend='onnxruntime' or 'openvino'"):
        imseg.load(tmp_path, backend="auto", device="cpu")
    with pytest.raises(ConfigError, match="does not pick int8"):
        imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu", precision="int8")
    fake_measure.rows = [Row("torch", "fp32", 1.0, 1.0), Row("torch", "bf16", 0.5, 0.9)]
    with pytest.raises(ConfigError, match="no bf16 engine for mobile-sam stays within mask IoU >= 0.99"):
        imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu", precision="bf16")
    assert fake_measure.calls == 1  # the errors before it measured nothing


def test_measured_load_masks_match_torch_fp32(home, checkpoint, monkeypatch):
    """A real measurement of the torch candidates (no export: the ONNX engines are left out here; the slow
    test below measures them all)."""
    monkeypatch.setattr(engines_auto, "_imports", lambda module: False)
    monkeypatch.setattr(engines_auto, "TIMED_CALLS", 1)
    seg = imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    _check_measured(seg, checkpoint, n_rows=len(candidates(exported=False)))


@pytest.mark.slow
def test_measured_load_over_every_engine(home, checkpoint):
    seg = imseg.load("mobile-sam", checkpoint=checkpoint, backend="auto", device="cpu")
    _check_measured(seg, checkpoint, n_rows=len(candidates()))


def _check_measured(seg, checkpoint, n_rows):
    """The choice is the fastest passing measured row, and ``segment()`` gives torch fp32's masks on the probe:
    for each probe point, each of fp32's three candidates is found among the engine's (the order follows the
    predicted IoU, which near-ties of random weights may swap) with mean IoU >= MIN_IOU."""
    choice: EngineChoice = seg.engine_choice
    assert len(choice.rows) == n_rows and all(r.error is None and r.seconds > 0 for r in choice.rows)
    assert choice.row("torch", "fp32").passed and pick(choice.rows).label == f"{choice.engine} {choice.precision}"
    reference = imseg.load("mobile-sam", checkpoint=checkpoint, device="cpu", precision="fp32")
    rgb, points = engines_auto.probe()
    ious = []
    for point in points:
        got, ref = (s.segment(rgb, points=point, labels=[1], multimask=True).masks for s in (seg, reference))
        assert got.shape == ref.shape == (3, *rgb.shape[:2])
        ious += [max(mask_iou(a, b) for b in got) for a in ref]
    assert np.mean(ious) >= MIN_IOU


def test_cli_segment_prints_the_choice(home, fake_measure, checkpoint, tmp_path, sample_image):
    from imseg.cli import app
    from imseg.io import write_image

    write_image(tmp_path / "in.png", sample_image)
    out = tmp_path / "out"
    args = ["segment", tmp_path / "in.png", "--model", "mobile-sam", "--checkpoint", checkpoint, "--backend", "auto",
            "--device", "cpu", "--points", "100,80", "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "auto: torch fp32, 1.00 s per image; mask IoU 1.000 (fastest with mask IoU >= 0.99" in result.output
    assert fake_measure.calls == 1 and list((out / "masks").iterdir())


def test_segment_resumes_only_what_the_same_engine_did(home, fake_measure, checkpoint, tmp_path, sample_image,
                                                         monkeypatch):
    """`--backend auto` resumes images done by the engine it picks now; after a re-measurement that picks
    another engine, the image is segmented again rather than kept from the other engine."""
    from imseg.cli import app
    from imseg.io import write_image

    write_image(tmp_path / "in.png", sample_image)
    out = tmp_path / "out"
    args = [str(a) for a in ["segment", tmp_path / "in.png", "--model", "mobile-sam", "--checkpoint", checkpoint,
                             "--backend", "auto", "--device", "cpu", "--points", "100,80", "--out", out]]
    assert CliRunner().invoke(app, args).exit_code == 0
    first = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == first
    fake_measure.rows = [Row("torch", "fp32", 1.0, 1.0), Row("torch", "bf16", 0.5, 1.0)]
    monkeypatch.setenv(engines_auto.REMEASURE_ENV, "1")
    other = CliRunner().invoke(app, args)
    assert other.exit_code == 0, other.output
    assert "auto: torch bf16" in other.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} != first


# ----------------------------------------------------------------------------- SAM 2.1
def test_candidates_are_family_aware(monkeypatch):
    """SAM 2.1 has no OpenVINO engine, so OpenVINO is never a SAM 2.1 candidate; semantic runs get every engine."""
    imports = {"onnxruntime": True, "openvino": True}
    monkeypatch.setattr(engines_auto, "_imports", lambda module: imports[module])
    monkeypatch.setattr("imseg.precision.native_bf16", lambda: True)
    every = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
    assert candidates(family="sam") == candidates(family="semantic") == every
    assert candidates(family="sam2") == every[:3]
    assert candidates("bf16", family="sam2") == [("torch", "bf16")]
    assert candidates(family="sam2", exported=False) == every[:2]
    imports["onnxruntime"] = False
    assert candidates(family="semantic") == [every[0], every[1], every[3], every[4]]
    assert candidates(family="sam2") == every[:2]
    monkeypatch.setattr("imseg.precision.native_bf16", lambda: False)
    assert candidates(family="semantic") == [every[0], every[3]]
    assert candidates("bf16", family="semantic") == [every[1], every[4]]  # asked for: emulated bf16 is measured too
    with pytest.raises(ConfigError, match="not 'classical'"):
        candidates(family="classical")


def test_sam2_measured_load_masks_match_torch_fp32(home, monkeypatch):
    """SAM 2.1's segmenter measured for real (random weights from the fixed seed: torch candidates only), the
    choice cached under the model's name, and segment() giving torch fp32's masks on the probe."""
    monkeypatch.setattr(engines_auto, "TIMED_CALLS", 1)
    seg = imseg.load("sam2.1-hiera-t", backend="auto", device="cpu", allow_random=True)
    choice: EngineChoice = seg.engine_choice
    assert type(seg).__name__ == "Sam2Segmenter" and seg.precision == choice.precision
    assert [(r.engine, r.precision) for r in choice.rows] == candidates(exported=False, family="sam2")
    assert all(r.error is None and r.seconds > 0 for r in choice.rows)
    assert pick(choice.rows).label == f"{choice.engine} {choice.precision}"
    (entry,) = json.loads((home / engines_auto.CACHE_FILE).read_text())["entries"].values()
    assert entry["key"]["model"] == "sam2.1-hiera-t" and entry["key"]["checkpoint"] == "random"
    with engines_auto.seeded():  # the same random network the rule measured
        reference = imseg.load("sam2.1-hiera-t", device="cpu", precision="fp32", allow_random=True)
    rgb, points = engines_auto.probe()
    ious = []
    for point in points[:2]:
        got, ref = (s.segment(rgb, points=point, labels=[1], multimask=True).masks for s in (seg, reference))
        assert got.shape == ref.shape == (3, *rgb.shape[:2])
        ious += [max(mask_iou(a, b) for b in got) for a in ref]
    assert np.mean(ious) >= MIN_IOU


# ----------------------------------------------------------------------------- semantic runs
CLASSES = ["background", "square", "line"]


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    """A run directory as `imseg train` writes it (weights/best.pt of a tiny U-Net, config.yaml naming its data),
    and the folder dataset it records: RGB 48x64 images of a square (class 1) and a line (class 2) on noise."""
    import torch
    import yaml
    from PIL import Image

    from imseg.semantic.models import create_model, model_config
    from imseg.semantic.train import save_checkpoint

    root = tmp_path_factory.mktemp("auto_semantic")
    data = root / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((48, 64), np.uint8)
        mask[8 + 4 * i : 28 + 4 * i, 10 + 6 * i : 30 + 6 * i] = 1
        mask[40, :] = 2
        image = (rng.normal(100, 20, (48, 64, 3)) + 60 * mask[..., None]).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(data / "images" / f"im{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"im{i}.png")
    spec = {"path": str(data), "names": CLASSES, "train": ["im0", "im1"], "val": ["im2"]}
    (data / "data.yaml").write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)
    kwargs = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
    model = create_model("unet", encoder="resnet18", num_classes=len(CLASSES), **kwargs)
    run = root / "runs" / "exp"
    save_checkpoint(run / "weights" / "best.pt", model, {
        "model": model_config("unet", "resnet18", len(CLASSES), **kwargs), "class_names": CLASSES, "imgsz": 64,
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "semantic", "data": str(data / "data.yaml")}))
    return run


def test_label_iou_is_the_mean_class_iou_and_decides_the_pass():
    from imseg.engines_auto_semantic import label_iou

    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    assert label_iou(ref, ref) == 1.0
    got = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])  # class 0: 3/4, class 1: 4/5
    assert label_iou(ref, got) == pytest.approx((3 / 4 + 4 / 5) / 2)
    got[0, 0] = 2  # a class only the candidate sees counts as IoU 0
    assert label_iou(ref, got) == pytest.approx((2 / 4 + 4 / 5 + 0) / 3)
    big = np.zeros((100, 100), int)
    big[:50] = 1
    one_off = big.copy()
    one_off[50, :50] = 1  # 50 of 10,000 pixels moved from class 0 to 1: mean IoU ~0.995, a pass
    assert Row("torch", "bf16", 1.0, label_iou(big, one_off)).passed
    one_off[51:53] = 1  # 250 pixels: mean IoU ~0.975, beyond the limit
    assert not Row("torch", "bf16", 1.0, label_iou(big, one_off)).passed


def test_semantic_probe_is_the_first_validation_image_else_the_astronaut(semantic_run, tmp_path):
    from skimage import data

    from imseg.engines_auto_semantic import probe_image
    from imseg.io import read_image

    data_yaml = semantic_run.parent.parent / "data" / "data.yaml"
    assert np.array_equal(probe_image(semantic_run), read_image(data_yaml.parent / "images" / "im2.png"))
    moved = tmp_path / "exp"
    shutil.copytree(semantic_run, moved)
    (moved / "config.yaml").write_text(f"task: semantic\ndata: {tmp_path / 'gone.yaml'}\n")
    assert np.array_equal(probe_image(moved), data.astronaut())


def test_semantic_run_measured_load_labels_match_torch_fp32_and_the_choice_is_reused(home, semantic_run,
                                                                                       monkeypatch):
    """Every engine measured for real on the run's first validation image (the ONNX engines on an export of
    its weights made once into the cache); the pick predicts torch fp32's labels; a second load reuses it."""
    from imseg.engines_auto_semantic import label_iou, probe_image

    monkeypatch.setattr(engines_auto, "TIMED_CALLS", 1)
    measured = []
    real = engines_auto.measure_all
    monkeypatch.setattr(engines_auto, "measure_all", lambda *a: measured.append(1) or real(*a))
    seg = imseg.load(semantic_run, backend="auto", device="cpu")
    choice: EngineChoice = seg.engine_choice
    assert [(r.engine, r.precision) for r in choice.rows] == candidates(family="semantic")
    assert all(r.error is None and r.seconds > 0 for r in choice.rows), choice.rows
    assert pick(choice.rows).label == f"{choice.engine} {choice.precision}" and not choice.cached
    if any(engine != "torch" for engine, _ in candidates(family="semantic")):
        (export,) = (home / "onnx").glob("run-exp-*")
        assert (export / "imseg_export.json").is_file()
    reference = imseg.load(semantic_run, device="cpu", precision="fp32")
    for rgb in (probe_image(semantic_run), np.ascontiguousarray(np.rot90(probe_image(semantic_run)))):
        ref = reference.predict(rgb)
        got = seg.probabilities(rgb).argmax(0)
        assert label_iou(ref, got) >= MIN_IOU
        if choice.precision == "fp32":
            assert np.array_equal(ref, got)
    again = imseg.load(semantic_run, backend="auto", device="cpu")
    assert len(measured) == 1 and again.engine_choice.cached and again.engine_choice.rows == choice.rows
    (entry,) = json.loads((home / engines_auto.CACHE_FILE).read_text())["entries"].values()
    assert entry["key"]["model"] == f"run:{semantic_run.resolve()}"
    assert entry["key"]["weights"].startswith(f"{(semantic_run / 'weights' / 'best.pt').resolve()}:")
    imseg.load(semantic_run, backend="auto", device="cpu", imgsz=32)  # other options: another measurement
    assert len(measured) == 2


def test_semantic_runs_refuse_what_auto_cannot_measure(home, fake_measure, semantic_run, tmp_path):
    with pytest.raises(ConfigError, match="takes the options every engine shares.*not overlap"):
        imseg.load(semantic_run, backend="auto", device="cpu", overlap=0.5)
    instance = tmp_path / "inst"
    shutil.copytree(semantic_run, instance)
    (instance / "config.yaml").write_text("task: instance\n")
    with pytest.raises(ConfigError, match="is an instance \\(Mask R-CNN\\) run: backend='auto' measures semantic"):
        imseg.load(instance, backend="auto", device="cpu")
    assert fake_measure.calls == 0


def test_cli_segment_prints_the_choice_for_a_semantic_run(home, fake_measure, semantic_run, tmp_path, sample_image):
    from imseg.cli import app
    from imseg.io import write_image

    fake_measure.rows = [Row("torch", "fp32", 1.0, 1.0), Row("torch", "bf16", 0.5, 0.995)]
    write_image(tmp_path / "in.png", sample_image)
    out = tmp_path / "out"
    args = ["segment", tmp_path / "in.png", "--model", semantic_run, "--backend", "auto", "--device", "cpu",
            "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "auto: torch bf16, 0.50 s per image vs torch fp32 1.00 s; mask IoU 0.995" in result.output
    assert fake_measure.calls == 1 and list((out / "masks").iterdir())
