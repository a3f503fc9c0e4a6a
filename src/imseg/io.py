"""Reading images and writing outputs, with validation and clear errors.

``read_image`` is the one entry point every segmenter uses: whatever the source, it returns an
RGB ``uint8`` array of shape (H, W, 3), upright according to EXIF.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import io as _io
import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import ConfigError, InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
#: Default pixel limit (same as Pillow's decompression-bomb error threshold). Override per call
#: with ``max_pixels=`` or globally with the ``IMSEG_MAX_PIXELS`` environment variable.
DEFAULT_MAX_PIXELS = 178_956_970
#: Default cap on the bytes read from one image file (1 GiB). Override per call with ``max_bytes=`` or
#: globally with the ``IMSEG_MAX_BYTES`` environment variable.
DEFAULT_MAX_BYTES = 1 << 30

ImageSource = Union[  # noqa: UP007 (runtime alias)
    str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]


def _max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get("IMSEG_MAX_PIXELS")
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        return int(env)
    except ValueError:
        raise ConfigError(
            f"IMSEG_MAX_PIXELS={env!r} is not a whole number of pixels; set it like IMSEG_MAX_PIXELS=400000000 "
            f"or unset it for the default {DEFAULT_MAX_PIXELS:,}."
        ) from None


def _max_bytes(max_bytes: int | None) -> int:
    if max_bytes is not None:
        return int(max_bytes)
    env = os.environ.get("IMSEG_MAX_BYTES")
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"IMSEG_MAX_BYTES={env!r} is not a positive whole number of bytes; set it like IMSEG_MAX_BYTES=2147483648 "
            f"or unset it for the default {DEFAULT_MAX_BYTES:,} (1 GiB)."
        )
    return value


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_file_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The contents of an image file, refusing what is not a regular file or is larger than the byte cap.

    The file is checked with ``os.stat`` before it is opened (opening a FIFO with no writer would block), and
    at most ``max_bytes`` + 1 bytes are read, so a file that grows or lies about its size is still bounded.
    """
    where = str(Path(path))
    limit = _max_bytes(max_bytes)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file. Check the path.") from None
    except OSError as exc:  # permissions, a name too long, a loop of links
        raise InputError(f"{where[:200]}: could not read the file ({exc.strerror or exc}).") from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{where}: is a directory, expected an image file.")
    _require_regular(info, where)
    if info.st_size > limit:
        raise _too_many_bytes(where, limit, info.st_size)
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, open returns instead of waiting
        # for a writer, and the fstat below refuses it
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
            _require_regular(os.fstat(fh.fileno()), where)
            # read(n) allocates n bytes up front: ask for the stat size (+1 to see growth), not the whole cap
            want = min(limit, info.st_size) + 1
            data = fh.read(want)
            if len(data) == want and want <= limit:  # the file grew after stat: read on, up to the cap
                data += fh.read(limit + 1 - len(data))
    except OSError as exc:
        raise InputError(f"{where[:200]}: could not read the file ({exc.strerror or exc}).") from exc
    if len(data) > limit:  # the file grew after stat, or its size is not known in advance
        raise _too_many_bytes(where, limit, None)
    if not data:
        raise InputError(f"{where}: empty file (0 bytes); it is not an image.")
    return data


def _require_regular(info: os.stat_result, where: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
        raise InputError(f"{where}: is {kind}, not a regular file; imseg reads images from regular files only. "
                         f"Copy the data into a file first, or pass its bytes.")


def _too_many_bytes(where: str, limit: int, size: int | None) -> InputError:
    size_text = f" ({size:,} bytes)" if size is not None else ""
    return InputError(f"{where}: file{size_text} is larger than the limit of {limit:,} bytes. If this file is trusted, "
                      f"raise the limit with max_bytes= (or the IMSEG_MAX_BYTES environment variable).")


def _check_size(width: int, height: int, where: str, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: image has no pixels ({width}x{height}). Pass a non-empty image.")
    limit = _max_pixels(max_pixels)
    if width * height > limit:
        raise InputError(
            f"{where}: image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{limit:,}. If this image is trusted, raise the limit with max_pixels= (or the "
            f"IMSEG_MAX_PIXELS environment variable), or tile/downscale it first."
        )


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Convert an array of any numeric dtype to uint8.

    uint8 is returned unchanged; bool maps to {0, 255}; floats in [0, 1] are scaled by 255, and
    whole-number floats in [0, 255] (a float copy of 8-bit data) keep their values; any other float
    data (e.g. [-1, 1], a float microscopy TIFF, values just past 1 after resampling) and integer
    types wider than 8 bits (e.g. 16-bit microscopy) are linearly stretched from their min..max to
    0..255, so no levels are lost to clipping.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("image contains NaN or infinite values; clean it (np.nan_to_num) first.")
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0 and np.array_equal(array, np.round(array)):
            return array.astype(np.uint8)
        return _stretch(array, lo, hi)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo >= 0 and hi <= 255:
            return array.astype(np.uint8)
        return _stretch(array, lo, hi)
    raise InputError(f"unsupported image dtype {array.dtype}; pass uint8, uint16, float or bool data.")


def _stretch(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(array.shape, np.uint8)
    return np.round((array.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, where: str, max_pixels: int | None) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 2:
        _check_size(array.shape[1], array.shape[0], where, max_pixels)
        gray = to_uint8(array)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(
            f"{where}: array of shape {tuple(array.shape)} is not an image; expected (H, W), "
            f"(H, W, 1|3|4) or (3, H, W)."
        )
    _check_size(array.shape[1], array.shape[0], where, max_pixels)
    channels = array.shape[2]
    if channels in (2, 4):  # gray+alpha / RGBA: drop alpha (composite would guess a background)
        array = array[:, :, : channels - 1]
    array = to_uint8(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _pil_to_rgb(img, where: str, max_pixels: int | None) -> np.ndarray:
    from PIL import Image, ImageOps

    _check_size(img.width, img.height, where, max_pixels)
    try:
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _array_to_rgb(np.asarray(img), where, max_pixels)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{where}: could not decode image ({exc}). The file may be truncated or corrupt.") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - caught by _check_size first
        raise InputError(f"{where}: {exc}") from exc


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIL_LIMIT_LOCK = threading.Lock()


def open_encoded(data: bytes, where: str, max_pixels: int | None = None):
    """Open an encoded (non-TIFF) image: a size-checked, EXIF-upright PIL image, or, for a 16-bit colour
    PNG (which Pillow cuts to 8 bits), an (H, W, 3) uint16 RGB array decoded with OpenCV."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise InputError(f"{where}: empty data (0 bytes); pass an image file's contents.")
    if data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[24] == 16 and data[25] in (2, 6):
        return _png16_colour(data, where, max_pixels)
    _max_pixels(max_pixels)  # a bad IMSEG_MAX_PIXELS fails before any decoding
    try:
        # Pillow's own guard (a fixed ~89 Mpx warning, an error at twice that) would override max_pixels:
        # it is off while the header is read, and _check_size below refuses before anything is decoded.
        with _PIL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(_io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{where}: not a recognised image format (first bytes {data[:8]!r}). "
            f"Supported: JPEG, PNG, TIFF, BMP, WebP, GIF."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # header itself cut short or malformed
        raise InputError(f"{where}: could not decode image header ({exc}). The file is truncated or corrupt.") from exc
    _check_size(img.width, img.height, where, max_pixels)
    try:
        return ImageOps.exif_transpose(img) or img
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{where}: could not decode image ({exc}). The file may be truncated or corrupt.") from exc


def _png16_colour(data: bytes, where: str, max_pixels: int | None) -> np.ndarray:
    import cv2

    _check_size(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), where, max_pixels)
    # IMREAD_COLOR | IMREAD_ANYDEPTH: three channels at 16 bits, EXIF orientation applied, alpha dropped
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if bgr is None or bgr.ndim != 3:
        raise InputError(f"{where}: could not decode 16-bit PNG. The file may be truncated or corrupt.")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _open_bytes(data: bytes, where: str, max_pixels: int | None) -> np.ndarray:
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _read_tiff(_io.BytesIO(data), where, max_pixels)
    img = open_encoded(data, where, max_pixels)
    if isinstance(img, np.ndarray):
        return _array_to_rgb(img, where, max_pixels)
    return _pil_to_rgb(img, where, max_pixels)


def _read_tiff(source, where: str, max_pixels: int | None) -> np.ndarray:
    return _array_to_rgb(read_tiff_array(source, where, max_pixels), where, max_pixels)


def read_tiff_array(source, where: str, max_pixels: int | None = None) -> np.ndarray:
    """The first page of a TIFF as stored (dtype and values kept), size-checked before decoding."""
    import tifffile

    try:
        with tifffile.TiffFile(source) as tif:
            page = tif.pages[0]
            _check_tiff_page(page, where, max_pixels)
            array = page.asarray()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: could not read TIFF ({exc}). The file may be truncated or corrupt.") from exc
    return np.asarray(array)


def _check_tiff_page(page, where: str, max_pixels: int | None) -> None:
    """Refuse a page from its tags alone: width x height against the pixel limit (whatever the sample layout),
    and layouts that are not an image (volumes, more than 4 samples per pixel)."""
    _check_size(int(page.imagewidth), int(page.imagelength), where, max_pixels)
    if int(page.imagedepth) > 1:
        raise InputError(f"{where}: TIFF page is a volume of depth {page.imagedepth} (axes {page.axes}); pass a "
                         f"2-D image (one slice saved on its own).")
    if int(page.samplesperpixel) > 4:
        raise InputError(f"{where}: TIFF page has {page.samplesperpixel} samples per pixel (axes {page.axes}); "
                         f"imseg reads gray, gray+alpha, RGB or RGBA (1 to 4). Save the channels to use as RGB.")


def read_image(source: ImageSource, *, max_pixels: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Read any image source as an RGB ``uint8`` array of shape (H, W, 3).

    Args:
        source: a file path, raw encoded bytes, a numpy array ((H,W), (H,W,C) or (C,H,W); uint8,
            uint16, float in [0,1] or bool), or a PIL image.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard), checked from the
            header before decoding.
        max_bytes: refuse files larger than this (default 1 GiB or ``IMSEG_MAX_BYTES``); devices and FIFOs are
            refused whatever their size.

    EXIF orientation is applied, alpha is dropped, grayscale is replicated to three channels,
    16-bit data is stretched min..max to 0..255.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "image array", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(source), "image bytes", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        where = str(Path(source))
        data = read_file_bytes(source, max_bytes)
        return _open_bytes(data, where, max_pixels)  # the format comes from the bytes, not the suffix
    try:
        from PIL import Image

        if isinstance(source, Image.Image):
            return _pil_to_rgb(source, "PIL image", max_pixels)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(source, "detach") and hasattr(source, "cpu"):  # torch tensor
        return _array_to_rgb(source.detach().cpu().numpy(), "image tensor", max_pixels)
    raise InputError(
        f"cannot read an image from {type(source).__name__}; pass a path, bytes, a numpy array or a PIL image."
    )


def list_images(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand an image path, a directory (non-recursive) or a glob pattern into sorted image paths.

    Each real file is listed once, however many links or paths lead to it: a recursive glob
    (``**``) through a symlink loop or a linked folder, a symlink beside its target, a list naming a
    file twice. Of several paths to one file the shortest (then the first in sorted order) is kept.
    """
    items = source if isinstance(source, (list, tuple)) else [source]
    seen: set = set()
    out: list[Path] = []
    for item in items:
        for path in _unique_files(_expand_source(item)):
            key = _file_key(path)
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


def _file_key(path: Path) -> tuple:
    """The real file behind ``path``: (device, inode); the path itself when it cannot be stat'ed (it is kept,
    so reading it later reports why)."""
    try:
        stat = path.stat()
    except OSError:
        return ("path", str(path))
    return (stat.st_dev, stat.st_ino)


def _unique_files(paths: Sequence[Path]) -> list[Path]:
    """Sorted ``paths`` with one path per real file: the shortest, then the first in sorted order."""
    chosen: dict[tuple, Path] = {}
    for path in paths:
        key = _file_key(path)
        if key not in chosen or (len(path.parts), str(path)) < (len(chosen[key].parts), str(chosen[key])):
            chosen[key] = path
    return sorted(chosen.values())


def _expand_source(source: str | os.PathLike) -> list[Path]:
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{text}: directory contains no images ({', '.join(IMAGE_SUFFIXES)}).")
        return files
    if path.is_file():
        return [path]
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in _glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{text}: glob pattern matched no files.")
        return files
    raise InputError(f"{text}: no such file, directory or glob match.")


def _umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it back is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give the result the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an (H,W) or (H,W,3|4) array as an image file (format from the suffix), atomically."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8 and not (array.dtype == np.uint16 and array.ndim == 2):
        array = to_uint8(array)
    fmt = Path(path).suffix.lower().lstrip(".") or "png"
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(fmt, fmt.upper())
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=fmt)
    return Path(path)


# ----------------------------------------------------------------------------- resizing


def letterbox_size(height: int, width: int, size: int | Sequence[int]) -> tuple[float, int, int]:
    """``(scale, new_h, new_w)`` fitting (height, width) into ``size`` (int or (H, W)) with the aspect kept:
    the content area of training's letterbox (``imseg.semantic.transforms.Letterbox``)."""
    target = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    scale = min(target[0] / height, target[1] / width)
    return scale, min(target[0], max(1, round(height * scale))), min(target[1], max(1, round(width * scale)))


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (h, w, 3) with antialiased bilinear (PIL), as training's uint8 letterbox."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))


def letterbox_rgb(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Training's validation view of an RGB uint8 image: longer side scaled to ``size``, black padding to
    ``size`` x ``size``. Returns the (size, size, 3) canvas and the (h, w) of the content in its top-left."""
    _, new_h, new_w = letterbox_size(image.shape[0], image.shape[1], size)
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:new_h, :new_w] = resize_rgb(image, (new_h, new_w))
    return canvas, (new_h, new_w)
