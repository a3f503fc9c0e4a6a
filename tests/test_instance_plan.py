"""The instance planner: its decisions on synthetic fingerprints, the fingerprint of a synthetic data set, the
budget split on synthetic timings, and `imseg train --task instance --time --plan` on a small synthetic data set."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from imseg.instance import InstanceDataset, InstanceMask, InstanceObject, InstanceSample
from imseg.instance.plan import (
    CPU_MAX_SIZE,
    MIN_OBJECT_PX,
    MIN_TOUCHING_PX,
    NATIVE_CROP,
    InstanceFingerprint,
    instance_fingerprint,
    plan_rules,
    touching_objects,
)
from imseg.semantic.plan.probe import ProbeResult
from imseg.semantic.plan.rules import Machine

CPU, GPU = Machine(cpus=2, gpu=False), Machine(cpus=8, gpu=True)


def _fp(**changes) -> InstanceFingerprint:
    """A nuclei-like training set: 120 images of 256 px, ~30 objects of ~16 px each, a few touching."""
    base = InstanceFingerprint(num_train=120, num_val=30, class_names=["nucleus"], median_size=(256, 256),
                               max_side=256, grayscale=False, objects_median=30.0, objects_max=80,
                               small_extent=10 / 256, small_px=10.0, small_area=100.0, touching=0.05)
    return replace(base, **changes)


def _values(choices) -> dict:
    return {k: c.value for k, c in choices.items()}


def test_tiny_objects_raise_the_input_size_until_they_keep_their_pixels():
    large = _values(plan_rules(_fp(median_size=(1024, 1024), small_extent=0.2), CPU))
    tiny = plan_rules(_fp(median_size=(1024, 1024), small_extent=0.02), CPU)
    assert large["imgsz"] == 64  # the smallest input already keeps large objects whole
    assert tiny["imgsz"].value == 320 and tiny["imgsz"].value * 0.02 >= MIN_OBJECT_PX > 256 * 0.02
    assert "6 px" in tiny["imgsz"].reason
    # where objects touch, the cores apart inside them need more pixels
    touching = plan_rules(_fp(median_size=(1024, 1024), small_extent=0.02, touching=0.3), CPU)
    assert touching["imgsz"].value == 448 and touching["imgsz"].value * 0.02 >= MIN_TOUCHING_PX
    assert "touch" in touching["imgsz"].reason
    # fragments are judged against the small objects' own area
    assert _values(plan_rules(_fp(small_area=16.0), CPU))["min_area"] == 4
    assert _values(plan_rules(_fp(small_area=400.0), CPU))["min_area"] == 64


def test_huge_images_are_capped_by_what_a_step_affords_and_small_images_are_not_upsampled():
    huge = plan_rules(_fp(median_size=(3000, 4000), max_side=4000, small_extent=0.004), CPU, {"model": "maskrcnn"})
    assert huge["imgsz"].value == CPU_MAX_SIZE and "CPU" in huge["imgsz"].reason and "native" not in huge
    assert huge["batch"].value == 2  # large inputs, small batches
    assert _values(plan_rules(_fp(median_size=(3000, 4000), small_extent=0.004), GPU))["imgsz"] == 1024
    small = plan_rules(_fp(median_size=(90, 120), max_side=120, small_extent=0.01), CPU)
    assert small["imgsz"].value == 128 and "typical image" in small["imgsz"].reason


def test_mixed_sizes_with_tiny_touching_objects_train_on_native_crops():
    # nuclei-like: typical images of 256-320 px, some over 1000 px, small objects 8 px across that touch; every
    # affordable letterbox shrinks the large images' nuclei below the rims' pixels
    mixed = _fp(median_size=(256, 320), max_side=1388, small_extent=0.008, small_px=8.0, touching=0.3)
    cpu = plan_rules(mixed, CPU)
    assert cpu["native"].value is True and "native-resolution crops" in cpu["native"].reason
    assert "2.6 px" in cpu["native"].reason and "1388 px" in cpu["native"].reason
    assert cpu["imgsz"].value == NATIVE_CROP and "CPU step" in cpu["imgsz"].reason
    assert cpu["batch"].value == 4 and cpu["model"].value == "unet-watershed"
    # crops are never larger than the typical image
    narrow = _values(plan_rules(replace(mixed, median_size=(200, 640)), CPU))
    assert narrow["native"] is True and narrow["imgsz"] == 192
    assert _values(plan_rules(replace(mixed, median_size=(1024, 1024), small_extent=0.004), GPU))["imgsz"] == 2 * NATIVE_CROP
    # a given size is the crop's
    given = _values(plan_rules(mixed, CPU, {"imgsz": 128}))
    assert given["native"] is True and given["imgsz"] == 128
    # Mask R-CNN keeps its letterbox
    assert "native" not in plan_rules(mixed, CPU, {"model": "maskrcnn"})


def test_small_images_with_big_objects_keep_the_letterbox():
    plain = plan_rules(_fp(), CPU)
    assert plain["native"].value is False and plain["imgsz"].value == 160 and "letterbox" in plain["native"].reason
    # tiny objects, but no image larger than the letterbox: it does not shrink them
    small = plan_rules(_fp(median_size=(90, 120), max_side=120, small_extent=0.01), CPU)
    assert small["native"].value is False and "no image is larger" in small["native"].reason
    # large images whose objects survive the letterbox
    assert not plan_rules(_fp(median_size=(1024, 1024), max_side=1400, small_extent=0.02), CPU)["native"].value


def test_many_objects_per_image():
    dense = _values(plan_rules(_fp(objects_median=150.0, objects_max=400), CPU))
    assert dense["model"] == "unet-watershed" and dense["augment"]["rotate90"] == 0.5 and dense["augment"]["vflip"]
    sparse = _values(plan_rules(_fp(objects_median=2.0, objects_max=4), CPU))
    assert sparse["augment"]["rotate90"] == 0 and sparse["augment"]["vflip"] == 0 and sparse["augment"]["hflip"]
    classes = _values(plan_rules(_fp(class_names=["cell", "debris"], objects_median=150.0, objects_max=400), CPU))
    assert classes["model"] == "maskrcnn" and classes["backbone"] == "resnet18"
    assert classes["detections"] == 500 and classes["proposals"] == 2000 and "augment" not in classes
    assert _values(plan_rules(_fp(class_names=["a", "b"], objects_max=10), CPU))["detections"] == 100


def test_few_images_keep_two_steps_an_epoch():
    few = plan_rules(_fp(num_train=5, median_size=(128, 128), small_extent=0.1), CPU)
    assert few["batch"].value == 2 and "at least 2 steps" in few["batch"].reason
    assert _values(plan_rules(_fp(median_size=(128, 128), small_extent=0.1), CPU))["batch"] == 8
    assert few["lr"].value == pytest.approx(1e-3 * np.sqrt(2), rel=1e-3)


def test_grayscale_and_given_options():
    gray = _values(plan_rules(_fp(grayscale=True), CPU))
    assert gray["augment"]["color_jitter"] == {"brightness": 0.2, "contrast": 0.2}
    given = plan_rules(_fp(median_size=(1024, 1024), small_extent=0.02), CPU, {"imgsz": 128, "epochs": 7})
    assert given["imgsz"].value == 128 and given["imgsz"].reason == "given" and given["epochs"].value == 7
    assert given["batch"].value == 8  # later rules follow the given size
    forced = _values(plan_rules(_fp(), CPU, {"model": "maskrcnn"}))
    assert forced["model"] == "maskrcnn" and "backbone" in forced and "encoder" not in forced
    # Mask R-CNN's smallest anchor (16 px) wants more than the U-Net's cores; both stay within the typical image
    assert forced["imgsz"] == 256 and _values(plan_rules(_fp(), CPU))["imgsz"] == 160


def _square(y, x, h, w, size=(40, 60)):
    m = np.zeros(size, bool)
    m[y:y + h, x:x + w] = True
    return m


def test_fingerprint_measures_objects_and_contacts(tmp_path):
    from imseg.io import write_image

    samples = []
    for i, masks in enumerate([[_square(2, 2, 8, 8), _square(2, 10, 8, 8), _square(25, 30, 10, 20)],
                               [_square(5, 5, 6, 6)], []]):
        path = tmp_path / f"{i}.png"
        write_image(path, np.full((40, 60, 3), 50 * i, np.uint8))
        samples.append(InstanceSample(str(path), 40, 60, [InstanceObject("cell", InstanceMask.from_array(m))
                                                          for m in masks]))
    fp = instance_fingerprint(InstanceDataset(["cell"], samples), num_val=2)
    assert fp.num_train == 3 and fp.num_val == 2 and fp.median_size == (40, 60) and fp.grayscale
    assert fp.objects_median == 1 and fp.objects_max == 3
    assert fp.touching == pytest.approx(2 / 4)  # the two side-by-side squares
    areas = [64, 64, 200, 36]
    assert fp.small_area == pytest.approx(np.percentile(areas, 10))
    assert fp.small_extent == pytest.approx(np.percentile(np.sqrt(areas), 10) / 60)
    ids = np.zeros((5, 5), int)
    ids[0, :2], ids[0, 2:4], ids[3, 3] = 1, 2, 3
    assert touching_objects(ids) == {1, 2}


def test_background_levels_pick_the_normalisation(tmp_path):
    from imseg.instance.plan import choose_normalize
    from imseg.instance.unet import background_level
    from imseg.io import write_image

    dark = np.full((40, 60, 3), 10, np.uint8)
    dark[5:15, 5:15] = 200  # a bright object on a dark field
    bright = 255 - dark
    assert background_level(dark) < 0.1 and background_level(bright) > 0.9
    assert background_level(np.full((8, 8, 3), 9, np.uint8)) == 0.5  # flat: neither
    samples = []
    for i, rgb in enumerate([dark, bright, dark, dark]):
        write_image(tmp_path / f"{i}.png", rgb)
        samples.append(InstanceSample(str(tmp_path / f"{i}.png"), 40, 60,
                                      [InstanceObject("cell", InstanceMask.from_array(_square(5, 5, 10, 10)))]))
    fp = instance_fingerprint(InstanceDataset(["cell"], samples), num_val=1)
    assert fp.bright_background == pytest.approx(0.25) and fp.unclear_background == 0.0
    assert choose_normalize(fp).value == "stretch-dark" and "25% of the images" in choose_normalize(fp).reason
    assert _values(plan_rules(fp, CPU))["normalize"] == "stretch-dark" and _values(plan_rules(fp, CPU))["tta"] is True
    # one polarity throughout, or a background that is neither: stretch only, nothing inverted
    assert choose_normalize(_fp(bright_background=0.0)).value == "stretch"
    assert choose_normalize(_fp(bright_background=1.0)).value == "stretch"
    assert choose_normalize(_fp(bright_background=0.25, unclear_background=0.05)).value == "stretch-dark"  # a few
    unclear = choose_normalize(_fp(bright_background=0.25, unclear_background=0.2))
    assert unclear.value == "stretch" and "20% of the images have backgrounds neither" in unclear.reason
    # Mask R-CNN normalises its own way and has no test-time flips
    assert not {"normalize", "tta"} & set(plan_rules(_fp(class_names=["a", "b"]), CPU))


def test_the_timing_probe_writes_its_images_as_the_planned_training_does(tmp_path, monkeypatch):
    """The probe trains on pixel images written with the plan's normalisation, as training will write them."""
    import imseg.instance.unet as unet
    import imseg.semantic.plan.probe as probe_module
    from imseg.instance.planner import probe_unet
    from imseg.io import read_image, write_image

    rgb = np.full((64, 64, 3), 40, np.uint8)
    rgb[10:30, 10:30] = 90  # a dim object: stretching moves its level
    samples = []
    for i in range(4):
        write_image(tmp_path / f"{i}.png", rgb)
        samples.append(InstanceSample(str(tmp_path / f"{i}.png"), 64, 64,
                                      [InstanceObject("cell", InstanceMask.from_array(_square(10, 10, 20, 20, size=(64, 64))))]))
    dataset = InstanceDataset(["cell"], samples)
    written = []
    real_write = unet.write_pixel_data

    def recording_write(train, val, root, core=unet.CORE, normalize="none"):
        data = real_write(train, val, root, core, normalize)
        written.append((normalize, read_image(root / "images" / f"{data['train'][0]}.png")))
        return data

    monkeypatch.setattr(unet, "write_pixel_data", recording_write)
    monkeypatch.setattr(probe_module, "probe", lambda cfg, sets, val_images, ignore: ProbeResult(0.1, 0.01, 1, 1))
    choices = plan_rules(instance_fingerprint(dataset, num_val=1), CPU)
    choices["normalize"] = replace(choices["normalize"], value="stretch")
    probe_unet(choices, dataset, dataset, seed=0)
    (normalize, image), = written
    assert normalize == "stretch"
    np.testing.assert_array_equal(image, unet.normalize_image(rgb, "stretch"))
    assert image.max() == 255 and not np.array_equal(image, rgb)


@pytest.mark.parametrize("minutes,step_s,steps,val_s,val_images", [
    (14, 0.9, 29, 0.06, 30), (20, 0.9, 29, 0.06, 30), (5, 0.9, 29, 0.06, 30),  # nuclei-like: 30 s epochs
    (5, 0.2, 10, 0.02, 5), (14, 0.2, 10, 0.02, 5),  # a few small images: 2 s epochs
    (20, 2.5, 30, 0.3, 10),  # large inputs: 80 s epochs, 14 of them
])
def test_planned_epochs_fit_the_budget_within_ten_percent(minutes, step_s, steps, val_s, val_images):
    from imseg.instance.planner import plan_epochs
    from imseg.semantic.plan.budget import STAGE_OVERHEAD_S

    probe = ProbeResult(step_s=step_s, val_image_s=val_s, steps_per_epoch=steps, val_images=val_images)
    budget, planning = minutes * 60.0, 15.0
    split = plan_epochs(budget, planning, probe)
    used = planning + split["stage1"]["epochs"] * probe.epoch_s + STAGE_OVERHEAD_S
    assert 0.9 * budget <= used <= budget, (split, probe.epoch_s)
    assert split["planned_s"] == pytest.approx(used, abs=0.2)


def test_slow_epochs_never_overrun_the_budget():
    from imseg.instance.planner import plan_epochs

    probe = ProbeResult(step_s=2.5, val_image_s=0.3, steps_per_epoch=60, val_images=40)  # 162.5 s epochs
    for minutes in (5, 14, 20):
        split = plan_epochs(minutes * 60.0, 15.0, probe)
        assert split["planned_s"] <= minutes * 60 < split["planned_s"] + probe.epoch_s + 0.1 * minutes * 60


def _synthetic_dsb(root, images: int = 6):
    """DSB layout (ID/images/ID.png, ID/masks/*.png): bright squares, two of them touching, on a dark ground."""
    from imseg.io import write_image

    rng = np.random.default_rng(0)
    for i in range(images):
        name = f"img{i}"
        rgb = np.full((64, 80, 3), 20, np.uint8)
        boxes = [(5, 5), (5, 17), *((int(rng.integers(25, 50)), int(rng.integers(5, 60))) for _ in range(2))]
        for k, (y, x) in enumerate(boxes):
            mask = _square(y, x, 10, 12, (64, 80))
            rgb[mask] = 200
            write_image(root / name / "masks" / f"m{k}.png", mask.astype(np.uint8) * 255)
        write_image(root / name / "images" / f"{name}.png", rgb)
    return root


@pytest.mark.slow
def test_cli_plan_prints_the_plan_and_stops(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from imseg.cli import app

    data = _synthetic_dsb(tmp_path / "data")
    args = ["train", "--task", "instance", "--data", str(data), "--time", "3", "--plan", "--project",
            str(tmp_path / "runs")]
    result = CliRunner().invoke(app, [*args, "--imgsz", "96"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("plan for 3 min (instance)") and "5 train / 1 val images" in out
    assert "model = 'unet-watershed'" in out and "imgsz = 96\n      given" in out
    assert "epochs = " in out and "s an epoch measured here" in out and "probe: " in out
    assert not (tmp_path / "runs").exists()  # --plan trains nothing
    refused = CliRunner().invoke(app, [*args, "--backbone", "resnet34"])
    assert refused.exit_code == 2 and "--backbone do not apply to unet-watershed" in refused.output, refused.output
    bare = CliRunner().invoke(app, ["train", "--task", "instance", "--data", str(data), "--plan"])
    assert bare.exit_code == 2 and "give --time MINUTES" in bare.output


def test_the_unet_trains_in_mixed_precision_where_the_hardware_multiplies_half_precision():
    assert _values(plan_rules(_fp(), CPU))["amp"] is False
    assert _values(plan_rules(_fp(), Machine(cpus=2, gpu=False, bf16=True)))["amp"] is True
    assert _values(plan_rules(_fp(), GPU))["amp"] is True
    assert "amp" not in plan_rules(_fp(), GPU, {"model": "maskrcnn"})  # torchvision's Mask R-CNN: fp32
