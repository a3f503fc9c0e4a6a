"""`imseg segment`: folders with a corrupt file, COCO output, overlays, resuming, outputs replaced under new
settings, failed writes, prompt checks, random-weight guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imseg.cli import app
from imseg.io import write_image

runner = CliRunner()


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """astronaut, coffee and chelsea downscaled to ~96 px, plus a corrupt .jpg."""
    from skimage import data, transform

    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(data, name)()
        scale = 96 / max(img.shape[:2])
        small = transform.resize(img, (round(img.shape[0] * scale), round(img.shape[1] * scale)), anti_aliasing=True)
        write_image(root / f"{name}.png", (small * 255).round().astype(np.uint8))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return root


def run(*args: str):
    return runner.invoke(app, ["segment", *map(str, args)])


def test_folder_to_coco_with_corrupt_file_and_resume(photo_dir, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    result = run(photo_dir, "--model", "otsu", "--format", "coco", "--overlay", "--out", out)
    assert result.exit_code == 1, result.output  # one image failed
    assert "broken.jpg" in result.output and "3 segmented" in result.output
    coco = COCO(str(out / "coco.json"))
    assert sorted(im["file_name"] for im in coco.dataset["images"]) == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert len(coco.getAnnIds()) > 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        assert coco.annToMask(ann).shape == (image["height"], image["width"])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["astronaut.png", "chelsea.png", "coffee.png"]

    # a second run redoes nothing (the corrupt file is tried again and still fails)
    stamp = (out / "masks" / "coffee.json").stat().st_mtime_ns
    again = run(photo_dir, "--model", "otsu", "--format", "coco", "--out", out)
    assert again.exit_code == 1 and "0 segmented, 3 skipped" in again.output
    assert (out / "masks" / "coffee.json").stat().st_mtime_ns == stamp

    # a run killed after two images: only the missing one is redone, the COCO file covers all three
    (out / "done" / "chelsea.json").unlink()
    resumed = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert resumed.exit_code == 0 and "1 segmented, 2 skipped (already done), 0 failed" in resumed.output
    assert len(COCO(str(out / "coco.json")).dataset["images"]) == 3
    assert not list(out.rglob(".*.tmp*"))


@pytest.mark.slow
def test_mobile_sam_point_prompt(photo_dir, mobile_sam_checkpoint, tmp_path):
    from imseg.masks import Masks

    out = tmp_path / "sam"
    args = [photo_dir / "coffee.png", "--model", "mobile-sam", "--checkpoint", mobile_sam_checkpoint,
            "--points", "40,30", "--points", "10,10", "--labels", "1,0", "--format", "rle", "--overlay", "--out", out]
    result = run(*args)
    assert result.exit_code == 0, result.output
    masks = Masks.load(out / "masks" / "coffee.rle.json")
    assert len(masks) == 1 and masks.image_size == (64, 96)
    assert "low_res_logits" not in masks.fields  # bulky fields stay out of JSON
    assert (out / "overlays" / "coffee.png").is_file()
    assert "0 segmented, 1 skipped" in run(*args).output


def test_random_weights_need_explicit_flag(photo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "empty-cache"))
    result = run(photo_dir / "coffee.png", "--model", "mobile-sam", "--points", "5,5", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "imseg weights download mobile-sam" in result.output
    assert not (tmp_path / "o" / "done").exists()


def test_bad_options_exit_2(photo_dir, tmp_path):
    for args, message in [
        (["--format", "tiff"], "--format must be one of"),
        (["--points", "1;2"], "comma-separated"),
        (["--box", "1,2,3"], "x0,y0,x1,y1"),
        (["--everything", "--points", "1,2"], "cannot be combined"),
        (["--labels", "1"], "--labels needs --points"),
        (["--points", "1,2", "--points-per-side", "4"], "everything mode only"),
        (["--model", "nosuchmodel"], "unknown model"),
    ]:
        result = run(photo_dir, "--out", tmp_path / "x", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    missing = run(tmp_path / "missing_dir", "--model", "otsu", "--out", tmp_path / "y")
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_done_marker_records_the_image(photo_dir, tmp_path):
    out = tmp_path / "m"
    assert run(photo_dir / "chelsea.png", "--model", "otsu", "--format", "npz", "--out", out).exit_code == 0
    info = json.loads((out / "done" / "chelsea.json").read_text())
    assert info["masks"] >= 1 and info["format"] == "npz" and (out / "masks" / "chelsea.npz").is_file()


def test_post_pipeline_is_applied(photo_dir, tmp_path):
    from imseg.masks import Masks

    plain, cleaned = tmp_path / "plain", tmp_path / "cleaned"
    assert run(photo_dir / "coffee.png", "--model", "otsu", "--format", "npz", "--out", plain).exit_code == 0
    result = run(photo_dir / "coffee.png", "--model", "otsu", "--format", "npz", "--out", cleaned,
                 "--post", "remove_small=50,fill_holes=50")
    assert result.exit_code == 0, result.output
    before = Masks.load(plain / "masks" / "coffee.npz")
    after = Masks.load(cleaned / "masks" / "coffee.npz")
    # the pipeline removes every connected piece under 50 px: check it on the output itself
    from scipy import ndimage

    for mask in after.masks:
        labels, n = ndimage.label(mask)
        assert n == 0 or np.bincount(labels.ravel())[1:].min() >= 50
    assert sum(int(m.sum()) for m in after.masks) != sum(int(m.sum()) for m in before.masks)
    bad = run(photo_dir / "coffee.png", "--model", "otsu", "--out", tmp_path / "bad", "--post", "nonsense=3")
    assert bad.exit_code == 2 and "nonsense" in bad.output


@pytest.mark.slow
def test_onnxruntime_backend(photo_dir, mobile_sam_checkpoint, tmp_path, monkeypatch):
    """--backend onnxruntime exports the checkpoint once to the cache and gives the torch masks."""
    from imseg.masks import Masks

    monkeypatch.setenv("IMSEG_HOME", str(tmp_path / "home"))
    common = [photo_dir / "coffee.png", "--model", "mobile-sam", "--checkpoint", mobile_sam_checkpoint,
              "--box", "10,5,80,60", "--format", "npz"]
    assert run(*common, "--out", tmp_path / "torch").exit_code == 0
    result = run(*common, "--out", tmp_path / "ort", "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    ref = Masks.load(tmp_path / "torch" / "masks" / "coffee.npz")
    ort = Masks.load(tmp_path / "ort" / "masks" / "coffee.npz")
    assert len(ref) == len(ort) == 1
    disagree = (ref.masks != ort.masks).mean()
    assert disagree <= 0.001, f"{disagree:.4%} of pixels differ between torch and ONNX Runtime"


@pytest.mark.slow
def test_sam_everything_on_a_folder(photo_dir, mobile_sam_checkpoint, tmp_path):
    """SAM everything mode over the sample photos: masks, overlays and one COCO file pycocotools loads."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "everything"
    result = run(photo_dir / "*.png", "--model", "mobile-sam", "--checkpoint", mobile_sam_checkpoint, "--everything",
                 "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                 "--format", "coco", "--overlay", "--out", out)
    assert result.exit_code == 0, result.output
    coco = COCO(str(out / "coco.json"))
    assert len(coco.dataset["images"]) == 3
    assert len(coco.getAnnIds()) >= 3  # thresholds at 0: candidates survive on every image
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        mask = coco.annToMask(ann)
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == ann["area"] == int(mask_utils.area(ann["segmentation"]))
    assert len(list((out / "overlays").iterdir())) == 3


def test_same_file_names_in_two_folders_and_changed_settings(tmp_path):
    """Outputs are named per image path, not per file stem, and a marker only counts for the same job."""
    from imseg.masks import Masks

    small = np.zeros((20, 30, 3), np.uint8)
    small[5:15, 5:20] = 200
    wide = np.zeros((40, 50, 3), np.uint8)
    wide[:, :25] = 200
    write_image(tmp_path / "a" / "photo.png", small)
    write_image(tmp_path / "b" / "photo.png", wide)
    out = tmp_path / "out"
    first = run(tmp_path / "*" / "photo.png", "--model", "otsu", "--format", "npz", "--out", out)
    assert first.exit_code == 0 and "2 segmented, 0 skipped" in first.output, first.output
    sizes = sorted(Masks.load(p).image_size for p in (out / "masks").glob("*.npz"))
    assert sizes == [(20, 30), (40, 50)]
    # each folder alone later: both are recognised as done, neither takes the other's outputs
    for folder in ("b", "a"):
        again = run(tmp_path / folder, "--model", "otsu", "--format", "npz", "--out", out)
        assert "0 segmented, 1 skipped" in again.output, again.output
    # another format into the same --out: redone and said so; coco.json lists each image once
    coco = run(tmp_path / "*" / "photo.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert coco.exit_code == 0 and "2 segmented" in coco.output and "with other settings" in coco.output
    images = json.loads((out / "coco.json").read_text())["images"]
    assert sorted((im["height"], im["width"]) for im in images) == [(20, 30), (40, 50)]
    assert len({im["file_name"] for im in images}) == 2
    assert "0 segmented, 2 skipped" in run(tmp_path / "*" / "photo.png", "--model", "otsu", "--format", "coco",
                                           "--out", out).output
    (tmp_path / "afile").write_text("x")
    as_file = run(tmp_path / "a", "--model", "otsu", "--out", tmp_path / "afile")
    assert as_file.exit_code == 2 and "is a file" in as_file.output


def _outputs(root):
    """Every file under an out dir (markers aside) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name != "done"}


def test_other_settings_replace_an_images_outputs_completely(photo_dir, tmp_path):
    """Redone with another model, an image keeps only the new outputs: the same files as a fresh run."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    first = run(photo_dir / "*.png", "--model", "slic", "--overlay", "--out", out)
    assert first.exit_code == 0, first.output
    assert len(list((out / "masks" / "coffee").glob("*.png"))) > 5  # SLIC: many superpixels
    second = run(photo_dir / "*.png", "--model", "otsu", "--out", out)
    assert second.exit_code == 0 and "3 segmented" in second.output, second.output
    assert run(photo_dir / "*.png", "--model", "otsu", "--out", fresh).exit_code == 0
    assert _outputs(out) == _outputs(fresh)
    info = json.loads((out / "done" / "coffee.json").read_text())
    assert sorted(info["files"]) == sorted(p for p in _outputs(fresh) if "coffee" in p)


def _failing_write_bytes(monkeypatch, should_fail):
    """imseg.io.write_bytes raising ENOSPC (a full disk) for the paths ``should_fail`` picks."""
    import errno
    import os

    import imseg.io

    real = imseg.io.write_bytes

    def write_bytes(path, data):
        if should_fail(Path(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(imseg.io, "write_bytes", write_bytes)


def test_a_full_disk_at_the_coco_file_is_reported_in_the_summary(photo_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _failing_write_bytes(monkeypatch, lambda p: p.name == "coco.json")
    result = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert "coco.json" in result.output and "No space left on device" in result.output
    assert "3 segmented, 0 skipped (already done), 0 failed" in result.output  # the summary is printed
    assert not (out / "coco.json").exists()
    monkeypatch.undo()  # space again: the images are done, the COCO file is written
    again = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert again.exit_code == 0 and "0 segmented, 3 skipped" in again.output, again.output
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 3


def test_a_full_disk_at_a_done_marker_fails_that_image_only(photo_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _failing_write_bytes(monkeypatch, lambda p: p.parent.name == "done" and p.name == "coffee.json")
    result = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert "coffee.png" in result.output and "No space left on device" in result.output
    assert "2 segmented, 0 skipped (already done), 1 failed" in result.output
    assert [im["file_name"] for im in json.loads((out / "coco.json").read_text())["images"]] == \
        ["astronaut.png", "chelsea.png"]
    monkeypatch.undo()
    again = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert again.exit_code == 0 and "1 segmented, 2 skipped" in again.output, again.output
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 3


def test_an_unwritable_out_dir_is_one_clear_error(photo_dir, tmp_path, monkeypatch):
    """A read-only --out (simulated below the file system: tests run as root) fails up front with exit 2."""
    import errno
    import os
    import tempfile

    out = tmp_path / "readonly"
    out.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(out.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert f"--out {out} is not writable (Read-only file system)" in result.output
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes to read-only directories")
def test_a_read_only_out_dir_is_one_clear_error(photo_dir, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = run(photo_dir / "*.png", "--model", "otsu", "--format", "coco", "--out", out)
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2 and "is not writable" in result.output, result.output


@pytest.mark.parametrize("args, message", [
    (["--points", "50,50", "--labels", "1,0"], "one entry per point: got 1 points and 2 labels"),
    (["--points", "5,5", "--labels", "2"], "label 2 is not one of [0, 1]"),
    (["--points", "5,5", "--labels", "3"], "label 3 is not one of [0, 1]"),
    (["--points", "5,5", "--labels=-1"], "label -1 is not one of [0, 1]"),
    (["--points", "nan,5"], "NaN"),
    (["--box", "50,50,10,10"], "is inverted"),
    (["--points", "5,5", "--box", "40,30,20,60"], "is inverted"),
])
def test_prompt_errors_are_found_once_before_any_image(photo_dir, mobile_sam_checkpoint, tmp_path, monkeypatch,
                                                       args, message):
    import imseg.io

    read = []
    monkeypatch.setattr(imseg.io, "read_image", lambda *a, **k: read.append(a) or pytest.fail("an image was read"))
    result = run(photo_dir, "--model", "mobile-sam", "--checkpoint", mobile_sam_checkpoint, *args,
                 "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert result.output.count(message) == 1, result.output
    assert not read and not (tmp_path / "o").exists()
