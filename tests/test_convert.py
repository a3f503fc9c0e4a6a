"""convert(): round trips keep every object's pixels where the target can hold them, and the report
names each object (and what of it) the target cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imseg.errors import ConfigError, DatasetError
from imseg.instance import InstanceMask, convert, read_dataset, run_convert
from imseg.instance.formats import read_voc

LABELME = "labelme-examples/instance_segmentation"


def _pairs(a, b):
    """(object of a, object of b) for every object, images matched by name, objects in order."""
    by_stem = {s.stem: s for s in b.samples}
    for sample in a.samples:
        other = by_stem[sample.stem]
        assert len(sample.objects) == len(other.objects), sample.stem
        for x, y in zip(sample.objects, other.objects, strict=True):
            assert x.category == y.category
            yield x, y


def test_coco128_yolo_coco_yolo_coco_keeps_pixels_and_reports_losses(data_dir, tmp_path):
    first = convert(data_dir / "coco128-seg", "coco", tmp_path / "c1", repair=True)
    assert first.source_format == "yolo" and first.images == 128 and first.objects == 929
    notes = "\n".join(first.notes)
    assert "000000000656.txt: label file without an image" in notes and "000000000659.txt" in notes
    assert "000000000250.jpg: image without a label file" in notes and "000000000508.jpg" in notes
    assert [n for n in first.notes if "repaired" in n] == [
        f"{data_dir}/coco128-seg/labels/train2017/000000000395.txt (line 5): repaired: polygon intersects itself "
        "(rasterised by pycocotools' fill and kept as a mask)"
    ]
    to_yolo = convert(tmp_path / "c1", "yolo", tmp_path / "y1")
    back = convert(tmp_path / "y1", "coco", tmp_path / "c2")
    assert back.objects_per_class == first.objects_per_class == to_yolo.objects_per_class
    lossy = {loss.source for loss in to_yolo.losses}
    assert {loss.kind for loss in to_yolo.losses} <= {"hole"}
    _, c1 = read_dataset(tmp_path / "c1")
    _, c2 = read_dataset(tmp_path / "c2")
    checked = 0
    for x, y in _pairs(c1, c2):
        iou = x.mask.iou(y.mask)
        assert iou >= 0.99 or x.source in lossy, (x.source, iou)
        checked += x.source not in lossy
    assert checked >= 925


def test_labelme_coco_labelme_coco_keeps_pixels(data_dir, tmp_path):
    src = data_dir / LABELME / "data_annotated"
    to_coco = convert(src, "coco", tmp_path / "c1")
    assert to_coco.objects == 12 and to_coco.objects_per_class["person"] == 6
    assert [loss.kind for loss in to_coco.losses] == ["ignore region", "ignore region"]
    convert(tmp_path / "c1", "labelme", tmp_path / "l1")
    again = convert(tmp_path / "l1", "coco", tmp_path / "c2")
    assert again.losses == [] or {loss.kind for loss in again.losses} == {"ignore region"}
    _, original = read_dataset(src)
    _, c1 = read_dataset(tmp_path / "c1")
    _, c2 = read_dataset(tmp_path / "c2")
    for x, y in _pairs(original, c2):
        assert x.mask.iou(y.mask) >= 0.99
    for x, y in _pairs(c1, c2):
        assert x.mask.iou(y.mask) >= 0.99
    kept = convert(src, "labelme", tmp_path / "l2")  # labelme -> labelme keeps the ignore region
    assert kept.losses == []
    _, l2 = read_dataset(tmp_path / "l2")
    assert l2.samples[0].ignore.iou(original.samples[0].ignore) >= 0.99


def test_written_coco_agrees_with_pycocotools(data_dir, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    convert(data_dir / LABELME / "data_dataset_voc", "coco", tmp_path / "c", mask_format="rle")
    oracle = COCO(str(tmp_path / "c/annotations.json"))
    voc = read_voc(data_dir / LABELME / "data_dataset_voc")
    objects = [o for s in voc.samples for o in s.objects]
    assert len(oracle.anns) == len(objects) == 12
    for ann, obj in zip(oracle.anns.values(), objects, strict=True):
        rle = oracle.annToRLE(ann)
        assert ann["area"] == int(mask_utils.area(rle)) == obj.mask.area
        assert np.allclose(ann["bbox"], mask_utils.toBbox(rle))
        assert np.array_equal(mask_utils.decode(rle).astype(bool), obj.mask.decode())
        assert oracle.cats[ann["category_id"]]["name"] == obj.category
    assert oracle.cats[15]["name"] == "person"  # the source's class ids are kept


def _tricky_coco(tmp_path: Path) -> Path:
    """One image with a holed object (RLE), a two-part object (two rings) and a crowd region."""
    from pycocotools import mask as mask_utils

    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "img.png")
    holed = np.zeros((60, 80), bool)
    holed[5:45, 5:45] = True
    holed[15:35, 15:35] = False
    rle = mask_utils.encode(np.asfortranarray(holed.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    crowd = np.zeros((60, 80), bool)
    crowd[50:58, 50:78] = True
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
         "segmentation": [[50, 5, 70, 5, 70, 20, 50, 20], [50, 25, 75, 25, 75, 40, 50, 40]]},
        {"id": 3, "image_id": 1, "category_id": 2, "segmentation": crowd_rle, "iscrowd": 1},
    ]
    doc = {"images": [{"id": 1, "file_name": "img.png", "height": 60, "width": 80}], "annotations": anns,
           "categories": [{"id": 1, "name": "donut"}, {"id": 2, "name": "people"}]}
    (tmp_path / "tricky.json").write_text(json.dumps(doc))
    return tmp_path / "tricky.json"


def test_what_each_target_cannot_hold_is_reported(tmp_path):
    src = _tricky_coco(tmp_path)
    kinds = {}
    for to in ("yolo", "labelme", "coco", "png"):
        report = convert(src, to, tmp_path / to)
        kinds[to] = sorted((loss.source.where, loss.kind, loss.dropped) for loss in report.losses)
        assert to in report.summary() and "donut" in report.summary()
    assert kinds["yolo"] == [("annotation id 1", "hole", False), ("annotation id 3", "crowd", True)]
    assert kinds["labelme"] == [("annotation id 1", "hole", False), ("annotation id 3", "crowd", True)]
    assert kinds["coco"] == [("annotation id 1", "hole", False)]  # written as RLE: nothing lost
    assert kinds["png"] == [("annotation id 3", "crowd", False)]
    _, original = read_dataset(src)
    _, coco = read_dataset(tmp_path / "coco")
    for x, y in _pairs(original, coco):
        assert np.array_equal(x.mask.decode(), y.mask.decode()) and x.iscrowd == y.iscrowd
    _, labelme = read_dataset(tmp_path / "labelme")
    two_part = labelme.samples[0].objects[1]
    assert len(two_part.mask.rings) == 2 and two_part.mask.iou(original.samples[0].objects[1].mask) >= 0.99
    _, png = read_dataset(tmp_path / "png")
    for x, y in _pairs(original, png):
        assert np.array_equal(x.mask.decode(), y.mask.decode())
    _, yolo = read_dataset(tmp_path / "yolo")  # the two parts share one line, joined by a zero-width bridge
    assert yolo.samples[0].objects[1].mask.iou(original.samples[0].objects[1].mask) >= 0.99
    yolo_lines = (tmp_path / "yolo/labels/img.txt").read_text().splitlines()
    assert len(yolo_lines) == 2 and yolo_lines[0].startswith("0 ") and yolo_lines[1].startswith("1 ")


def test_dsb_to_png_and_back(data_dir, tmp_path):
    import csv

    with open(data_dir / "dsb2018-nuclei/subset_index.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["overlap_px"] == "0"]
    ids = [r["id"] for r in sorted(rows, key=lambda r: int(r["n_masks"]))[:2]]
    _, dsb = read_dataset(data_dir / "dsb2018-nuclei", "dsb", ids=ids)
    from imseg.instance.convert import write_dataset

    files, losses = write_dataset(dsb, "png", tmp_path / "png")
    assert losses == [] and (tmp_path / "png/class_names.txt").read_text().split() == ["_background_", "nucleus"]
    _, back = read_dataset(tmp_path / "png")
    for x, y in _pairs(dsb, back):
        assert np.array_equal(x.mask.decode(), y.mask.decode())


def test_png_overlaps_and_more_than_254_objects(tmp_path):
    from imseg.instance import InstanceDataset, InstanceObject, InstanceSample, Source
    from imseg.instance.convert import write_dataset

    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "many.png")
    objects = []
    for k in range(300):
        m = np.zeros((40, 80), bool)
        m[(k // 40) * 4 : (k // 40) * 4 + 2, (k % 40) * 2] = True
        objects.append(InstanceObject("dot", InstanceMask.from_array(m), source=Source("mem", f"dot {k}")))
    big = np.zeros((40, 80), bool)
    big[0:3, 0:3] = True  # covers dots 0 and 1: later objects paint over earlier ones
    objects.append(InstanceObject("dot", InstanceMask.from_array(big), source=Source("mem", "big")))
    ds = InstanceDataset(["dot"], [InstanceSample(str(tmp_path / "many.png"), 40, 80, objects)])
    _, losses = write_dataset(ds, "png", tmp_path / "out")
    assert [(loss.source.where, loss.kind) for loss in losses] == [("dot 0", "overlap"), ("dot 1", "overlap")]
    assert all("2 of 2 px" in loss.detail for loss in losses)
    stored = np.asarray(Image.open(tmp_path / "out/SegmentationObject/many.png"))
    assert stored.dtype == np.uint16
    back = read_voc(tmp_path / "out")
    assert len(back.samples[0].objects) == 299  # dots 0 and 1 are hidden entirely
    assert back.samples[0].objects[-1].mask.area == 9


def test_options_and_bad_requests(data_dir, tmp_path):
    src = data_dir / LABELME / "data_annotated"
    with pytest.raises(ConfigError, match="cannot write 'voc'"):
        convert(src, "voc", tmp_path / "x")
    with pytest.raises(ConfigError, match="labelme reader takes no names option"):
        convert(src, "coco", tmp_path / "x", names=["a"])
    with pytest.raises(ConfigError, match="mask_format='rle' applies to COCO only"):
        convert(src, "yolo", tmp_path / "x", mask_format="rle")
    with pytest.raises(ConfigError, match="is the source folder"):
        convert(src / "2011_000003.json", "labelme", src)
    report = convert(src, "coco", tmp_path / "none", images="none")
    doc = json.loads((tmp_path / "none/annotations.json").read_text())
    assert not (tmp_path / "none/images").exists() and report.images == 3
    assert all((tmp_path / "none" / im["file_name"]).resolve().is_file() for im in doc["images"])
    convert(src, "yolo", tmp_path / "linked", images="symlink")
    linked = tmp_path / "linked/images/2011_000003.jpg"
    assert linked.is_symlink() and linked.resolve() == (src / "2011_000003.jpg").resolve()
    with pytest.raises(ConfigError, match="YOLO-seg pairs labels with images by folder"):
        convert(src, "yolo", tmp_path / "y", images="none")


def test_cli_command_prints_the_report_and_refuses_bad_input(data_dir, tmp_path):
    from typer.testing import CliRunner

    from imseg.cli import app

    runner = CliRunner()
    src = str(data_dir / LABELME / "data_annotated")
    result = runner.invoke(app, ["convert", src, "--to", "yolo", "--out", str(tmp_path / "y")])
    assert result.exit_code == 0, result.output
    assert "3 image(s), 12 object(s) written" in result.output and "ignore region" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 5}], "categories": []}))
    result = runner.invoke(app, ["convert", str(bad), "--to", "coco", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "image_id 5 is not in 'images'" in result.output
    with pytest.raises(DatasetError):
        run_convert(str(bad), "coco", str(tmp_path / "c"))


def test_missing_images_are_reported_and_shared_names_refused(tmp_path):
    from imseg.instance import InstanceDataset, InstanceObject, InstanceSample
    from imseg.instance.convert import write_dataset

    square = np.zeros((20, 30), bool)
    square[2:8, 3:9] = True
    obj = InstanceObject("thing", InstanceMask.from_array(square))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "here.png")
    ds = InstanceDataset(["thing"], [
        InstanceSample(str(tmp_path / "here.png"), 20, 30, [obj]),
        InstanceSample(str(tmp_path / "gone.png"), 20, 30, [obj]),
    ])
    _, losses = write_dataset(ds, "labelme", tmp_path / "out")
    assert [(loss.source.file, loss.kind) for loss in losses] == [(str(tmp_path / "gone.png"), "no image")]
    ds.samples.append(InstanceSample(str(tmp_path / "val" / "here.png"), 20, 30, [obj]))
    with pytest.raises(DatasetError, match="here: .*here.png, .*val/here.png"):
        write_dataset(ds, "yolo", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_dsb_overlap_and_many_objects_to_png(data_dir, tmp_path):
    from imseg.instance.convert import write_dataset

    overlapping, crowded = (
        "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e",  # subset_index: overlap_px 1
        "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5",  # 313 nuclei
    )
    _, dsb = read_dataset(data_dir / "dsb2018-nuclei", "dsb", ids=[overlapping, crowded])
    _, losses = write_dataset(dsb, "png", tmp_path / "png", images="none")
    assert [(Path(loss.source.file).parts[-3], loss.kind) for loss in losses] == [(overlapping, "overlap")]
    assert losses[0].detail.startswith("1 of ")
    stored = np.asarray(Image.open(tmp_path / f"png/SegmentationObject/{crowded}.png"))
    assert stored.dtype == np.uint16 and len(np.unique(stored)) == 313 + 1
    back = {s.stem: s for s in read_voc(tmp_path / "png").samples}
    assert len(back[crowded].objects) == 313
