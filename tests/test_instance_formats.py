"""Instance annotation readers: real exports against their own tools' output, pycocotools as the oracle
for RLE and area, and every kind of bad input refused with all offenders listed (or repaired on request)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imseg.errors import ConfigError, DatasetError
from imseg.instance import InstanceMask, detect_format, read_dataset
from imseg.instance.checks import self_intersects
from imseg.instance.formats import read_coco, read_dsb, read_label_images, read_labelme, read_voc, read_yolo

LABELME = "labelme-examples/instance_segmentation"


def _image(path: Path, h: int = 40, w: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def _coco(tmp_path: Path, annotations: list[dict], name: str = "ann.json", h: int = 40, w: int = 60) -> Path:
    _image(tmp_path / "a.png", h, w)
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": annotations,
    }
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _ann(ann_id: int, seg, category: int = 3, **extra) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": category, "segmentation": seg, "iscrowd": 0, **extra}


SQUARE = [[10, 10, 30, 10, 30, 30, 10, 30]]


# ---------------------------------------------------------------- COCO
def test_coco_real_masks_and_areas_match_pycocotools(data_dir):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    path = data_dir / LABELME / "data_dataset_coco/annotations.json"
    ds = read_coco(path)
    oracle = COCO(str(path))
    objects = [o for s in ds.samples for o in s.objects]
    assert len(objects) == len(oracle.anns) == 12
    names = {c["id"]: c["name"] for c in oracle.loadCats(oracle.getCatIds())}
    for obj in objects:
        ann = oracle.anns[int(obj.source.where.split()[-1])]
        rle = oracle.annToRLE(ann)
        assert obj.category == names[ann["category_id"]]
        assert obj.mask.area == int(mask_utils.area(rle))
        assert np.array_equal(obj.mask.decode(), mask_utils.decode(rle).astype(bool))
    assert ds.category_id("person") == 15


def test_coco_rle_compressed_uncompressed_crowd_and_several_rings(tmp_path):
    from pycocotools import mask as mask_utils

    ring = np.zeros((40, 60), bool)
    ring[5:35, 5:45] = True
    ring[15:25, 15:35] = False  # a hole
    compressed = mask_utils.encode(np.asfortranarray(ring.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()
    crowd = np.zeros((40, 60), bool)
    crowd[30:38, 40:58] = True
    flat = crowd.ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(int))) + 1
    counts = np.diff(np.r_[0, change, flat.size]).tolist()  # uncompressed counts: runs of 0s, 1s, 0s ...
    assert not flat[0]
    two_parts = [[1, 1, 8, 1, 8, 8, 1, 8], [50, 1, 58, 1, 58, 8, 50, 8]]
    path = _coco(tmp_path, [
        _ann(1, compressed),
        _ann(2, {"size": [40, 60], "counts": counts}, category=7, iscrowd=1),
        _ann(3, two_parts),
    ])
    objs = read_coco(path).samples[0].objects
    assert np.array_equal(objs[0].mask.decode(), ring)
    assert objs[1].iscrowd and np.array_equal(objs[1].mask.decode(), crowd) and objs[1].category == "dog"
    oracle = mask_utils.merge(mask_utils.frPyObjects(two_parts, 40, 60))
    assert objs[2].mask.area == int(mask_utils.area(oracle)) and objs[2].mask.kind == "polygon"
    assert objs[0].mask.outline()[1] is True  # the hole is known to writers


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ([_ann(1, [[1, 1, 5, 5]]), _ann(2, [[1, 1, 9, 1]])], ["annotation id 1", "annotation id 2", "at least 3"]),
        (
            [_ann(1, [[0, 0, 20, 20, 20, 0, 0, 20]]), _ann(2, [[30, 0, 50, 20, 50, 0, 30, 20]])],
            ["id 1", "id 2", "intersects itself"],
        ),
        ([_ann(1, SQUARE, bbox=[50, 30, 30, 30]), _ann(2, SQUARE, bbox=[-9, 0, 5, 5])], ["id 1", "id 2", "outside the 60x40"]),
        ([_ann(1, SQUARE, category=4), _ann(2, SQUARE, category=99)], ["category_id 4", "category_id 99"]),
        (
            [_ann(1, SQUARE), _ann(1, SQUARE), _ann(2, SQUARE), _ann(2, SQUARE)],
            ["id 1): annotation id used twice", "id 2): annotation"],
        ),
        ([_ann(1, {"size": [20, 60], "counts": "PP"}), _ann(2, {"size": [40, 61], "counts": "PP"})], ["id 1", "id 2", "differs"]),
        ([_ann(1, [[10, 10, 80, 10, 80, 30]]), _ann(2, [[-5, 10, 30, 10, 30, 30]])], ["id 1", "id 2", "outside the 60x40"]),
    ],
    ids=["few-points", "self-intersecting", "box-outside", "unknown-category", "duplicate-ids", "rle-size", "points-outside"],
)
def test_coco_bad_input_lists_every_offender(tmp_path, annotations, expected):
    path = _coco(tmp_path, annotations)
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    message = str(info.value)
    assert str(path) in message
    for text in expected:
        assert text in message
    assert "2 problem(s)" in message


def test_coco_bad_categories_and_images(tmp_path):
    path = _coco(tmp_path, [_ann(1, SQUARE, image_id=9)])
    doc = json.loads(path.read_text())
    doc["categories"] += [{"id": 3, "name": "again"}, {"id": 8, "name": "dog"}, {"name": "no id"}]
    doc["images"].append({"id": 1, "file_name": "b.png"})
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    message = str(info.value)
    assert "5 problem(s)" in message and "(category id 3): category id listed twice" in message
    assert "(category id 8): category name 'dog' is used by another id too" in message
    assert "needs 'id' and 'name'" in message and "(image id 1): an image needs" in message
    assert "(annotation id 1): image_id 9 is not in 'images'" in message


def test_coco_every_offender_is_listed(tmp_path):
    path = _coco(tmp_path, [_ann(k, SQUARE, category=50 + k) for k in range(1, 1201)])
    with pytest.raises(DatasetError) as info:
        read_coco(path)
    assert "1200 problem(s)" in str(info.value) and "annotation id 1000)" in str(info.value)
    assert "... and 200 more" in str(info.value)
    assert len(info.value.problems) == 1200 and "annotation id 1200" in info.value.problems[-1]


def test_coco_repair_is_explicit_and_reported(tmp_path):
    path = _coco(tmp_path, [
        _ann(1, [[1, 1, 5, 5]] + SQUARE),  # a degenerate ring beside a good one
        _ann(1, SQUARE, category=7),  # duplicate id
        _ann(2, [[0, 0, 20, 20, 20, 0, 0, 20]]),  # bow tie
        _ann(3, [[-5, 10, 30, 10, 30, 30]], bbox=[-5, 10, 35, 20]),
    ])
    ds = read_coco(path, repair=True)
    objs = ds.samples[0].objects
    assert len(objs) == 4 and len(ds.notes) == 5
    assert all("repaired" in n for n in ds.notes)
    assert "renumbered 4" in " ".join(ds.notes) and objs[1].source.where == "annotation id 4"
    assert objs[2].mask.kind == "rle"  # the twisted polygon became the pixels pycocotools fills
    assert objs[3].mask.rings[0][:, 0].min() == 0  # clipped into the image


def test_self_intersection_rule():
    assert self_intersects(np.array([[0, 0], [10, 10], [10, 0], [0, 10]]))
    assert not self_intersects(np.array([[0, 0], [10, 0], [10, 10], [0, 10]]))
    # an arm whose return edge grazes its outward edge next to a vertex is drawn on purpose
    arm = np.array([[0, 0], [20, 0], [20, 5], [40, 5], [40, 7], [20.5, 4.9], [19, 20], [0, 20]])
    assert not self_intersects(arm)


def test_parts_joined_by_zero_width_bridges_fill_like_their_union():
    from pycocotools import mask as mask_utils

    from imseg.instance.formats.yolo import bridged

    squares = [np.array([[x, 5], [x + 8, 5], [x + 8, 13], [x, 13]], float) for x in (2, 40, 20)]
    line = bridged(squares)  # the bridge from the first square to the second runs over the third
    assert len(line) == 12 + 2 * 2 and self_intersects(line) is False
    union = mask_utils.merge(mask_utils.frPyObjects([s.ravel().tolist() for s in squares], 20, 60))
    assert InstanceMask(20, 60, rings=[line]).iou(InstanceMask(20, 60, rle=union)) == 1.0


# ---------------------------------------------------------------- labelme, VOC
def test_labelme_real_matches_labelmes_own_coco_export(data_dir):
    ds = read_labelme(data_dir / LABELME / "data_annotated")
    coco = read_coco(data_dir / LABELME / "data_dataset_coco/annotations.json")
    by_stem = {s.stem: s for s in coco.samples}
    assert [len(s.objects) for s in ds.samples] == [3, 6, 3]
    for sample in ds.samples:
        theirs = by_stem[sample.stem].objects
        assert [o.category for o in sample.objects] == [o.category for o in theirs]
        for ours, ref in zip(sample.objects, theirs, strict=True):
            assert ours.mask.iou(ref.mask) == 1.0
    assert [s.ignore is not None for s in ds.samples] == [True, True, False]
    two_part = ds.samples[0].objects[1]  # group_id 0 joins two person shapes
    assert len(two_part.mask.rings) == 2
    assert "__ignore__" not in ds.categories


def test_sample_to_masks(data_dir):
    ds = read_labelme(data_dir / LABELME / "data_annotated")
    sample = ds.samples[1]
    masks = sample.to_masks(ds.categories)
    assert len(masks) == len(sample.objects) == 6 and masks.image_size == (sample.height, sample.width)
    assert [masks.class_names[i] for i in masks.labels] == [o.category for o in sample.objects]
    assert masks.areas.tolist() == [o.mask.area for o in sample.objects]
    assert np.array_equal(masks.masks[2], sample.objects[2].mask.decode()) and not masks.fields["iscrowd"].any()


def test_labelme_rectangle_circle_mask_and_non_regions(tmp_path):
    _image(tmp_path / "x.png")
    part = np.zeros((6, 8), np.uint8)
    part[1:5, 2:6] = 255
    buf = io.BytesIO()
    Image.fromarray(part).save(buf, format="PNG")
    shapes = [
        {"label": "box", "points": [[2, 3], [12, 9]], "shape_type": "rectangle", "group_id": None},
        {"label": "disc", "points": [[30, 20], [38, 20]], "shape_type": "circle", "group_id": None},
        {"label": "blob", "points": [[40, 30], [47, 35]], "shape_type": "mask", "group_id": None,
         "mask": base64.b64encode(buf.getvalue()).decode()},
        {"label": "tip", "points": [[5, 5]], "shape_type": "point", "group_id": None},
    ]
    doc = {"shapes": shapes, "imagePath": "x.png", "imageHeight": 40, "imageWidth": 60, "imageData": None}
    (tmp_path / "x.json").write_text(json.dumps(doc))
    ds = read_labelme(tmp_path)
    box, disc, blob = ds.samples[0].objects
    assert box.mask.area == 60
    assert abs(disc.mask.area - np.pi * 64) < 0.05 * np.pi * 64
    expected = np.zeros((40, 60), bool)
    expected[31:35, 42:46] = True
    assert np.array_equal(blob.mask.decode(), expected)
    assert len(ds.notes) == 1 and "point is not a region" in ds.notes[0]


def test_labelme_bad_input(tmp_path):
    _image(tmp_path / "x.png")
    bad = {"shapes": [{"label": "a", "points": [[1, 1], [4, 4]], "shape_type": "polygon"}],
           "imagePath": "x.png", "imageHeight": 40, "imageWidth": 60}
    (tmp_path / "one.json").write_text(json.dumps(bad))
    (tmp_path / "two.json").write_text(json.dumps({**bad, "imageHeight": 50}))
    with pytest.raises(DatasetError) as info:
        read_labelme(tmp_path)
    assert "one.json (shape 0 'a'): polygon has 2 distinct" in str(info.value)
    assert "two.json: annotated size 60x50 differs from the image's 60x40" in str(info.value)
    good = {**bad, "shapes": [{"label": "a", "points": [[1, 1], [9, 1], [9, 9]], "shape_type": "polygon"}]}
    (tmp_path / "one.json").write_text(json.dumps(good))
    with pytest.raises(DatasetError, match="label 'a' is not in the categories"):
        read_labelme(tmp_path / "one.json", categories=["b"])
    assert read_labelme(tmp_path / "one.json", categories=["_background_", "a"]).categories == ["a"]


def test_voc_real_objects_agree_with_the_labelme_source(data_dir):
    voc = read_voc(data_dir / LABELME / "data_dataset_voc")
    labelme = {s.stem: s for s in read_labelme(data_dir / LABELME / "data_annotated").samples}
    assert [len(s.objects) for s in voc.samples] == [3, 6, 3]
    for sample in voc.samples:
        for obj in sample.objects:  # labelme2voc rasterises with PIL and paints overlaps: close, not equal
            best = max(labelme[sample.stem].objects, key=lambda o: obj.mask.iou(o.mask))
            assert best.category == obj.category and obj.mask.iou(best.mask) > 0.9
    assert voc.samples[0].ignore is not None and voc.category_id("person") == 15


def test_voc_size_mismatch_and_mixed_classes(tmp_path):
    for sub in ("SegmentationObject", "SegmentationClass", "JPEGImages"):
        (tmp_path / sub).mkdir()
    obj = np.zeros((40, 60), np.uint8)
    obj[5:20, 5:20] = 1
    cls = np.zeros((40, 60), np.uint8)
    cls[5:20, 5:12], cls[5:20, 12:20] = 1, 2
    for name in ("a", "b"):
        Image.fromarray(obj).save(tmp_path / "SegmentationObject" / f"{name}.png")
        Image.fromarray(cls).save(tmp_path / "SegmentationClass" / f"{name}.png")
    _image(tmp_path / "JPEGImages" / "a.jpg")
    _image(tmp_path / "JPEGImages" / "b.jpg", 41, 60)
    with pytest.raises(DatasetError) as info:
        read_voc(tmp_path)
    assert "a.png (object 1): the class image gives this object the class value(s) [1, 2]" in str(info.value)
    assert "b.png: object (60, 40), class (60, 40) and image (60, 41) sizes" in str(info.value)


# ---------------------------------------------------------------- YOLO-seg
def test_yolo_real_coco128(data_dir):
    root = data_dir / "coco128-seg"
    with pytest.raises(DatasetError) as info:
        read_yolo(root)
    # parts joined by zero-width bridges are fine; this line's parts also overlap, which one ring cannot say
    assert "1 problem(s)" in str(info.value) and "000000000395.txt (line 5): polygon intersects itself" in str(info.value)
    ds = read_yolo(root, repair=True)
    assert len(ds.samples) == 128 and sum(len(s.objects) for s in ds.samples) == 929
    notes = "\n".join(ds.notes)
    for stem in ("000000000656", "000000000659"):
        assert f"{stem}.txt: label file without an image" in notes
    for stem in ("000000000250", "000000000508"):
        assert f"{stem}.jpg: image without a label file" in notes
    assert "classes are named by their index" in notes
    sample = next(s for s in ds.samples if s.stem == "000000000009")
    first = (root / "labels/train2017/000000000009.txt").read_text().splitlines()[0].split()
    xy = np.array(first[1:], float).reshape(-1, 2) * [sample.width, sample.height]
    assert np.allclose(sample.objects[0].mask.rings[0], xy) and sample.objects[0].category == first[0]


def test_yolo_names_from_data_yaml_and_bad_lines(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    (tmp_path / "labels" / "a.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.5\n2 0.1 0.1 0.5 0.1 0.5 0.5\n")
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.1 0.1 1.5 0.1 0.5 0.5\n0 0.1 0.1 0.5\n")
    with pytest.raises(DatasetError) as info:
        read_yolo(tmp_path)
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "a.txt (line 2): class 2 is not in the 2 class names" in message
    assert "b.txt (line 1): a detection box" in message
    assert "b.txt (line 2): polygon reaches" in message and "b.txt (line 3): 3 coordinates" in message
    (tmp_path / "labels" / "a.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.5\n")
    (tmp_path / "labels" / "b.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    ds = read_yolo(tmp_path / "data.yaml")
    assert ds.categories == ["cat", "dog"] and [s.objects[0].category for s in ds.samples] == ["dog", "cat"]


# ---------------------------------------------------------------- pictures: DSB, label images
def _dsb_ids(data_dir: Path, n: int) -> list[dict]:
    with open(data_dir / "dsb2018-nuclei/subset_index.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["n_masks"]))
    return rows[:n]


def test_dsb_real_folders(data_dir):
    rows = _dsb_ids(data_dir, 3)
    ds = read_dsb(data_dir / "dsb2018-nuclei", ids=[r["id"] for r in rows])
    by_stem = {s.stem: s for s in ds.samples}
    for row in rows:
        sample = by_stem[row["id"]]
        assert (sample.width, sample.height) == (int(row["width"]), int(row["height"]))
        assert len(sample.objects) == int(row["n_masks"])
        first = sample.objects[0]
        assert first.mask.area == int((np.asarray(Image.open(first.source.file)) > 0).sum())
    assert ds.categories == ["nucleus"]


def test_dsb_bad_masks(tmp_path):
    for name, shape, value in (("a", (20, 20), 255), ("b", (21, 20), 255), ("c", (20, 20), 7)):
        folder = tmp_path / "train" / name
        _image(folder / "images" / f"{name}.png", 20, 20)
        mask = np.zeros(shape, np.uint8)
        mask[2:5, 2:5] = value
        (folder / "masks").mkdir()
        Image.fromarray(mask).save(folder / "masks" / "m1.png")
    with pytest.raises(DatasetError) as info:
        read_dsb(tmp_path)
    assert "2 problem(s)" in str(info.value)
    assert "b/masks/m1.png: mask 20x21 differs" in str(info.value) and "c/masks/m1.png: one-object masks" in str(info.value)


def test_label_images_folder(tmp_path):
    labels = np.zeros((40, 60), np.uint16)
    labels[2:10, 2:10], labels[20:30, 30:50] = 3, 700
    (tmp_path / "labels").mkdir()
    Image.fromarray(labels).save(tmp_path / "labels" / "a.png")
    Image.fromarray(labels[:30]).save(tmp_path / "labels" / "b.png")
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    with pytest.raises(DatasetError, match="b.png: label image 60x30 differs from the image's 60x40"):
        read_label_images(tmp_path)
    (tmp_path / "labels" / "b.png").unlink()
    ds = read_label_images(tmp_path, category="cell")
    objs = ds.samples[0].objects
    assert [o.mask.area for o in objs] == [64, 200] and objs[1].source.where == "value 700"


# ---------------------------------------------------------------- detection
def test_detect_format_parses_contents(data_dir, tmp_path):
    assert detect_format(data_dir / LABELME / "data_dataset_coco/annotations.json") == "coco"
    assert detect_format(data_dir / LABELME / "data_dataset_coco") == "coco"
    assert detect_format(data_dir / LABELME / "data_annotated") == "labelme"
    assert detect_format(data_dir / LABELME / "data_annotated/2011_000003.json") == "labelme"
    assert detect_format(data_dir / LABELME / "data_dataset_voc") == "voc"
    assert detect_format(data_dir / "coco128-seg") == "yolo"
    assert detect_format(data_dir / "dsb2018-nuclei") == "dsb"
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO, labelme or Label Studio file"):
        detect_format(tmp_path / "other.json")
    coco = _coco(tmp_path / "c", [_ann(1, SQUARE)], name="labels.txt.json")
    assert read_dataset(coco)[0] == "coco"
    with pytest.raises(ConfigError, match="no such file"):
        detect_format(tmp_path / "missing")


def test_instance_mask_from_array_round_trip():
    mask = np.zeros((9, 7), bool)
    mask[2:6, 1:4] = True
    im = InstanceMask.from_array(mask)
    assert im.area == 12 and im.bbox() == [1.0, 2.0, 3.0, 4.0] and np.array_equal(im.decode(), mask)


def test_label_studio_polygons_rectangles_and_left_out_results(tmp_path):
    from pycocotools import mask as mask_utils

    from imseg.instance.formats import read_label_studio

    _image(tmp_path / "photo.png", 50, 100)
    size = {"original_width": 100, "original_height": 50}
    results = [
        {"id": "p1", "type": "polygonlabels", **size,
         "value": {"points": [[10, 10], [50, 10], [50, 90]], "polygonlabels": ["cat"]}},
        {"id": "r1", "type": "rectanglelabels", **size,
         "value": {"x": 60, "y": 20, "width": 20, "height": 40, "rotation": 0, "rectanglelabels": ["box"]}},
        {"id": "r2", "type": "rectanglelabels", **size,
         "value": {"x": 30, "y": 50, "width": 20, "height": 20, "rotation": 90, "rectanglelabels": ["box"]}},
        {"id": "b1", "type": "brushlabels", **size, "value": {"format": "rle", "rle": [0, 1], "brushlabels": ["cat"]}},
    ]
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/3/8f2a1c0e-photo.png"},
         "annotations": [{"id": 7, "result": results}, {"id": 8, "result": []}]},
        {"id": 2, "data": {"image": "/data/upload/3/other.png"}, "annotations": [{"id": 9, "was_cancelled": True}]},
    ]
    export = tmp_path / "project-3.json"
    export.write_text(json.dumps(tasks))
    assert detect_format(export) == "label-studio"
    ds = read_label_studio(export)
    sample = ds.samples[0]
    assert Path(sample.image_path) == tmp_path / "photo.png" and (sample.height, sample.width) == (50, 100)
    tri, box, turned = sample.objects
    oracle = mask_utils.frPyObjects([[10, 5, 50, 5, 50, 45]], 50, 100)
    assert tri.category == "cat" and tri.mask.area == int(mask_utils.area(oracle)[0])
    assert box.mask.bbox() == [60.0, 10.0, 20.0, 20.0]
    # 20 x 10 px turned 90 degrees clockwise (on screen) about its top-left corner (30, 25)
    assert turned.mask.bbox() == [20.0, 25.0, 10.0, 20.0]
    notes = "\n".join(ds.notes)
    assert "(task 1 result b1): a brushlabels result is not a polygon" in notes
    assert "(task 1): 2 annotations; the first (id 7) is read" in notes and "(task 2): no annotation" in notes
    bad = [
        {"id": 1, "data": {"image": "x.png"}, "annotations": [{"result": [
            {"id": "q", "type": "polygonlabels", **size, "value": {"points": [[1, 1], [2, 2]], "polygonlabels": ["cat"]}},
        ]}]},
        {"id": 2, "data": {"image": "y.png"}, "annotations": [{"result": [
            {"id": "s", "type": "polygonlabels", "value": {"points": [[1, 1], [2, 2], [1, 5]], "polygonlabels": ["cat"]}},
        ]}]},
    ]
    export.write_text(json.dumps(bad))
    with pytest.raises(DatasetError) as info:
        read_label_studio(export)
    assert "(task 1 result q): polygon has 2 distinct point(s)" in str(info.value)
    assert "(task 2): results give the image size as nothing" in str(info.value)
