"""One entry point for a sample's class map, whatever its format."""

from __future__ import annotations

import numpy as np

from ...errors import DatasetError
from .coco import _rasterize_coco
from .common import Sample
from .folder import _map_binary, _read_label_file
from .labelme import _rasterize_labelme


def read_mask(sample: Sample, ignore_index: int = 255) -> np.ndarray:
    """Class-index map of a sample as (H, W) uint8 (or uint16/int32 when values exceed 255).

    Palette PNGs give their indices; 255 becomes 1 when ``sample.binary_255`` (a 0/255 binary
    dataset, decided once for the whole dataset by :func:`load_data_config`). ``ignore_index`` is
    the value labelme shapes with the ignore label are drawn with; rasterised COCO/labelme maps get a
    dtype that can hold it.
    """
    if sample.format == "coco":
        return _rasterize_coco(sample, ignore_index)
    if sample.format == "labelme":
        return _rasterize_labelme(sample, ignore_index)
    if sample.mask is None:
        raise DatasetError(f"{sample.image}: no mask for this image; add one with the same stem in the masks folder.")
    mask = _read_label_file(sample.mask)
    return _map_binary(mask) if sample.binary_255 else mask
