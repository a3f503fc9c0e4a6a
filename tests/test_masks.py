"""Masks: round trips through pycocotools and every save format, polygons with holes, overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from imseg.errors import InputError
from imseg.masks import Masks


@pytest.fixture(scope="module")
def masks() -> Masks:
    """Four masks on a 40x50 image: a ring (hole), two islands, an edge-touching bar, an empty mask."""
    yy, xx = np.mgrid[:40, :50]
    dense = np.zeros((4, 40, 50), bool)
    r2 = (yy - 20) ** 2 + (xx - 25) ** 2
    dense[0] = (r2 < 150) & ~(r2 < 20)
    dense[1, 2:8, 3:9] = True
    dense[1, 30:35, 40:49] = True
    dense[2, :, 0:3] = True
    return Masks(dense, scores=[0.9, 0.8, 0.7, 0.1], labels=[1, 2, 2, 1], class_names=["bg", "ring", "bar"],
                 stability_score=np.array([0.95, 0.9, 0.85, 0.0], np.float32))


def test_rle_agrees_with_pycocotools(masks):
    rles = masks.to_rle()
    coco_rles = [{"size": r["size"], "counts": r["counts"].encode()} for r in rles]
    decoded = mask_utils.decode(coco_rles).transpose(2, 0, 1).astype(bool)
    assert np.array_equal(decoded, masks.masks)
    assert np.array_equal(mask_utils.area(coco_rles), masks.areas)
    assert np.allclose(mask_utils.toBbox(coco_rles), masks.boxes)


def test_polygons_with_holes_rasterise_back_exactly(masks):
    polygons = masks.to_polygons()
    assert [len(p) for p in polygons] == [2, 2, 1, 0]
    assert sorted(r["hole"] for r in polygons[0]) == [False, True]
    for rings, dense in zip(polygons, masks.masks, strict=True):
        assert np.array_equal(Masks.polygons_to_mask(rings, masks.image_size), dense)
    simple = masks.to_polygons(tolerance=1.5)
    assert len(simple[0][0]["points"]) < len(polygons[0][0]["points"])
    approx = Masks.polygons_to_mask(simple[0], masks.image_size)
    assert (approx & masks.masks[0]).sum() / (approx | masks.masks[0]).sum() > 0.85


def test_polygons_keep_islands_inside_holes():
    """A target (disc, ring hole, ring, hole, centre dot): each ring only cuts what it encloses."""
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    target = (r < 19) & ~((r > 12) & (r < 16)) & ~((r > 5) & (r < 8))
    masks = Masks(target[None])
    rings = masks.to_polygons()[0]
    assert sorted(r["hole"] for r in rings) == [False, False, False, True, True]
    assert np.array_equal(Masks.polygons_to_mask(rings, masks.image_size), target)


@pytest.mark.parametrize("fmt", ["png", "coco", "rle", "polygons", "npz"])
def test_save_load_round_trip(masks, tmp_path, fmt):
    paths = masks.save(tmp_path, format=fmt, stem="img")
    assert all(p.exists() for p in paths)
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temp files
    back = Masks.load(paths[-1] if fmt == "png" else paths[0])
    assert back.image_size == masks.image_size
    assert np.array_equal(back.masks, masks.masks)
    assert np.allclose(back.scores, masks.scores)
    assert np.array_equal(back.areas, masks.areas)
    assert np.array_equal(back.labels, masks.labels)
    assert np.allclose(back.fields["stability_score"], masks.fields["stability_score"])
    assert Masks.load(tmp_path, stem="img").image_size == masks.image_size


def test_coco_json_loads_in_pycocotools(masks, tmp_path):
    (path,) = masks.save(tmp_path, format="coco", stem="photo", image_id=7)
    coco = COCO(str(path))
    ann_ids = coco.getAnnIds(imgIds=[7])
    assert len(ann_ids) == len(masks)
    for i, ann in enumerate(coco.loadAnns(ann_ids)):
        assert np.array_equal(coco.annToMask(ann).astype(bool), masks.masks[i])
        assert ann["area"] == masks.areas[i]
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"ring", "bar"}
    # COCO polygon segmentations load as well
    doc = json.loads(path.read_text())
    rings = masks.to_polygons()[2]
    doc["annotations"] = [dict(doc["annotations"][2], segmentation=[r["points"].ravel().tolist() for r in rings])]
    path.write_text(json.dumps(doc))
    assert np.array_equal(Masks.load(path).masks[0], masks.masks[2])


def test_overlay_colours_and_outlines(masks, tmp_path):
    image = np.full((40, 50, 3), 100, np.uint8)
    out = masks.overlay(image, alpha=0.5, outline=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    untouched = ~masks.masks.any(0)
    assert (out[untouched] == 100).all()
    inside = [tuple(out[m][0]) for m in masks.masks[:3]]
    assert len(set(inside)) == 3  # distinct colours
    outlined = masks.overlay(image, alpha=0.2)
    ring = masks.masks[0]
    assert (outlined[ring] != out[ring]).any()  # outline pixels drawn at full colour
    assert (outlined[untouched] == 100).all()
    with pytest.raises(InputError, match="pass the image the masks were computed on"):
        masks.overlay(np.zeros((10, 10, 3), np.uint8))


def test_overlay_by_label_gives_each_class_one_colour_in_every_image():
    image = np.full((20, 30, 3), 100, np.uint8)
    label_map = np.zeros((20, 30), np.int64)
    label_map[2:6, 2:6], label_map[10:14, 2:6], label_map[10:14, 20:26] = 2, 5, 2
    by_label = Masks.from_label_map(label_map).overlay(image, outline=False, colour_by="label")
    assert (by_label[label_map == 0] == 100).all()
    assert tuple(by_label[3, 3]) != tuple(by_label[11, 3])  # classes 2 and 5 differ
    only_two = np.where(label_map == 5, 0, label_map)
    alone = Masks.from_label_map(only_two).overlay(image, outline=False, colour_by="label")
    assert tuple(alone[3, 3]) == tuple(by_label[3, 3]) == tuple(by_label[11, 21])  # class 2's colour, everywhere
    with pytest.raises(InputError, match="colour_by must be"):
        Masks.from_label_map(label_map).overlay(image, colour_by="class")


def test_bad_format_and_missing_file(masks, tmp_path):
    with pytest.raises(InputError, match="unknown mask format"):
        masks.save(tmp_path, format="tiff")
    with pytest.raises(InputError, match="no such file"):
        Masks.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="not a file written by Masks.save"):
        Masks.load(tmp_path / "x.json")


def test_empty_masks_save_and_load(tmp_path):
    empty = Masks(np.zeros((0, 6, 7), bool))
    for fmt in ("coco", "rle", "polygons", "npz", "png"):
        paths = empty.save(tmp_path / fmt, format=fmt)
        back = Masks.load(paths[-1] if fmt == "png" else paths[0])
        assert len(back) == 0 and back.image_size == (6, 7)


def test_bad_construction_is_refused_not_guessed():
    dense = np.zeros((2, 4, 5), bool)
    dense[0, 1:3, 1:3] = True
    with pytest.raises(InputError, match="Threshold probabilities"):
        Masks(np.full((1, 4, 4), 0.2, np.float32))  # probabilities
    with pytest.raises(InputError, match="binary"):
        Masks(np.array([[[0, 1], [2, 2]]]))  # a label map
    assert Masks(dense.astype(np.uint8) * 255).areas.tolist() == [4, 0]  # 0/255 PNG-style masks are fine
    with pytest.raises(InputError, match=r"boxes must have shape \(2, 4\)"):
        Masks(dense, boxes=[[0, 0, 1, 1]])
    with pytest.raises(InputError, match="scores must be numbers"):
        Masks(dense, scores=["a", "b"])
    with pytest.raises(InputError, match="NaN"):
        Masks(dense, scores=[np.nan, 0.5])
    with pytest.raises(InputError, match="one value per mask"):
        Masks(dense, extra=3)
    rles = Masks(dense).to_rle()
    other = Masks(np.ones((1, 5, 5), bool)).to_rle()
    with pytest.raises(InputError, match="mixes mask sizes"):
        Masks(rles=rles + other)
    with pytest.raises(InputError, match="does not match rles"):
        Masks(rles=rles, image_size=(3, 3))
    uncompressed = {"size": [4, 5], "counts": [5, 2, 2, 2, 9]}  # column-major runs
    assert Masks(rles=[uncompressed]).areas.tolist() == [4]


def test_load_errors_and_exact_stems(tmp_path, masks):
    masks.save(tmp_path, format="rle", stem="photo")
    masks[:2].save(tmp_path, format="rle", stem="photo-2")  # sorts before "photo.rle.json"
    assert len(Masks.load(tmp_path, stem="photo")) == len(masks)
    with pytest.raises(InputError, match="named 'nothing'"):
        Masks.load(tmp_path, stem="nothing")
    for name, text in [("list.json", "[1, 2]"), ("partial.json", '{"imseg_masks": 1, "image_size": [4, 5]}'),
                       ("coco.json", '{"images": [{"id": 1}], "annotations": []}')]:
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=name):
            Masks.load(tmp_path / name)
    upper = masks.save(tmp_path / "u", format="npz")[0].rename(tmp_path / "u" / "masks.NPZ")
    assert np.array_equal(Masks.load(upper).masks, masks.masks)
    with pytest.raises(InputError, match="Python objects"):
        Masks(masks.masks, note=np.array([{}, {}, {}, {}], dtype=object)).save(tmp_path / "o", format="npz")


def test_more_than_255_rle_masks_get_their_areas():
    # pycocotools' area() fails past 255 masks under NumPy 2 (a uint8 count); dense nuclei images exceed that
    from imseg.masks.rle import encode_rle, rle_areas

    dense = np.zeros((600, 20, 30), bool)
    for i in range(600):
        dense[i, : 1 + i % 20, : 1 + i % 30] = True
    expected = dense.reshape(600, -1).sum(1)
    masks = Masks(rles=encode_rle(dense), image_size=(20, 30))
    np.testing.assert_array_equal(masks.areas, expected)
    coco = [dict(r, counts=r["counts"].encode("ascii")) for r in encode_rle(dense)]
    np.testing.assert_array_equal(rle_areas(coco), expected)
    assert rle_areas([]).shape == (0,)
