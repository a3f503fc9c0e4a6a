"""Semantic datasets: format readers on real data, splits, validation errors, torch Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imseg.errors import ConfigError, DatasetError
from imseg.semantic.data import (
    SegmentationDataset,
    build_datasets,
    load_data_config,
    read_mask,
    validate_dataset,
)

LABELME = "labelme-examples/instance_segmentation"


# ----------------------------------------------------------------------------- real data
def test_weizmann_horses_folder_pairs_with_split_json(data_dir):
    cfg = load_data_config(data_dir / "weizmann-horse")
    split = json.loads((data_dir / "weizmann-horse" / "split.json").read_text())
    assert cfg.format == "folder" and cfg.num_classes == 2 and cfg.ignore_index == 255
    for name in ("train", "val", "test"):
        assert [s.stem for s in getattr(cfg, name)] == sorted(split[name])
        assert all(s.mask.stem == s.image.stem for s in getattr(cfg, name))
    report = validate_dataset(cfg)
    assert report["counts"] == {"train": 200, "val": 64, "test": 64}
    fg = report["class_pixels"]["train"][1] / sum(report["class_pixels"]["train"])
    assert 0.1 < fg < 0.5  # horses cover a fraction of each photo

    again = load_data_config(cfg.to_dict())  # config.yaml round trip
    assert again.train == cfg.train and again.test == cfg.test and again.names == cfg.names


def test_isbi_binary_0_255_labels_need_two_classes(data_dir):
    root = data_dir / "isbi2012-membrane"
    with pytest.raises(ConfigError, match="0 and 255"):
        load_data_config(root)
    cfg = load_data_config({"path": str(root), "names": ["membrane", "cell"], "val_ratio": 5 / 30, "seed": 1})
    assert (len(cfg.train), len(cfg.val)) == (25, 5)
    assert not {s.stem for s in cfg.train} & {s.stem for s in cfg.val}
    ds = SegmentationDataset(cfg.val, num_classes=2)
    rgb, mask = ds.read_raw(0)
    raw = np.asarray(Image.open(cfg.val[0].mask))
    assert rgb.shape == (512, 512, 3) and mask.dtype == np.int64
    np.testing.assert_array_equal(mask, (raw == 255).astype(np.int64))  # 255 = cell interior -> class 1
    assert 0.6 < mask.mean() < 0.9
    # with 3 classes 255 stays "ignore": nothing left to learn -> refused, not trained silently
    with pytest.raises(DatasetError, match="every training mask is background"):
        validate_dataset({"path": str(root), "names": ["a", "b", "c"]})


def test_size_mismatch_bad_inputs_are_refused(data_dir):
    root = data_dir / "bad-inputs" / "size-mismatch"
    with pytest.raises(DatasetError) as info:
        build_datasets({"path": str(root), "names": ["background", "horse"], "val_ratio": 0.0})
    message = str(info.value)
    assert "size mismatch" in message and "never resized" in message
    for stem in ("horse001", "horse002", "horse003", "horse004"):
        assert f"images/{stem}.jpg" in message
    assert "800x590" in message and "315x232" in message


@pytest.fixture(scope="module")
def three_formats(data_dir):
    """The same 3 photos as VOC class PNGs, COCO JSON and labelme JSON, with the VOC class names."""
    base = data_dir / LABELME
    names = [line.strip() for line in (base / "data_dataset_voc" / "class_names.txt").read_text().splitlines() if line.strip()]
    configs = {
        fmt: load_data_config({"path": str(base / folder), "names": names, "val_ratio": 0.0})
        for fmt, folder in (("voc", "data_dataset_voc"), ("coco", "data_dataset_coco"), ("labelme", "data_annotated"))
    }
    maps = {fmt: {s.stem: read_mask(s) for s in cfg.train} for fmt, cfg in configs.items()}
    return names, configs, maps


def test_voc_coco_labelme_are_detected_and_agree(three_formats):
    names, configs, maps = three_formats
    assert {fmt: cfg.format for fmt, cfg in configs.items()} == {"voc": "voc", "coco": "coco", "labelme": "labelme"}
    assert all(cfg.num_classes == 21 for cfg in configs.values())
    assert set(maps["voc"]) == set(maps["coco"]) == set(maps["labelme"]) == {"2011_000003", "2011_000006", "2011_000025"}
    for stem, voc in maps["voc"].items():
        coco, labelme = maps["coco"][stem], maps["labelme"][stem]
        assert voc.shape == coco.shape == labelme.shape
        labelled = voc != 255
        # labelme polygons drawn by us vs labelme's own export: the same pixels
        assert (labelme == voc).mean() > 0.999
        np.testing.assert_array_equal(labelme == 255, voc == 255)  # __ignore__ regions
        # COCO polygons (pycocotools rasteriser) agree away from outlines; ignore has no COCO counterpart
        assert (coco[labelled] == voc[labelled]).mean() > 0.98
        assert set(np.unique(coco[labelled])) == set(np.unique(voc[labelled]))
    assert {names[v] for v in np.unique(maps["coco"]["2011_000003"])} == {"_background_", "bottle", "person"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
def test_coco_rasterisation_matches_pycocotools_api(three_formats, data_dir):
    from pycocotools.coco import COCO

    _, configs, maps = three_formats
    path = data_dir / LABELME / "data_dataset_coco" / "annotations.json"
    coco = COCO(str(path))
    for sample in configs["coco"].train:
        expected = np.zeros(maps["coco"][sample.stem].shape, np.int64)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[sample.image_id])):
            expected[coco.annToMask(ann) > 0] = ann["category_id"]  # ids 1..20 == VOC indices here
        np.testing.assert_array_equal(maps["coco"][sample.stem], expected)


def test_formats_without_names_discover_classes(data_dir):
    base = data_dir / LABELME
    coco = load_data_config(base / "data_dataset_coco")
    assert coco.names[0] == "background" and coco.num_classes == 21 and coco.names[15] == "person"
    labelme = load_data_config(base / "data_annotated")
    assert labelme.names == ["background", "bottle", "bus", "car", "chair", "person", "sofa"]
    ds = SegmentationDataset(labelme.train + labelme.val, num_classes=labelme.num_classes)
    values = set()
    for i in range(len(ds)):
        values |= set(np.unique(ds.read_raw(i)[1]).tolist())
    assert values == {0, 1, 2, 3, 4, 5, 6, 255}


# ----------------------------------------------------------------------------- synthetic layouts
def _write_pairs(root: Path, n: int, size=(24, 32), values=(0, 1, 2), seed=0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"im{i:03d}.jpg")
        Image.fromarray(rng.choice(np.array(values, np.uint8), size)).save(root / "masks" / f"im{i:03d}.png")


def test_palette_png_is_read_as_indices(tmp_path):
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    img = Image.fromarray(mask, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[1], palette[2], palette[255] = (128, 0, 0), (0, 128, 0), (224, 224, 192)
    img.putpalette(palette.ravel().tolist())
    img.save(tmp_path / "m.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "i.png")
    from imseg.semantic.data import Sample

    np.testing.assert_array_equal(read_mask(Sample(tmp_path / "i.png", tmp_path / "m.png")), mask)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(DatasetError, match="colour"):
        read_mask(Sample(tmp_path / "i.png", tmp_path / "colour.png"))


def test_validation_lists_every_problem_once(tmp_path):
    _write_pairs(tmp_path, 16)
    for i in range(12):  # 12 masks with an unknown class 9 -> first 10 shown, then a count
        Image.fromarray(np.full((24, 32), 9, np.uint8)).save(tmp_path / "masks" / f"im{i:03d}.png")
    (tmp_path / "masks" / "im012.png").unlink()  # image without mask
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "masks" / "orphan.png")  # mask without image
    (tmp_path / "images" / "im013.jpg").write_bytes(b"not a jpeg")  # unreadable
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "im014.png")  # size mismatch
    cfg = load_data_config({"path": str(tmp_path), "names": ["a", "b", "c"], "val_ratio": 0.0})
    with pytest.raises(DatasetError) as info:
        validate_dataset(cfg)
    msg = str(info.value)
    assert "has 16 problem(s)" in msg and "unknown class values" in msg and "ignore_index) (12):" in msg
    assert "im000.png: values 9 are not class ids 0..2 or 255" in msg and "... and 2 more" in msg
    assert "im012.jpg: no mask" in msg and "orphan.png: mask without an image" in msg
    assert "im013.jpg: cannot read image" in msg and "im014.jpg is 32x24 but its mask" in msg
    # an empty declared split is refused too
    (tmp_path / "val.txt").write_text("")
    with pytest.raises(DatasetError, match="split 'val' has no samples"):
        validate_dataset({"path": str(tmp_path), "names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
                          "train": ["im015"], "val": "val.txt"})


def test_yaml_split_files_ratio_and_binary(tmp_path):
    _write_pairs(tmp_path / "ds", 20, values=(0, 255))
    (tmp_path / "ds" / "train.txt").write_text("\n".join(f"im{i:03d}" for i in range(14)))
    (tmp_path / "ds" / "val.txt").write_text("\n".join(f"im{i:03d}.jpg" for i in range(14, 20)))
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text("path: ds\ntrain: train.txt\nval: val.txt\nnames: {0: bg, 1: fg}\n")
    cfg = load_data_config(yaml_path)
    assert (len(cfg.train), len(cfg.val), cfg.names) == (14, 6, ["bg", "fg"])
    _, mask = SegmentationDataset(cfg.train, num_classes=2).read_raw(0)
    assert set(np.unique(mask).tolist()) == {0, 1}
    with pytest.raises(ConfigError, match="0 and 255"):
        load_data_config(tmp_path / "ds")
    a = load_data_config({"path": str(tmp_path / "ds"), "binary": True, "val_ratio": 0.25, "test_ratio": 0.1, "seed": 3})
    b = load_data_config({"path": str(tmp_path / "ds"), "binary": True, "val_ratio": 0.25, "test_ratio": 0.1, "seed": 3})
    c = load_data_config({"path": str(tmp_path / "ds"), "binary": True, "val_ratio": 0.25, "test_ratio": 0.1, "seed": 4})
    assert (len(a.train), len(a.val), len(a.test)) == (13, 5, 2) and a.splits == b.splits and a.val != c.val
    stems = [s.stem for part in a.splits.values() for s in part]
    assert sorted(stems) == [f"im{i:03d}" for i in range(20)]  # disjoint and complete
    with pytest.raises(ConfigError, match="unknown dataset config key"):
        load_data_config({"path": str(tmp_path / "ds"), "nmes": ["a", "b"]})


def _batches_with_workers(root: Path, out: Path) -> list:
    """The same training set through a DataLoader with two workers, in a fresh interpreter: worker processes are
    made from a clean process, not from a test process that earlier tests left native threads and handlers in."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from imseg.semantic.data import build_datasets\n"
        "sets = build_datasets({'path': sys.argv[1], 'names': ['a', 'b', 'c'], 'val_ratio': 0.25}, imgsz=32,\n"
        "                      augment={'rotate': 10, 'scale': [0.5, 1.5]}, seed=5)\n"
        "torch.save(list(torch.utils.data.DataLoader(sets['train'], batch_size=3, num_workers=2)), sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(root), str(out)], check=True, close_fds=False, timeout=300)
    return torch.load(out, weights_only=True)


def test_build_datasets_and_seeded_loader(tmp_path):
    _write_pairs(tmp_path, 8, size=(40, 60), values=(0, 1, 2, 255))
    sets = build_datasets({"path": str(tmp_path), "names": ["a", "b", "c"], "val_ratio": 0.25}, imgsz=32,
                          augment={"rotate": 10, "scale": [0.5, 1.5]}, seed=5)
    assert set(sets) == {"train", "val"} and (len(sets["train"]), len(sets["val"])) == (6, 2)
    image, mask = sets["val"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert (mask[21:] == 255).all()  # letterbox 40x60 -> 21x32 + ignore padding
    train = sets["train"]
    first = [train[i] for i in range(len(train))]
    again = [train[i] for i in range(len(train))]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(first, again, strict=True))
    batches = _batches_with_workers(tmp_path, tmp_path / "batches.pt")
    assert torch.equal(batches[0][0], torch.stack([first[i][0] for i in range(3)]))  # same with workers
    train.set_epoch(1)
    assert not torch.equal(train[0][0], first[0][0])
    assert set(torch.unique(torch.cat([m for _, m in batches])).tolist()) <= {0, 1, 2, 255}


# ----------------------------------------------------------------------------- audit regressions
def _write_image(path: Path, size=(24, 32), seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _write_labelme(folder: Path, stem: str, labels, size=(24, 32), **extra) -> None:
    _write_image(folder / f"{stem}.jpg", size)
    shapes = [{"label": label, "points": [[2, 2], [12, 2], [12, 12]], "shape_type": "polygon"} for label in labels]
    data = {"shapes": shapes, "imagePath": f"{stem}.jpg", "imageHeight": size[0], "imageWidth": size[1], **extra}
    (folder / f"{stem}.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}, sort_keys=True))


def _write_coco(folder: Path, annotations, images=None) -> None:
    images = images or [{"id": i + 1, "file_name": f"im{i}.jpg", "height": 24, "width": 32} for i in range(2)]
    for i in range(2):
        _write_image(folder / f"im{i}.jpg")
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))


def test_voc_split_lists_define_the_samples(tmp_path):
    voc = tmp_path / "VOC2012"
    for i in range(8):  # like VOC2012: more JPEGs (detection) than segmentation masks
        _write_image(voc / "JPEGImages" / f"2007_{i:06d}.jpg", seed=i)
    (voc / "SegmentationClass").mkdir()
    for i in range(6):
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 4:12], mask[12, :] = 15, 255
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"2007_{i:06d}.png")
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(f"2007_{i:06d}" for i in range(4)))
    (sets / "val.txt").write_text("2007_000004\n2007_000005\n")
    assert validate_dataset(tmp_path)["counts"] == {"train": 4, "val": 2}
    (sets / "val.txt").write_text("2007_000004\n2007_000006\n")  # a listed JPEG without a mask is a problem
    with pytest.raises(DatasetError, match=r"2007_000006.jpg: listed in the 'val' split but has no mask"):
        validate_dataset(tmp_path)
    for path in sets.iterdir():
        path.unlink()
    with pytest.warns(UserWarning, match="2 of 8 images in JPEGImages/ have no mask"):
        cfg = load_data_config({"path": str(tmp_path), "val_ratio": 0.0})
    assert [s.stem for s in cfg.train] == [f"2007_{i:06d}" for i in range(6)] and cfg.num_classes == 21


def test_binary_255_is_decided_once_per_dataset(tmp_path):
    ignore = tmp_path / "ignore"  # 2 classes, 255 = ignore; one mask happens to hold only {0, 255}
    _write_pairs(ignore, 4, values=(0, 1, 255))
    only = np.zeros((24, 32), np.uint8)
    only[:6] = 255
    Image.fromarray(only).save(ignore / "masks" / "im000.png")
    cfg = load_data_config({"path": str(ignore), "names": ["bg", "fg"], "val_ratio": 0.0})
    assert np.unique(read_mask(cfg.train[0])).tolist() == [0, 255]  # still ignore, not foreground
    assert SegmentationDataset(cfg.train, num_classes=2).read_raw(0)[1].max() == 255
    binary16 = tmp_path / "u16"  # genuinely binary 0/255 masks saved as 16-bit PNGs
    for i in range(3):
        _write_image(binary16 / "images" / f"a{i}.jpg", seed=i)
        mask = np.zeros((24, 32), np.uint16)
        mask[8:16] = 255
        (binary16 / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(binary16 / "masks" / f"a{i}.png")
    cfg = load_data_config({"path": str(binary16), "names": ["bg", "fg"], "val_ratio": 0.0})
    assert np.unique(read_mask(cfg.train[0])).tolist() == [0, 1]
    assert validate_dataset(cfg)["class_pixels"]["train"] == [3 * 16 * 32, 3 * 8 * 32]


def test_lossy_or_greyscale_masks_are_refused(tmp_path):
    yy, xx = np.mgrid[:48, :48]
    for i in range(3):
        _write_image(tmp_path / "jpg" / "images" / f"a{i}.jpg", (48, 48), seed=i)
        (tmp_path / "jpg" / "masks").mkdir(exist_ok=True)
        disc = (((yy - 20) ** 2 + (xx - 22 - i) ** 2) < 150).astype(np.uint8) * 255
        Image.fromarray(disc).save(tmp_path / "jpg" / "masks" / f"a{i}.jpg", quality=75)
    with pytest.raises(DatasetError, match="3 mask.s. are JPEG files.*lossless PNG index masks"):
        load_data_config(tmp_path / "jpg")
    with pytest.raises(DatasetError, match=r"lossy masks .*\(3\):\n.*a0.jpg: JPEG mask") as info:
        validate_dataset({"path": str(tmp_path / "jpg"), "names": ["bg", "fg"], "val_ratio": 0.0})
    assert "unknown class values" not in str(info.value)  # the JPEG artefacts are not listed twice
    for i in range(2):  # anti-aliased greyscale PNGs: ~100 distinct values
        _write_image(tmp_path / "grey" / "images" / f"a{i}.jpg", (48, 48), seed=i)
        (tmp_path / "grey" / "masks").mkdir(exist_ok=True)
        Image.fromarray(((yy + xx) * 2 + i).astype(np.uint8)).save(tmp_path / "grey" / "masks" / f"a{i}.png")
    with pytest.raises(DatasetError, match="too many to be class ids.*lossless PNG"):
        load_data_config(tmp_path / "grey")


def test_images_sharing_a_stem_are_a_problem(tmp_path):
    _write_pairs(tmp_path, 3)
    _write_image(tmp_path / "images" / "im000.png", seed=9)
    cfg = load_data_config({"path": str(tmp_path), "names": ["a", "b", "c"], "val_ratio": 0.0})
    assert [s.stem for s in cfg.train] == ["im001", "im002"]
    with pytest.raises(DatasetError, match=r"images im000.jpg, im000.png share the stem 'im000'"):
        validate_dataset(cfg)


def test_declared_test_split_stays_out_of_train_and_val(tmp_path):
    _write_pairs(tmp_path, 10)
    cfg = load_data_config({"path": str(tmp_path), "names": ["a", "b", "c"], "test": ["im008", "im009"]})
    assert [s.stem for s in cfg.test] == ["im008", "im009"] and (len(cfg.train), len(cfg.val)) == (6, 2)
    stems = [s.stem for part in cfg.splits.values() for s in part]
    assert sorted(stems) == [f"im{i:03d}" for i in range(10)]  # disjoint and complete
    with pytest.raises(DatasetError, match=r"im003.jpg: in both the 'train' and the 'val' split"):
        validate_dataset({"path": str(tmp_path), "names": ["a", "b", "c"], "train": ["im000", "im003"], "val": ["im003"]})


def test_negative_mask_values_are_reported(tmp_path):
    import tifffile

    for i in range(3):
        _write_image(tmp_path / "images" / f"a{i}.jpg", seed=i)
        mask = np.zeros((24, 32), np.int16)
        mask[:4], mask[10:20] = -1, 1
        (tmp_path / "masks").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "masks" / f"a{i}.tif", mask)
    with pytest.raises(DatasetError, match=r"a0.tif: values -1 are not class ids 0..1 or 255"):
        validate_dataset({"path": str(tmp_path), "names": ["a", "b"], "val_ratio": 0.0})
    with pytest.raises(DatasetError, match=r"negative values \[-1\].*-1 -> 255"):
        load_data_config(tmp_path)


def test_ignore_index_may_not_be_a_class_in_any_format(tmp_path):
    for i, label in enumerate(["cat", "dog"]):
        _write_labelme(tmp_path / "labelme", f"a{i}", [label])
    with pytest.raises(ConfigError, match=r"ignore_index 1 collides with class ids 0..2 \('cat'\)"):
        load_data_config({"path": str(tmp_path / "labelme"), "ignore_index": 1})
    _write_coco(tmp_path / "coco", [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]}])
    with pytest.raises(ConfigError, match="ignore_index 2 collides"):
        load_data_config({"path": str(tmp_path / "coco"), "ignore_index": 2})


def test_labelme_found_whatever_the_key_order(tmp_path):
    embedded = "A" * 6000  # imageData sorts before "shapes": the key lies past the first 4096 characters
    _write_labelme(tmp_path, "a0", ["cat"], imageData=embedded)
    _write_labelme(tmp_path, "a1", ["dog"], imageData=embedded)
    _write_labelme(tmp_path, "a2", ["dog"])
    cfg = load_data_config({"path": str(tmp_path), "val_ratio": 0.0})
    assert cfg.format == "labelme" and cfg.names == ["background", "cat", "dog"]
    assert [s.stem for s in cfg.train] == ["a0", "a1", "a2"]


def test_labelme_without_image_size_uses_the_image(tmp_path):
    _write_labelme(tmp_path, "a0", ["cat"], size=(20, 28), imageHeight=None, imageWidth=None)
    cfg = load_data_config({"path": str(tmp_path), "val_ratio": 0.0})
    mask = read_mask(cfg.train[0])
    assert mask.shape == (20, 28) and np.unique(mask).tolist() == [0, 1]
    assert validate_dataset(cfg)["counts"] == {"train": 1}
    _write_labelme(tmp_path, "a0", ["cat"], size=(20, 28), imageHeight="abc")
    with pytest.raises(DatasetError, match="imageHeight/imageWidth must be positive integers; got 'abc'/28"):
        validate_dataset({"path": str(tmp_path), "val_ratio": 0.0})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
def test_malformed_coco_is_listed_not_raised_or_dropped(tmp_path):
    ok = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 20, 2, 20, 20]]}
    anns = [ok, {**ok, "id": 2, "segmentation": [[2, 2, 20, 20]]}, {**ok, "id": 3, "segmentation": [[2, 2, 20, 2, 20]]},
            {**ok, "id": 4, "category_id": 42}, {**ok, "id": 5, "image_id": 77}, {**ok, "id": 6, "image_id": 2}]
    images = [{"id": 1, "file_name": "im0.jpg", "height": 24, "width": 32}, {"id": 2, "file_name": "im1.jpg"}]
    _write_coco(tmp_path, anns, images)
    cfg = load_data_config({"path": str(tmp_path), "val_ratio": 0.0})
    assert [s.stem for s in cfg.train] == ["im0"]
    assert np.unique(read_mask(cfg.train[0])).tolist() == [0, 1]  # the valid annotation still rasterises
    with pytest.raises(DatasetError) as info:
        validate_dataset(cfg)
    message = str(info.value)
    assert "malformed annotations" in message and "has 5 problem(s)" in message
    for expected in ("annotation id 2 (image 'im0.jpg'): polygon segmentation[0] has 4 number(s)",
                     "annotation id 3 (image 'im0.jpg'): polygon segmentation[0] has 5 number(s)",
                     "annotation id 4 (image 'im0.jpg'): category_id 42 is not in 'categories'",
                     "annotation id 5: image_id 77 is not in 'images'",
                     "image 'im1.jpg' (id 2) has no valid height/width"):
        assert f"annotations.json: {expected}" in message


@pytest.mark.parametrize(("setting", "message"), [
    ({"path": 123}, "path must be the dataset folder"),
    ({"val_ratio": "abc"}, "val_ratio must be a number in"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"split": {"val": "abc"}}, r"split.val must be a fraction"),
    ({"num_classes": 5}, "num_classes is 5 but names lists 3 classes"),
    ({"binary": "false", "names": None}, "binary must be true or false"),
])
def test_config_values_of_the_wrong_type_name_the_key(tmp_path, setting, message):
    _write_pairs(tmp_path, 3)
    spec = {"path": str(tmp_path), "names": ["a", "b", "c"], **setting}
    with pytest.raises(ConfigError, match=message):
        load_data_config({k: v for k, v in spec.items() if v is not None})


def test_ignore_index_above_255_with_uint8_masks(tmp_path):
    _write_pairs(tmp_path, 3, size=(40, 56))
    sets = build_datasets({"path": str(tmp_path), "names": ["a", "b", "c"], "ignore_index": 300, "val_ratio": 0.34},
                          imgsz=64, augment={"rotate": 10})
    _, mask = sets["val"][0]
    assert mask.shape == (64, 64) and (mask[46:] == 300).all()  # letterbox 40x56 -> 46x64 + ignore padding
    _, mask = sets["train"][0]
    assert set(torch.unique(mask).tolist()) <= {0, 1, 2, 300}


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_with_intact_header_is_refused_before_a_run_directory(tmp_path, monkeypatch, suffix):
    from imseg.semantic.train import train

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "home"))
    _write_pairs(tmp_path / "ds", 6, values=(0, 1))
    bad = tmp_path / "ds" / "images" / f"im002{suffix}"
    (tmp_path / "ds" / "images" / "im002.jpg").unlink()
    rng = np.random.default_rng(1)  # a larger pair: half its bytes hold the whole header
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(bad)
    Image.fromarray(rng.integers(0, 2, (96, 128), dtype=np.uint8)).save(tmp_path / "ds" / "masks" / "im002.png")
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])
    with Image.open(bad) as img:
        assert img.size == (128, 96)  # the header still reads
    config = {"path": str(tmp_path / "ds"), "names": ["bg", "fg"], "val_ratio": 0.34}
    with pytest.raises(DatasetError, match="unreadable or missing files") as info:
        validate_dataset(config)
    assert f"{bad}: cannot read image" in str(info.value) and "truncated" in str(info.value)
    project = tmp_path / "runs"
    with pytest.raises(DatasetError, match=str(bad).replace("\\", "\\\\")):
        train({"data": config, "project": str(project), "model": "unet", "encoder": "resnet18", "imgsz": 32,
               "epochs": 1, "workers": 0, "progress": False})
    assert not project.exists()


def test_validation_decodes_each_pair_once_until_a_file_changes(tmp_path, monkeypatch):
    import os

    import imseg.semantic.data.validation as validation

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "home"))
    _write_pairs(tmp_path / "ds", 6, values=(0, 1))
    decoded: list[str] = []
    check = validation._check_sample

    def counting(sample, *args):
        decoded.append(sample.stem)
        return check(sample, *args)

    monkeypatch.setattr(validation, "_check_sample", counting)
    config = {"path": str(tmp_path / "ds"), "names": ["bg", "fg"], "val_ratio": 0.34}
    first = validate_dataset(config)
    assert sorted(decoded) == [f"im{i:03d}" for i in range(6)]
    assert list((tmp_path / "home" / "dataset-checks").glob("*.json"))  # the cache lives under IMSEG_HOME
    decoded.clear()
    assert validate_dataset(config) == first and decoded == []  # same counts, nothing decoded again
    mask = tmp_path / "ds" / "masks" / "im004.png"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert validate_dataset(config) == first and decoded == ["im004"]
    decoded.clear()
    whole = (tmp_path / "ds" / "images" / "im001.jpg").read_bytes()
    (tmp_path / "ds" / "images" / "im001.jpg").write_bytes(whole[: len(whole) // 2])  # damaged after a clean check
    with pytest.raises(DatasetError, match="im001.jpg: cannot read image"):
        validate_dataset(config)
    assert decoded == ["im001"]
