"""Image input for the classical methods: raw gray values, RGB, per-pixel colour vectors, seed points.

Intensity methods (thresholds, canny, watershed, chan_vese) work on the raw gray values, so a
16-bit image is thresholded on its real intensities; colour methods (clustering, superpixels,
GrabCut) use the RGB ``uint8`` image of :func:`imseg.io.read_image`.
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import read_image
from ..prompts import validate_points

# Rec. 709 luma weights (the ones skimage.color.rgb2gray uses), applied to raw values.
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def check_array(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` if it is a non-empty, finite, numeric image (bool becomes uint8); else InputError."""
    if array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{where}: image has no pixels (shape {tuple(array.shape)}). Pass a non-empty image.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{where}: unsupported dtype {array.dtype}; pass uint8, uint16 or float data.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{where}: image contains NaN or infinite values; clean it (np.nan_to_num) first.")
    return array


def _raw_to_gray(array: np.ndarray, where: str) -> np.ndarray:
    array = check_array(np.asarray(array), where)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (2, 4):  # drop alpha
        array = array[:, :, : array.shape[2] - 1]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 3:
        return array.astype(np.float64) @ _LUMA
    if array.ndim != 2:
        raise InputError(f"{where}: array of shape {tuple(array.shape)} is not an image; expected (H, W) or (H, W, 3).")
    return array


def read_gray(source: Any) -> np.ndarray:
    """Read an image as one raw gray channel (H, W), keeping its intensities.

    Gray arrays and gray files (8/16-bit PNG, TIFF via tifffile) keep their dtype and values (no
    8-bit squash); colour images become float64 luma (0.2125 R + 0.7154 G + 0.0721 B) in the
    image's own units. Anything else goes through :func:`imseg.io.read_image` first.
    """
    if isinstance(source, np.ndarray):
        return _raw_to_gray(source, "image array")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        from ..io import _pil_to_rgb, open_encoded, read_file_bytes, read_tiff_array

        path = Path(source)
        data = read_file_bytes(path)  # the byte cap, as for every other reader
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            array = np.squeeze(read_tiff_array(BytesIO(data), str(path)))
            if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
                array = np.moveaxis(array, 0, -1)
            return _raw_to_gray(array, str(path))
        img = open_encoded(data, str(path))  # size limit, EXIF orientation, clear errors
        if isinstance(img, np.ndarray):  # 16-bit colour PNG
            return _raw_to_gray(img, str(path))
        if img.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            try:
                return _raw_to_gray(np.asarray(img), str(path))
            except (OSError, SyntaxError, ValueError) as exc:
                raise InputError(f"{path}: could not decode image ({exc}). The file may be truncated or corrupt.") from exc
        return _raw_to_gray(_pil_to_rgb(img, str(path), None), str(path))
    return _raw_to_gray(read_image(source), "image")


def gray(image: Any) -> np.ndarray:
    """Raw gray values as float64 (H, W)."""
    return read_gray(image).astype(np.float64, copy=False)


def unit_range(values: np.ndarray) -> np.ndarray:
    """Gray values stretched min..max to [0, 1] (constant images become 0)."""
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.zeros(values.shape, np.float64)
    return (values - lo) / (hi - lo)


def rgb(image: Any) -> np.ndarray:
    """RGB uint8 (H, W, 3) of any image source, after the array checks of :func:`check_array`."""
    if isinstance(image, np.ndarray):
        check_array(image, "image array")
    return read_image(image)


def pixels(image: Any) -> np.ndarray:
    """(H, W, C) float64 values for colour-distance methods: raw gray (C=1) or RGB uint8 values (C=3)."""
    if isinstance(image, np.ndarray):
        arr = check_array(image, "image array")
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
            return arr.reshape(arr.shape[0], arr.shape[1], 1).astype(np.float64)
    return rgb(image).astype(np.float64)


def is_constant(values: np.ndarray) -> bool:
    return bool(values.min() == values.max())


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing by ``sigma`` pixels in the values' own units (0 = unchanged)."""
    if sigma and sigma > 0:
        from skimage import filters

        return filters.gaussian(values, sigma=sigma, preserve_range=True)
    return values


def seeds_rc(points: Any, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) XY points (pixels) -> (N, 2) int (row, col) inside the image."""
    coords, _ = validate_points(points, None, shape)
    assert coords is not None
    h, w = shape
    cols = np.clip(np.floor(coords[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.floor(coords[:, 1]).astype(int), 0, h - 1)
    return np.stack([rows, cols], axis=1)
