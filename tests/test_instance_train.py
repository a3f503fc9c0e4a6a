"""Mask R-CNN training, run directory, resume, inference and evaluation on real DSB 2018 nuclei."""

import csv

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from imseg.errors import CheckpointError, ConfigError, DatasetError, PromptError  # noqa: E402
from imseg.instance import InstanceDataset, InstanceMask, InstanceObject, InstanceSample  # noqa: E402
from imseg.instance.infer import InstanceSegmenter, is_instance_run, load_instance_run  # noqa: E402
from imseg.instance.model import build_maskrcnn, model_config  # noqa: E402
from imseg.instance.train import InstanceTorchDataset, split_dataset, train_instance  # noqa: E402
from imseg.masks import Masks  # noqa: E402

# four 256x256 fluorescence images with 7-8 nuclei each (subset_index.csv)
DSB_IDS = [
    "72b18a405555ad491721e29454e5cd325055ce81a9e78524b56f2c058a4d2327",
    "d7ec8003735996458b56ccb8ae34d080eb2a6adabef931323239632515b4b220",
    "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1",
    "4829177d0b36abdd92c4ef0c7834cbc49f95232076bdd7e828f1f7cbb5ed80ec",
]
TINY = {"imgsz": 128, "batch": 2, "backbone": "resnet18", "channels": 32, "proposals": 32, "detections": 30,
        "progress": False, "accelerator": "cpu", "lr": 5e-4}


@pytest.fixture(scope="module")
def dsb(data_dir):
    from imseg.instance.formats import read_dsb

    ds = read_dsb(data_dir / "dsb2018-nuclei", ids=DSB_IDS)
    assert len(ds) == 4 and all(len(s.objects) >= 7 for s in ds.samples)
    return ds


def _square(size, y, x, h, w):
    m = np.zeros(size, bool)
    m[y:y + h, x:x + w] = True
    return m


def _sample(tmp_path):
    from imseg.io import write_image

    path = tmp_path / "img.png"
    write_image(path, np.zeros((32, 48, 3), np.uint8))
    objects = [InstanceObject("a", InstanceMask.from_array(_square((32, 48), 2, 3, 5, 7))),
               InstanceObject("b", InstanceMask.from_array(_square((32, 48), 10, 20, 4, 4))),
               InstanceObject("a", InstanceMask.from_array(_square((32, 48), 20, 0, 12, 48)), iscrowd=True)]
    return InstanceSample(str(path), 32, 48, objects)


def test_dataset_items_leave_out_crowd_and_flip_boxes_with_masks(tmp_path):
    sample = _sample(tmp_path)
    empty = InstanceSample(sample.image_path, 32, 48, [])
    ds = InstanceTorchDataset(InstanceDataset(["a", "b"], [sample, empty]), ["a", "b"])
    image, target = ds[0]
    assert image.shape == (3, 32, 48) and image.dtype == torch.float32
    assert target["labels"].tolist() == [1, 2]  # the crowd region is not a target
    assert target["boxes"].tolist() == [[3, 2, 10, 7], [20, 10, 24, 14]]
    assert ds[1][1]["boxes"].shape == (0, 4) and ds[1][1]["masks"].shape == (0, 32, 48)
    flipped = InstanceTorchDataset(InstanceDataset(["a", "b"], [sample] * 40), ["a", "b"], flips=True)
    for i in range(40):
        _, t = flipped[i]
        for box, mask in zip(t["boxes"].tolist(), t["masks"].numpy(), strict=True):
            ys, xs = np.nonzero(mask)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert len({tuple(flipped[i][1]["boxes"][0].tolist()) for i in range(40)}) > 1  # flips happen


def test_split_is_seeded_and_disjoint():
    samples = [InstanceSample(f"{i}.png", 8, 8) for i in range(10)]
    ds = InstanceDataset(["x"], samples)
    train, val = split_dataset(ds, 0.3, seed=1)
    again = split_dataset(ds, 0.3, seed=1)
    assert [s.image_path for s in val.samples] == [s.image_path for s in again[1].samples]
    assert len(val) == 3 and len(train) == 7
    assert not {s.image_path for s in train.samples} & {s.image_path for s in val.samples}
    with pytest.raises(DatasetError, match="at least 2"):
        split_dataset(InstanceDataset(["x"], samples[:1]), 0.2, 0)


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="backbone 'vgg'"):
        train_instance({"data": InstanceDataset(["x"]), "backbone": "vgg"})
    with pytest.raises(ConfigError, match="unknown training option"):
        train_instance({"data": InstanceDataset(["x"]), "epoch": 3})
    with pytest.raises(DatasetError, match="0 validation images"):
        train_instance({"data": InstanceDataset(["x"], [InstanceSample("a", 4, 4)]), "val": InstanceDataset(["x"])})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_instance({"data": InstanceDataset(["x"], [InstanceSample("a", 4, 4)] * 2), "resume": tmp_path})
    with pytest.raises(CheckpointError, match="not an imseg instance checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "x.pt")
        load_instance_run(tmp_path / "x.pt")


def test_backbone_checkpoint_seeds_the_backbone(tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    config = model_config("resnet18", 2, 64, channels=16)
    model = build_maskrcnn(config, tmp_path / "r18.pth")
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert not torch.equal(build_maskrcnn(config).backbone.body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match="same --backbone"):
        build_maskrcnn(config, tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match="not found"):
        build_maskrcnn(config, tmp_path / "missing.pth")


def test_mobilenet_checkpoint_seeds_the_features(tmp_path):
    import torchvision

    net = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "mnv3.pth")
    model = build_maskrcnn(model_config("mobilenet_v3", 1, 64), tmp_path / "mnv3.pth")
    assert torch.equal(model.backbone.body["16"][0].weight, net.features[16][0].weight)


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50", "mobilenet_v3"])
def test_other_backbones_detect(backbone):
    model = build_maskrcnn(model_config(backbone, 3, 64, channels=16, proposals=16, detections=5)).eval()
    with torch.inference_mode():
        out = model([torch.rand(3, 48, 64)])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"} and out["masks"].shape[-2:] == (48, 64)


@pytest.fixture(scope="module")
def trained(dsb, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    train = InstanceDataset(dsb.categories, dsb.samples[:2])
    val = InstanceDataset(dsb.categories, dsb.samples[2:])
    # max_time=0: the time budget ends training after its first (whole, validated) epoch of three
    run = train_instance({**TINY, "data": train, "val": val, "epochs": 3, "max_time": 0, "project": project,
                          "name": "nuclei"})
    return run, val


@pytest.mark.slow
def test_train_writes_run_directory(trained):
    run, _ = trained
    for name in ("weights/best.pt", "weights/last.pt", "weights/last.ckpt", "metrics.csv", "config.yaml"):
        assert (run / name).is_file(), name
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "instance" and config["class_names"] == ["nucleus"] and config["train"]["imgsz"] == 128
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0"] and np.isfinite(float(rows[0]["train_loss"]))
    assert is_instance_run(run) and is_instance_run(run / "weights" / "best.pt") and not is_instance_run(run.parent)
    payload = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert payload["format"] == "imseg.instance" and payload["model"]["backbone"] == "resnet18"


@pytest.mark.slow
def test_resume_continues_from_last_ckpt(trained, tmp_path):
    import shutil

    run, val = trained
    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)
    again = train_instance({**TINY, "data": InstanceDataset(val.categories, val.samples), "val": val, "epochs": 2,
                            "resume": copy})
    assert again == copy
    rows = list(csv.DictReader((copy / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # epoch 0 was not trained again
    assert torch.load(copy / "weights" / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_load_segment_and_evaluate(trained):
    run, val = trained
    segmenter = load_instance_run(run, score_threshold=0.0)
    assert isinstance(segmenter, InstanceSegmenter)
    import imseg

    assert isinstance(imseg.load(run, score_threshold=0.0), InstanceSegmenter)  # routed by the run's task
    sample = val.samples[0]
    masks = segmenter.segment(sample.image_path)
    assert isinstance(masks, Masks) and masks.image_size == (sample.height, sample.width)
    assert masks.class_names == ["nucleus"] and masks.labels is not None and len(masks.labels) == len(masks)
    assert masks.boxes.shape == (len(masks), 4) and len(masks.scores) == len(masks)
    assert len(masks) > 0  # score threshold 0: an untrained network still proposes boxes
    assert (masks.labels == 0).all() and np.all(np.diff(masks.scores) <= 0)
    with pytest.raises(PromptError):
        segmenter.segment(sample.image_path, points=[(1, 1)], labels=[1])
    metrics = segmenter.evaluate(val)
    for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "dsb_score", "f1_50"):
        assert np.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, key
    assert len(metrics["per_image"]) == 2 and set(metrics["per_class_mask_ap"]) == {"nucleus"}


def test_cli_instance_task_refuses_semantic_options_and_missing_data(tmp_path):
    from typer.testing import CliRunner

    from imseg.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--task", "instance", "--data", str(tmp_path), "--loss", "ce"])
    assert result.exit_code == 2 and "--loss apply to semantic training only" in result.output
    result = runner.invoke(app, ["train", "--task", "instance"])
    assert result.exit_code == 2 and "--task instance needs --data" in result.output
    result = runner.invoke(app, ["train", "--task", "panoptic", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "--task must be semantic or instance" in result.output
    result = runner.invoke(app, ["train", "--task", "instance", "--data", str(tmp_path / "none"), "--project",
                                 str(tmp_path / "runs")])
    assert result.exit_code == 2 and "Traceback" not in result.output
