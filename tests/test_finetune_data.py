"""Fine-tuning data and the embedding cache: formats, bad input (empty masks, one-pixel objects, images
without objects, a checkpoint of another model), and nothing lost from the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imseg.errors import CheckpointError, DatasetError
from imseg.finetune.cache import EmbeddingCache, file_key
from imseg.finetune.data import load_finetune_data
from imseg.io import read_image, write_image


def _mask_folder(tmp_path, data_dir, masks: list[np.ndarray], **spec):
    """images/ (real horse photos, cropped to 64 x 64) + masks/ with the given label images, split 2:rest."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    photos = sorted((data_dir / "weizmann-horse" / "images").glob("*.jpg"))
    stems = []
    for i, mask in enumerate(masks):
        stem = f"im{i}"
        write_image(tmp_path / "images" / f"{stem}.png", read_image(photos[i])[:64, :64])
        write_image(tmp_path / "masks" / f"{stem}.png", mask.astype(np.uint8))
        stems.append(stem)
    return {"path": str(tmp_path), "train": stems[2:], "val": stems[:2], **spec}


def _square(y, x, size, value=1):
    m = np.zeros((64, 64), np.uint8)
    m[y:y + size, x:x + size] = value
    return m


def test_empty_masks_are_a_clear_error(tmp_path, data_dir):
    data = _mask_folder(tmp_path, data_dir, [np.zeros((64, 64), np.uint8)] * 4, names=["background", "object"])
    with pytest.raises(DatasetError, match="every training mask is background"):
        load_finetune_data(data)


def test_one_pixel_objects_are_left_out_and_counted(tmp_path, data_dir):
    two = _square(10, 10, 20, 1) + _square(50, 50, 1, 2)  # a 20 x 20 object and a one-pixel object
    data = _mask_folder(tmp_path, data_dir, [two, _square(5, 5, 9), two, _square(30, 30, 12)])
    found = load_finetune_data(data)
    train = found.splits["train"]
    assert len(train[0].masks()) == 1 and int(train[0].masks()[0].sum()) == 400
    assert len(train[0].masks(keep_small=True)) == 2
    assert any("1 object(s) under 4 px" in note for note in found.notes)
    assert found.spec["objects_per_split"] == {"train": 2, "val": 2}


def test_images_without_objects_are_kept_and_noted(tmp_path, data_dir):
    data = _mask_folder(tmp_path, data_dir, [_square(5, 5, 9), _square(3, 3, 20), np.zeros((64, 64), np.uint8),
                                             _square(30, 30, 12)])
    found = load_finetune_data(data)
    assert [len(s.masks()) for s in found.splits["train"]] == [0, 1]
    assert any("1 of 2 image(s) have no object" in note for note in found.notes)


def test_object_modes_ids_components_whole(tmp_path, data_dir):
    label = _square(2, 2, 10, 1) + _square(30, 30, 10, 1) + _square(50, 2, 8, 2)
    data = _mask_folder(tmp_path, data_dir, [label] * 3)
    assert len(load_finetune_data(data, objects="ids").splits["train"][0].masks()) == 2
    assert len(load_finetune_data(data, objects="components").splits["train"][0].masks()) == 3
    assert len(load_finetune_data(data, objects="whole").splits["train"][0].masks()) == 1


def test_instance_formats_are_read(data_dir):
    coco = data_dir / "labelme-examples" / "instance_segmentation" / "data_dataset_coco" / "annotations.json"
    found = load_finetune_data(coco)
    assert found.spec["format"] == "coco" and sum(len(s) for s in found.splits.values()) == 3
    first = found.splits["train"][0]
    assert first.masks().shape[1:] == read_image(first.image).shape[:2]
    labelme = load_finetune_data(coco.parent.parent / "data_annotated")
    assert labelme.spec["format"] == "labelme"


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    from imseg.finetune.run import build_start_model
    from imseg.sam.checkpoint import build_model, get_config

    path = tmp_path / "mobile_sam.pt"
    torch.save(build_model(get_config("vit_t", img_size=64)).state_dict(), path)
    with pytest.raises(CheckpointError, match="vit_t"):
        build_start_model("sam-vit-b", path, 1024)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        build_start_model("mobile-sam", tmp_path / "junk.pt", 64)


def test_cache_round_trip_and_damaged_entries_are_recomputed(tmp_path):
    image = tmp_path / "a.png"
    write_image(image, np.full((8, 8, 3), 7, np.uint8))
    cache = EmbeddingCache(tmp_path / "cache", "model")
    key = file_key(image)
    assert cache.get(key) is None and cache.misses == 1
    emb = torch.randn(256, 4, 4)
    cache.put(key, emb, (8, 8), (8, 8))
    entry = cache.get(key)
    assert torch.equal(entry["embedding"], emb) and entry["input_size"] == (8, 8) and cache.hits == 1
    assert [p.name for p in cache.dir.rglob("*") if p.is_file()] == [f"{key}.pt"]  # no temporary left behind
    cache.path(key).write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="recomputed"):
        assert cache.get(key) is None
    cache.put(key, emb, (8, 8), (8, 8))
    assert torch.equal(cache.get(key)["embedding"], emb)


def test_a_failed_run_loses_nothing_from_the_cache(tmp_path, data_dir):
    from imseg.finetune.train import finetune

    cache = EmbeddingCache(tmp_path / "cache", "other-model")
    cache.put("ab" * 32, torch.ones(256, 4, 4), (64, 64), (64, 64))
    before = sorted(p.read_bytes() for p in (tmp_path / "cache").rglob("*.pt"))
    data = _mask_folder(tmp_path / "d", data_dir, [np.zeros((64, 64), np.uint8)] * 4, names=["background", "object"])
    with pytest.raises(DatasetError):
        finetune(data=data, random_init=True, imgsz=64, epochs=1, cache_dir=str(tmp_path / "cache"),
                 project=str(tmp_path / "runs"), progress=False)
    assert sorted(p.read_bytes() for p in (tmp_path / "cache").rglob("*.pt")) == before
