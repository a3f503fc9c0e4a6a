"""imseg.io: every image source becomes RGB uint8 (H, W, 3); bad input gives a specific InputError."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imseg.errors import ConfigError, InputError, PromptError
from imseg.io import atomic_path, list_images, read_image, write_image
from imseg.prompts import validate_box, validate_points


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)


def test_png_path_roundtrip(tmp_path, rgb):
    path = write_image(tmp_path / "a.png", rgb)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 32, 3)
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(read_image(str(path)), rgb)
    np.testing.assert_array_equal(read_image(path.read_bytes()), rgb)
    np.testing.assert_array_equal(read_image(Image.open(path)), rgb)


def test_grayscale_and_rgba(tmp_path, rgb):
    gray = rgb[:, :, 0]
    (tmp_path / "g.png").write_bytes(_png_bytes(gray))
    out = read_image(tmp_path / "g.png")
    assert out.shape == (20, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    rgba = np.dstack([rgb, np.full(gray.shape, 7, np.uint8)])
    (tmp_path / "a.png").write_bytes(_png_bytes(rgba))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(read_image(rgba), rgb)


def test_exif_rotation_is_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (32, 20, 3)  # upright: width and height swapped


def test_16bit_tiff_is_stretched(tmp_path):
    import tifffile

    data = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50 + 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", data)
    out = read_image(tmp_path / "x.tif")
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    # monotone: order of intensities is kept
    assert np.all(np.diff(out[:, :, 0].reshape(-1).astype(int)) >= 0)


def test_float_and_bool_arrays():
    f = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = read_image(f)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    b = np.eye(4, dtype=bool)
    assert read_image(b)[0, 0, 0] == 255 and read_image(b)[0, 1, 0] == 0
    chw = np.zeros((3, 5, 7), np.uint8)
    assert read_image(chw).shape == (5, 7, 3)
    with pytest.raises(InputError, match="NaN"):
        read_image(np.full((4, 4), np.nan, np.float32))


def test_floats_outside_unit_range_keep_their_levels():
    ramp = np.linspace(0, 1.01, 24 * 32, dtype=np.float32).reshape(24, 32)  # just past 1 after resampling
    assert len(np.unique(read_image(ramp))) == 256
    signed = read_image(ramp * 2 / 1.01 - 1)  # [-1, 1]
    assert signed.min() == 0 and signed.max() == 255 and len(np.unique(signed)) == 256
    assert not (read_image(ramp * 4000) == 255).mean() > 0.01  # float microscopy: stretched, not clipped
    whole = np.arange(0, 240, dtype=np.float64).reshape(12, 20)  # a float copy of 8-bit data keeps its values
    assert np.array_equal(read_image(whole)[:, :, 0], whole.astype(np.uint8))


def test_16bit_colour_png_keeps_its_low_bits_and_exif(tmp_path):
    import struct
    import zlib

    import cv2

    rgb16 = np.random.default_rng(1).integers(0, 4096, (6, 9, 3)).astype(np.uint16)  # 12-bit data
    ok, buf = cv2.imencode(".png", rgb16[:, :, ::-1])
    data = buf.tobytes()
    expected = np.round((rgb16 - rgb16.min()) * (255.0 / (rgb16.max() - rgb16.min()))).astype(np.uint8)
    assert np.array_equal(read_image(data), expected)  # Pillow alone gives the high byte: 0..15
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    body = exif.tobytes()[6:]  # drop the "Exif\0\0" header: a PNG eXIf chunk holds the TIFF structure
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    (tmp_path / "r.png").write_bytes(data[:33] + chunk + data[33:])
    assert np.array_equal(read_image(tmp_path / "r.png"), np.rot90(expected, k=-1))


def test_format_comes_from_the_bytes_not_the_suffix(tmp_path, rgb):
    (tmp_path / "png-inside.tif").write_bytes(_png_bytes(rgb))
    assert np.array_equal(read_image(tmp_path / "png-inside.tif"), rgb)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a recognised image"),
    ],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_image(path)


def test_truncated_jpeg(tmp_path, rgb):
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(rgb, 8, 0), 8, 1)).save(buf, format="JPEG")
    data = buf.getvalue()
    path = tmp_path / "t.jpg"
    for cut in (10, 200, len(data) // 2):  # header cut short, and data cut short
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated or corrupt"):
            read_image(path)


def test_missing_dir_and_types(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="cannot read an image"):
        read_image(12345)
    with pytest.raises(InputError, match="not an image"):
        read_image(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(InputError, match="no pixels"):
        read_image(np.zeros((0, 5), np.uint8))


def test_pixel_limit(tmp_path, monkeypatch):
    big = np.zeros((100, 100), np.uint8)
    with pytest.raises(InputError, match="above the limit"):
        read_image(big, max_pixels=5000)
    (tmp_path / "b.png").write_bytes(_png_bytes(big))
    monkeypatch.setenv("IMSEG_MAX_PIXELS", "9999")
    with pytest.raises(InputError, match="IMSEG_MAX_PIXELS"):
        read_image(tmp_path / "b.png")
    monkeypatch.setenv("IMSEG_MAX_PIXELS", "1e9")
    with pytest.raises(ConfigError, match="IMSEG_MAX_PIXELS='1e9' is not a whole number"):
        read_image(tmp_path / "b.png")
    monkeypatch.delenv("IMSEG_MAX_PIXELS")
    # Pillow's own guard (here lowered to 100 px) must not override imseg's limit, in either direction
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(tmp_path / "b.png", max_pixels=20_000).shape == (100, 100, 3)
    with pytest.raises(InputError, match="above the limit of 5,000"):
        read_image(tmp_path / "b.png", max_pixels=5000)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_list_images(tmp_path, rgb):
    for name in ("b.png", "a.jpg", "c.txt"):
        write_image(tmp_path / name, rgb) if name != "c.txt" else (tmp_path / name).write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png"]
    assert [p.name for p in list_images(str(tmp_path / "*.png"))] == ["b.png"]
    with pytest.raises(InputError):
        list_images(tmp_path / "missing")
    with pytest.raises(InputError, match="matched no files"):
        list_images(str(tmp_path / "*.bmp"))


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_validate_points_and_box():
    coords, labels = validate_points([(1, 2), (3, 4)], [1, 0], (10, 10))
    assert coords.shape == (2, 2) and labels.tolist() == [1, 0]
    with pytest.raises(PromptError, match="one entry per point"):
        validate_points([(1, 2)], [1, 0], (10, 10))
    with pytest.raises(PromptError, match="outside"):
        validate_points([(11, 2)], [1], (10, 10))
    with pytest.raises(PromptError, match=r"\(N, 2\)"):
        validate_points([1, 2, 3], None)
    # labels: whole numbers from SAM's vocabulary by default, or the caller's (classical methods: 0/1)
    assert validate_points([(1, 2)] * 5, np.array([1.0, 0.0, -1.0, 2.0, 3.0]))[1].tolist() == [1, 0, -1, 2, 3]
    assert validate_points([(1, 2)] * 2, [True, False])[1].tolist() == [1, 0]
    with pytest.raises(PromptError, match="label 2 is not one of \\[0, 1\\]"):
        validate_points([(1, 2)], [2], allowed_labels=(0, 1))
    with pytest.raises(PromptError, match="whole numbers.*got nan"):
        validate_points([(1, 2)], [float("nan")])
    with pytest.raises(PromptError, match="points must be numbers"):
        validate_points([("x", 2)], [1])
    assert validate_box([1, 1, 5, 5], (10, 10)).shape == (4,)
    assert validate_box([[1, 1, 5, 5], [0, 0, 2, 2]]).shape == (2, 4)
    with pytest.raises(PromptError, match="inverted"):
        validate_box([5, 1, 1, 5])
    with pytest.raises(PromptError, match="outside"):
        validate_box([20, 20, 30, 30], (10, 10))


def test_tiff_pixel_limit_counts_height_by_width_before_decoding(tmp_path, monkeypatch):
    """A page of 5 samples per pixel is height x width pixels (not width x 5): refused from its tags, undecoded."""
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((4000, 3000, 5), np.uint8), photometric="minisblack", planarconfig="contig",
                     compression="zlib")
    assert path.stat().st_size < 1_000_000  # 60 MB once decoded
    decoded = []
    real_asarray = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: decoded.append(1) or real_asarray(self, *a, **k))
    monkeypatch.setenv("IMSEG_MAX_PIXELS", "1000000")
    with pytest.raises(InputError, match=r"3000x4000 = 12,000,000 pixels, above the limit of 1,000,000"):
        read_image(path)
    from imseg.classical import read_gray

    with pytest.raises(InputError, match="above the limit"):
        read_gray(path)
    monkeypatch.delenv("IMSEG_MAX_PIXELS")
    with pytest.raises(InputError, match="5 samples per pixel"):  # within the limit, still not an image
        read_image(path)
    assert decoded == []
    tifffile.imwrite(path, np.zeros((3, 40, 30), np.uint8), photometric="rgb", planarconfig="separate")
    with pytest.raises(InputError, match="30x40 = 1,200 pixels"):
        read_image(path, max_pixels=1000)
    assert read_image(path).shape == (40, 30, 3) and decoded == [1]


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch, bit_depth):
    import cv2
    from PIL import ImageFile

    array = np.zeros((3000, 2000, 3), np.uint8 if bit_depth == 8 else np.uint16)
    path = tmp_path / "big.png"
    assert cv2.imwrite(str(path), array)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append("pil"))
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append("cv2"))
    with pytest.raises(InputError, match="2000x3000 = 6,000,000 pixels, above the limit of 1,000,000"):
        read_image(path, max_pixels=1_000_000)
    assert decoded == []


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_devices_and_fifos_are_refused_before_opening(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="/dev/zero: is a character device, not a regular file"):
        read_image("/dev/zero")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    with pytest.raises(InputError, match="is a FIFO"):  # no writer: opening it for reading would block
        read_image(fifo)
    assert str(fifo) not in [str(p) for p in opened]


def test_byte_cap(tmp_path, monkeypatch, rgb):
    path = write_image(tmp_path / "a.png", rgb)
    size = path.stat().st_size
    assert read_image(path, max_bytes=size).shape == (20, 32, 3)
    with pytest.raises(InputError, match=rf"\({size:,} bytes\) is larger than the limit of {size - 1:,} bytes"):
        read_image(path, max_bytes=size - 1)
    monkeypatch.setenv("IMSEG_MAX_BYTES", "100")
    with pytest.raises(InputError, match="IMSEG_MAX_BYTES"):
        read_image(path)
    for bad in ("1GB", "0", "-5"):
        monkeypatch.setenv("IMSEG_MAX_BYTES", bad)
        with pytest.raises(ConfigError, match=f"IMSEG_MAX_BYTES='{bad}' is not a positive whole number"):
            read_image(path)
    monkeypatch.setenv("IMSEG_MAX_BYTES", str(size))
    assert read_image(path).shape == (20, 32, 3)


def test_classical_gray_reader_keeps_the_byte_cap(tmp_path, monkeypatch, rgb):
    """The classical methods' raw-intensity reader goes through the same capped reader as read_image."""
    from imseg.classical import read_gray

    path = write_image(tmp_path / "a.png", rgb)
    monkeypatch.setenv("IMSEG_MAX_BYTES", "100")
    with pytest.raises(InputError, match="IMSEG_MAX_BYTES"):
        read_gray(path)


def test_reading_a_small_file_does_not_allocate_the_byte_cap(tmp_path, rgb):
    """The 1 GiB default cap bounds a read; it is not allocated for every image (read(n) allocates n bytes)."""
    import tracemalloc

    path = write_image(tmp_path / "a.png", rgb)
    tracemalloc.start()
    try:
        assert read_image(path).shape == (20, 32, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_byte_cap_holds_when_the_size_is_not_known_in_advance(tmp_path, monkeypatch, rgb):
    """A file whose stat size is 0 (as /proc files report) is still read no further than the cap."""
    import imseg.io as imseg_io

    path = write_image(tmp_path / "a.png", rgb)
    real_stat = os.stat

    def stat_size_zero(p, *a, **k):
        info = real_stat(p, *a, **k)
        return os.stat_result((info.st_mode, *info[1:6], 0, *info[7:10]))

    monkeypatch.setattr(imseg_io.os, "stat", stat_size_zero)
    monkeypatch.setattr(imseg_io.os, "fstat", lambda fd: stat_size_zero(fd))
    with pytest.raises(InputError, match="is larger than the limit of 100 bytes"):
        read_image(path, max_bytes=100)
