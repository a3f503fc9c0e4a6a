"""Semantic-segmentation datasets: formats, splits, validation, torch ``Dataset``.

Supported layouts (auto-detected from a directory, or named with ``format``):

- ``folder``: ``images/`` + ``masks/`` with matching stems (also ``image/`` + ``label/``,
  ``img/`` + ``mask/``, ``images/`` + ``labels/``; split subfolders ``train/``, ``val/``, ``test/``
  or ``images/train`` + ``masks/train``). Masks are lossless index PNGs, palette PNGs (read as
  indices, not colours) or 0/255 binary images: 255 becomes class 1 only when the dataset has 2
  classes (``names`` of length 2 or ``binary: true``) and every mask holds only 0 and 255 (decided
  once per dataset, so a 0/1/255 dataset keeps 255 as ignore). JPEG masks are refused (lossy).
- ``voc``: Pascal VOC (``JPEGImages/``, ``SegmentationClass/`` palette PNGs, 255 = ignore,
  ``ImageSets/Segmentation/{train,val,test}.txt``; names from ``class_names.txt`` or the 21 VOC classes).
  The ImageSets lists define the samples (the detection-only JPEGs without a mask are not samples);
  without lists, the images that have a mask are used (with a warning saying how many were left out).
- ``coco``: COCO instance JSON, rasterised to class maps with pycocotools; category ids are mapped
  to 1..K in id order (0 = background; a category named ``_background_``/``background`` maps to 0).
  Malformed entries (polygons under 3 points, unknown category or image ids, images without
  height/width) are listed by :func:`validate_dataset`, never dropped silently.
- ``labelme``: labelme JSON (polygon, rectangle, circle, line, linestrip, point), label
  ``__ignore__`` = ignore_index; names from the config, a ``labels.txt``/``class_names.txt``, or
  the sorted labels found (0 = background). Without ``imageHeight``/``imageWidth`` the image file's
  size is used.

Splits come from the config (``train``/``val``/``test``: a folder, a .txt/.json list of stems, a
COCO .json, or a list of stems), from a ``split``/``split.json`` file, from split subfolders or
``ImageSets``, or by ratio (``val_ratio``, default 0.2, ``test_ratio``, ``seed``). A ratio split
draws from the images that no declared split holds (a declared ``test`` never leaks into train/val);
an image in two declared splits is a problem. ``ignore_index`` may not equal a class id (any format).

API contract (used by training, validation and prediction):

- :func:`load_data_config` (YAML path | directory | dict) -> :class:`DataConfig`
  (``names``, ``num_classes``, ``ignore_index``, ``format``, ``train``/``val``/``test`` sample
  lists, ``to_dict()`` for ``config.yaml``).
- :class:`SegmentationDataset` ``[i]`` -> ``(image float32 (3, H, W) ImageNet-normalised,
  mask int64 (H, W))``; ``read_raw(i)`` -> ``(RGB uint8 (H, W, 3), mask int64 (H, W))``.
- :func:`build_datasets` -> ``{"train"|"val"|"test": SegmentationDataset}`` after
  :func:`validate_dataset` (one :class:`~imseg.errors.DatasetError` listing offending files).
- :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, :func:`denormalize`.

Example::

    from imseg.semantic.data import load_data_config, build_datasets
    cfg = load_data_config("../shared/data/weizmann-horse")      # or "data.yaml" or a dict
    sets = build_datasets(cfg, imgsz=256, augment={"hflip": 0.5, "rotate": 15})
    image, mask = sets["train"][0]          # float32 (3, 256, 256), int64 (256, 256)
    for epoch in range(epochs):
        sets["train"].set_epoch(epoch)      # new (reproducible) augmentations every epoch

A dataset YAML::

    path: ../shared/data/weizmann-horse   # relative to the YAML file
    names: [background, horse]             # or {0: background, 1: horse}
    split: split.json                      # or train: images/train, val: val.txt, val_ratio: 0.2
    ignore_index: 255
"""

from __future__ import annotations

from ..transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from .common import FORMATS, SPLITS, Sample
from .config import DataConfig, load_data_config
from .dataset import SegmentationDataset, build_datasets
from .masks import read_mask
from .validation import validate_dataset
from .voc import VOC_NAMES

__all__ = [
    "FORMATS", "IMAGENET_MEAN", "IMAGENET_STD", "SPLITS", "VOC_NAMES", "DataConfig", "Sample", "SegmentationDataset",
    "build_datasets", "denormalize", "load_data_config", "read_mask", "validate_dataset",
]
