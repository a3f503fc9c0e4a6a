"""`imseg val` and `imseg predict` on an instance run (a seeded, untrained Mask R-CNN saved as a run directory)
over real DSB 2018 nuclei: the metric tables, the written masks against `imseg.load(run).segment`, and the Ray
executor against the local one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from imseg.cli import app  # noqa: E402
from imseg.masks import Masks  # noqa: E402

DSB_IDS = [
    "72b18a405555ad491721e29454e5cd325055ce81a9e78524b56f2c058a4d2327",
    "d7ec8003735996458b56ccb8ae34d080eb2a6adabef931323239632515b4b220",
    "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1",
    "4829177d0b36abdd92c4ef0c7834cbc49f95232076bdd7e828f1f7cbb5ed80ec",
]


def make_run(run: Path, data: Path | None, seed: int = 0) -> Path:
    """A run directory (config.yaml, weights/best.pt) holding a seeded, untrained small Mask R-CNN."""
    from imseg.instance.model import build_maskrcnn, model_config
    from imseg.instance.train import save_checkpoint
    from imseg.semantic.run import write_yaml

    torch.manual_seed(seed)
    arch = model_config("resnet18", 1, 128, channels=32, proposals=32, detections=30)
    model = build_maskrcnn(arch).eval()
    train = {"data": None if data is None else str(data), "val": None, "val_fraction": 0.5, "seed": 0}
    meta = {"task": "instance", "model": arch, "class_names": ["nucleus"], "train": train, "score_threshold": 0.5}
    save_checkpoint(run / "weights" / "best.pt", model, meta)
    write_yaml(run / "config.yaml", {"task": "instance", "model": "maskrcnn", "class_names": ["nucleus"], "nc": 1,
                                     "train": train})
    return run


@pytest.fixture(scope="module")
def dsb_folder(data_dir, tmp_path_factory) -> Path:
    """Four DSB image folders (ID/images, ID/masks) copied to a temporary data set."""
    root = tmp_path_factory.mktemp("dsb")
    for name in DSB_IDS:
        shutil.copytree(data_dir / "dsb2018-nuclei" / "train" / name, root / name)
    return root


@pytest.fixture(scope="module")
def run(dsb_folder, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "exp", dsb_folder)


@pytest.fixture
def images(dsb_folder, tmp_path) -> Path:
    """The four nuclei images in one folder, plus a file that is not an image."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in DSB_IDS:
        shutil.copy(dsb_folder / name / "images" / f"{name}.png", folder / f"{name[:8]}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_val_prints_coco_and_dsb_tables_for_the_runs_val_split(run, dsb_folder):
    import imseg
    from imseg.instance.evaluate import evaluation_set
    from imseg.instance.formats import read_dataset
    from imseg.instance.train import split_dataset

    val = evaluation_set(run)
    expected = split_dataset(read_dataset(dsb_folder)[1], 0.5, 0)[1]
    assert [s.image_path for s in val.samples] == [s.image_path for s in expected.samples] and len(val) == 2
    metrics = imseg.load(run, device="cpu").evaluate(val, max_dets=30)
    result = CliRunner().invoke(app, ["val", "--run", str(run), "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for text in ("COCO AP", "per-class AP", "DSB 2018 score", "nucleus", "(2 images)"):
        assert text in result.output, text
    for key in ("mask_ap", "box_ap50", "dsb_score", "f1_50", "recall_50"):
        assert f"{metrics[key]:.4f}" in result.output, key
    # all four images with --data
    result = CliRunner().invoke(app, ["val", "--run", str(run), "--device", "cpu", "--data", str(dsb_folder)],
                                terminal_width=200)
    assert result.exit_code == 0 and "(4 images)" in result.output, result.output


def test_val_and_predict_refuse_options_of_the_other_task(run, images, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["val", "--run", str(run), "--tta"])
    assert result.exit_code == 2 and "--tta apply to semantic runs only" in result.output
    result = runner.invoke(app, ["predict", str(images), "--run", str(run), "--out", str(tmp_path / "o"),
                                 "--overlap", "0.5"])
    assert result.exit_code == 2 and "--overlap apply to semantic runs only" in result.output
    result = runner.invoke(app, ["predict", str(images), "--run", str(run), "--out", str(tmp_path / "o"),
                                 "--sam-checkpoint", str(tmp_path / "sam.pt")])
    assert result.exit_code == 2 and "only used with --refine sam" in result.output
    memory = make_run(tmp_path / "memory", None)
    result = runner.invoke(app, ["val", "--run", str(memory)])
    assert result.exit_code == 2 and "pass --data" in result.output


def test_predict_writes_the_segmenters_masks_labels_and_scores(run, images, tmp_path):
    import imseg

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(images), "--run", str(run), "--out", str(out), "--conf", "0.0",
                                      "--device", "cpu"])
    assert result.exit_code == 1, result.output  # the broken file fails, the others are written
    assert "broken.png" in result.output
    segmenter = imseg.load(run, device="cpu", score_threshold=0.0)
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 4 and {c["name"] for c in coco["categories"]} == {"nucleus"}
    total = 0
    for path in sorted(images.glob("*.png")):
        if path.name == "broken.png":
            continue
        expected = segmenter.segment(path)
        written = Masks.load(out / "masks" / f"{path.stem}.json")
        assert len(expected) > 0 and len(written) == len(expected)
        assert np.array_equal(written.masks, expected.masks)
        assert written.class_names == ["nucleus"] and np.array_equal(written.labels, expected.labels)
        np.testing.assert_allclose(written.scores, expected.scores, rtol=1e-6)
        assert (out / "overlays" / f"{path.stem}.png").is_file()
        total += len(expected)
    assert total and len(coco["annotations"]) == total


@pytest.mark.slow
def test_predict_on_ray_matches_local(run, images, tmp_path):
    ray = pytest.importorskip("ray")
    from imseg.batch import MARKER_DIR, run_batch
    from imseg.batch_ray import RayExecutor
    from imseg.jobs import build_instance_predict_job

    job = build_instance_predict_job(str(run), device="cpu", score_threshold=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker (cpus_per_worker=1): float sums in the same order, same scores
    try:
        local = run_batch(images, job, tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_batch(images, job, tmp_path / "ray", executor=RayExecutor(workers=2, cpus_per_worker=1))
    finally:
        ray.shutdown()
    assert (remote.done, remote.masks, remote.failed) == (local.done, local.masks, local.failed) == (4, local.masks, 1)
    assert remote.workers == 2 and local.masks > 0

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.relative_to(root).parts[0] != MARKER_DIR}

    assert files(tmp_path / "ray") == files(tmp_path / "local")  # masks, overlays and coco.json identical


@pytest.mark.slow
def test_sam_refinement_is_sams_own_box_answer(run, dsb_folder, make_sam_checkpoint, tmp_path):
    """Refined masks equal the official MobileSAM predictor's single-mask answer to each detected box (same random
    weights), labels and scores stay the detector's; the CLI writes the refined masks."""
    pytest.importorskip("mobile_sam")
    from mobile_sam import SamPredictor as OfficialPredictor

    import imseg
    from conftest import build_official_sam
    from imseg.instance.refine import SamRefiner
    from imseg.io import read_image

    checkpoint = make_sam_checkpoint("vit_t")
    detector = imseg.load(run, device="cpu", score_threshold=0.0)
    refiner = SamRefiner.build(detector, checkpoint, model="mobile-sam", device="cpu")
    path = dsb_folder / DSB_IDS[0] / "images" / f"{DSB_IDS[0]}.png"
    rgb = read_image(path)
    detections = detector.segment(rgb)
    refined = refiner.segment(path)
    assert len(detections) > 1 and len(refined) == len(detections)
    assert np.array_equal(refined.labels, detections.labels) and refined.class_names == ["nucleus"]
    np.testing.assert_array_equal(refined.scores, detections.scores)
    official = OfficialPredictor(build_official_sam("vit_t"))
    official.set_image(rgb)
    differ = 0
    for k, (x, y, w, h) in enumerate(detections.boxes):
        masks, iou, _ = official.predict(box=np.array([x, y, x + w, y + h]), multimask_output=False)
        differ += int((masks[0] != refined.masks[k]).sum())
        assert abs(float(iou[0]) - float(refined.fields["sam_iou"][k])) <= 1e-4
    assert differ <= 1e-3 * refined.masks.size  # official parity tolerance: near-threshold pixels only
    assert not np.array_equal(refined.masks, detections.masks)

    out = tmp_path / "refined"
    result = CliRunner().invoke(app, ["predict", str(path), "--run", str(run), "--out", str(out), "--conf", "0.0",
                                      "--device", "cpu", "--refine", "sam", "--sam-checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    written = Masks.load(out / "masks" / f"{path.stem}.json")
    assert np.array_equal(written.masks, refined.masks) and np.array_equal(written.labels, refined.labels)
    bad = CliRunner().invoke(app, ["predict", str(path), "--run", str(run), "--out", str(out), "--refine", "sam"])
    assert bad.exit_code == 2 and "needs --sam-checkpoint" in bad.output
