"""The batch runner (imseg.batch) on real photos: resume, corrupt files, interrupted runs, executors, listing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imseg.batch import BatchJob, LocalExecutor, output_names, run_batch
from imseg.cli import app
from imseg.errors import ConfigError, InputError
from imseg.io import list_images, write_image
from imseg.jobs import build_classical_job, build_segment_job


@pytest.fixture
def horses(request, tmp_path) -> Path:
    """Four Weizmann horse photos (scikit-image's sample photos where the data set is absent), a truncated
    JPEG and a file that is no image at all."""
    folder = tmp_path / "horses"
    folder.mkdir()
    try:
        photos = sorted((request.getfixturevalue("data_dir") / "weizmann-horse" / "images").glob("*.jpg"))[:5]
        for photo in photos[:4]:
            shutil.copy(photo, folder / photo.name)
        data = photos[4].read_bytes()
    except pytest.skip.Exception:
        from skimage import data as samples

        for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
            write_image(folder / f"horse{i:03d}.jpg", getattr(samples, name)()[::4, ::4])
        data = (folder / "horse000.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.png").write_bytes(b"not an image")
    return folder


class Counting(BatchJob):
    """A job around another that records which images it processed."""

    def __init__(self, job: BatchJob) -> None:
        self.job, self.seen = job, []
        self.name, self.verb, self.settings = job.name, job.verb, job.settings

    def process(self, image_path):
        self.seen.append(image_path.name)
        return self.job.process(image_path)

    def write(self, result, out_dir, name):
        return self.job.write(result, out_dir, name)

    def describe(self, result):
        return self.job.describe(result)

    def required(self, out_dir, name):
        return self.job.required(out_dir, name)

    def finish(self, out_dir, records):
        return self.job.finish(out_dir, records)


class StopAfter:
    """An executor that is interrupted (as by Ctrl-C) after ``n`` images."""

    def __init__(self, n: int) -> None:
        self.n = n

    def map(self, job, items):
        for count, outcome in enumerate(LocalExecutor().map(job, items)):
            if count == self.n:
                raise KeyboardInterrupt
            yield outcome


def tree(root: Path) -> dict[str, bytes]:
    """Every output under ``root`` with its bytes; markers without their timing."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.parent.name == "done":
            record = json.loads(data)
            record.pop("seconds")
            data = json.dumps(record, sort_keys=True).encode()
        files[path.relative_to(root).as_posix()] = data
    return files


def test_corrupt_files_fail_the_others_go_on_and_a_resumed_run_matches_a_fresh_one(horses, tmp_path):
    fresh_job = build_segment_job("otsu", fmt="coco", overlay=True)
    summary = run_batch(horses, fresh_job, tmp_path / "fresh")
    assert (summary.images, summary.done, summary.skipped, summary.failed) == (6, 4, 0, 2)
    assert summary.exit_code == 1 and summary.masks > 0
    assert sorted(Path(f.where).name for f in summary.failures) == ["cut.jpg", "notes.png"]
    assert all(f.reason for f in summary.failures)
    coco = json.loads((tmp_path / "fresh" / "coco.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == sorted(p.name for p in horses.glob("horse*.jpg"))

    # the same job interrupted after two images, then run again: only the rest is processed
    out = tmp_path / "resumed"
    first = run_batch(horses, build_segment_job("otsu", fmt="coco", overlay=True), out, executor=StopAfter(3))
    assert first.interrupted and first.exit_code == 130 and (first.done, first.failed) == (2, 1)
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 2  # covers what was finished
    finished = {row[0] for row in first.rows.values() if row[3] == "ok"}
    job = Counting(build_segment_job("otsu", fmt="coco", overlay=True))
    second = run_batch(horses, job, out)
    assert (second.done, second.skipped, second.failed) == (2, 2, 2)
    assert sorted(job.seen) == sorted({p.name for p in horses.iterdir()} - finished)
    assert tree(out) == tree(tmp_path / "fresh")

    # and once more: nothing is redone, nothing changes
    again = Counting(build_segment_job("otsu", fmt="coco", overlay=True))
    third = run_batch(horses, again, out)
    assert sorted(again.seen) == ["cut.jpg", "notes.png"] and third.skipped == 4
    assert tree(out) == tree(tmp_path / "fresh")


def test_a_marker_counts_only_while_its_outputs_exist(horses, tmp_path):
    out = tmp_path / "o"
    images = sorted(horses.glob("horse*.jpg"))[:2]
    assert run_batch(images, build_segment_job("otsu", fmt="npz"), out).done == 2
    before = tree(out)
    (out / "masks" / f"{images[0].stem}.npz").unlink()
    job = Counting(build_segment_job("otsu", fmt="npz"))
    summary = run_batch(images, job, out)
    assert job.seen == [images[0].name] and summary.redone == 1 and summary.skipped == 1
    assert tree(out) == before
    # asking for overlays now redoes both: their outputs gain the overlay
    with_overlay = run_batch(images, build_segment_job("otsu", fmt="npz", overlay=True), out)
    assert with_overlay.done == 2 and len(list((out / "overlays").iterdir())) == 2


def test_without_resume_no_markers_are_written_and_everything_is_done(horses, tmp_path):
    out = tmp_path / "o"
    images = sorted(horses.glob("horse*.jpg"))[:2]
    job = build_classical_job("otsu")
    for _ in range(2):
        summary = run_batch(images, job, out, resume=False)
        assert summary.done == 2 and summary.skipped == 0 and summary.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in images)


def test_usage_errors_come_before_any_image(horses, tmp_path):
    job = build_classical_job("otsu")
    with pytest.raises(ConfigError, match="unknown executor 'nope'; use one of local"):
        run_batch(horses, job, tmp_path / "o", executor="nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_batch(horses, job, tmp_path / "file")
    with pytest.raises(InputError, match="no such file"):
        run_batch(tmp_path / "missing", job, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_output_names_keep_same_stems_apart(tmp_path):
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "y.png"]
    names = output_names(paths)
    assert names[0] == "x" and names[1].startswith("x-") and len(names[1]) == 10 and names[2] == "y"
    assert output_names(paths[1:]) == ["x", "y"]  # no clash, no hash


def _image(seed: int) -> np.ndarray:
    image = np.zeros((24, 32, 3), np.uint8)
    image[4 + seed:12 + seed, 6:20] = 220
    return image


def test_list_images_lists_each_real_file_once(tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "a.png", _image(0))
    write_image(folder / "sub" / "b.png", _image(1))
    os.symlink(folder, folder / "sub" / "loop")  # a loop: in/sub/loop/sub/loop/...
    os.symlink(folder / "a.png", folder / "link.png")  # a second name for a.png
    expected = [folder / "a.png", folder / "sub" / "b.png"]
    assert list_images(f"{folder}/**/*.png") == expected
    assert list_images(folder) == [folder / "a.png"]
    assert list_images([folder / "a.png", folder / "link.png", f"{folder}/**/b.png"]) == expected

    result = CliRunner().invoke(app, ["classical", f"{folder}/**/*.png", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "2 segmented, 0 skipped (already done), 0 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "b.png"]


class Flaky(BatchJob):
    """Copies images; the model fails on ``b``, the disk is full when ``c`` is written."""

    name, verb, settings = "copy", "copied", {"version": 1}

    def process(self, image_path):
        from imseg.io import read_image

        if image_path.stem == "b":
            raise RuntimeError("the model failed")
        return read_image(image_path)

    def write(self, result, out_dir, name):
        import errno

        if name == "c":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return [write_image(out_dir / f"{name}.png", result)]


def test_any_failure_in_process_or_write_is_that_images_and_the_summary_names_it(tmp_path):
    import io

    from rich.console import Console

    for i, stem in enumerate("abcd"):
        write_image(tmp_path / "in" / f"{stem}.png", _image(i))
    out = tmp_path / "out"
    summary = run_batch(tmp_path / "in", Flaky(), out, console=Console(file=io.StringIO()))
    assert (summary.done, summary.failed, summary.exit_code) == (2, 2, 1)
    reasons = {Path(f.where).name: f.reason for f in summary.failures}
    assert reasons == {"b.png": "RuntimeError: the model failed", "c.png": "No space left on device"}
    assert sorted(p.name for p in (out / "done").iterdir()) == ["a.json", "d.json"]
    text = io.StringIO()
    summary.print(Console(file=text, width=200))
    printed = text.getvalue()
    assert "2 copied, 0 skipped (already done), 2 failed" in printed and "2 of 4 image(s) failed:" in printed
    assert "b.png: RuntimeError: the model failed" in printed and "c.png: No space left on device" in printed
    again = run_batch(tmp_path / "in", Flaky(), out, console=Console(file=io.StringIO()))
    assert (again.done, again.skipped, again.failed) == (0, 2, 2)
