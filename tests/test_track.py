"""`imseg track` end to end on real frames (the first frames of ../shared/data/video-bedroom) with a random-weight
SAM 2.1 tiny saved as the official files are: files per frame and object equal to what
``SAM2VideoPredictor`` gives for the same prompts, resuming keeps written frames, the overlay video decodes,
COCO / RLE outputs, and clear errors that keep finished frames."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2.build_sam")

from typer.testing import CliRunner  # noqa: E402

from conftest import build_official_sam2  # noqa: E402
from imseg.cli import app  # noqa: E402
from imseg.errors import PromptError  # noqa: E402
from imseg.track import parse_prompts  # noqa: E402

FRAMES = 4
# object 1: a point on frame 0; object 2: a box added on frame 1 (mid-video)
TWO_OBJECTS = ["--points", "480,270", "--box", "-", "--obj-id", "1", "--frame", "0",
               "--points", "-", "--box", "100,100,400,500", "--obj-id", "2", "--frame", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("track_ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": build_official_sam2("t").state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def frames(data_dir, tmp_path_factory):
    source = data_dir / "video-bedroom"
    if not (source / "00000.jpg").is_file():
        pytest.skip(f"{source} not found")
    folder = tmp_path_factory.mktemp("bedroom")
    for i in range(FRAMES):
        (folder / f"{i:05d}.jpg").symlink_to(source / f"{i:05d}.jpg")
    return folder


def track(*args: str):
    return CliRunner().invoke(app, ["track", *map(str, args)])


@pytest.fixture(scope="module")
def reference(checkpoint, frames) -> dict[int, dict[int, np.ndarray]]:
    """The video predictor itself, same prompts: {frame: {obj_id: mask}}."""
    from imseg.sam2 import build_sam2_video_predictor

    predictor = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint, device="cpu")
    state = predictor.init_state(str(frames))
    predictor.add_new_points_or_box(state, 0, 1, points=np.array([[480, 270]], np.float32), labels=np.array([1]))
    predictor.add_new_points_or_box(state, 1, 2, box=np.array([100, 100, 400, 500], np.float32))
    out = {}
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
        out[frame_idx] = {int(k): (logits[i, 0] > 0).numpy() for i, k in enumerate(obj_ids)}
    return out


def read_png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path)) > 127


@pytest.mark.slow
def test_track_png_resume_overlay(checkpoint, frames, reference, tmp_path):
    out = tmp_path / "run"
    first = track(frames, "--checkpoint", checkpoint, *TWO_OBJECTS, "--out", out, "--max-frames", 2)
    assert first.exit_code == 0, first.output
    pngs = sorted(p.name for p in (out / "masks").iterdir())
    assert pngs == ["00000_obj1.png", "00000_obj2.png", "00001_obj1.png", "00001_obj2.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}

    second = track(frames, "--checkpoint", checkpoint, *TWO_OBJECTS, "--out", out, "--overlay")
    assert second.exit_code == 0, second.output
    assert "2 written, 2 kept" in second.output
    for name, stamp in stamps.items():  # frames already written are not written again
        assert (out / "masks" / name).stat().st_mtime_ns == stamp
    ref = reference
    assert sorted(ref) == list(range(FRAMES))
    for frame_idx, objects in ref.items():
        for obj_id, mask in objects.items():
            np.testing.assert_array_equal(read_png(out / "masks" / f"{frame_idx:05d}_obj{obj_id}.png"), mask)

    import av

    with av.open(str(out / "overlay.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == FRAMES and decoded[0].shape == (540, 960, 3)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "rle"])
def test_track_json_formats(checkpoint, frames, reference, tmp_path, fmt):
    from pycocotools import mask as mask_utils

    out = tmp_path / fmt
    result = track(frames, "--checkpoint", checkpoint, *TWO_OBJECTS, "--out", out, "--format", fmt,
                   "--max-frames", 3)
    assert result.exit_code == 0, result.output
    ref = reference

    def decode(rle):
        return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)

    if fmt == "coco":
        doc = json.loads((out / "annotations.json").read_text())
        assert [c["id"] for c in doc["categories"]] == [1, 2]
        assert [im["frame"] for im in doc["images"]] == [0, 1, 2]
        assert len(doc["annotations"]) == 6
        got = {(a["image_id"] - 1, a["category_id"]): decode(a["segmentation"]) for a in doc["annotations"]}
    else:
        doc = json.loads((out / "masks.rle.json").read_text())
        got = {(f["frame"], o["obj_id"]): decode(o["rle"]) for f in doc["frames"] for o in f["objects"]}
    assert set(got) == {(f, k) for f in range(3) for k in (1, 2)}
    for (frame_idx, obj_id), mask in got.items():
        np.testing.assert_array_equal(mask, ref[frame_idx][obj_id])


@pytest.mark.slow
def test_track_reverse_covers_frames_before_the_prompt(checkpoint, frames, tmp_path):
    out = tmp_path / "rev"
    result = track(frames, "--checkpoint", checkpoint, "--points", "480,270", "--frame", 2, "--out", out,
                   "--reverse")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:05d}_obj1.png" for i in range(FRAMES)]


def test_track_errors_are_clear(checkpoint, frames, tmp_path):
    missing = track(frames, "--checkpoint", checkpoint, "--points", "10,10", "--frame", 99, "--out", tmp_path / "a")
    assert missing.exit_code == 1 and "frame 99" in missing.output and "4 frames" in missing.output
    wrong = track(frames, "--model", "sam2.1-hiera-s", "--checkpoint", checkpoint, "--points", "10,10",
                  "--out", tmp_path / "b")
    assert wrong.exit_code == 1 and "hiera_t" in wrong.output and "Traceback" not in wrong.output
    outside = track(frames, "--checkpoint", checkpoint, "--points", "2000,10", "--out", tmp_path / "c")
    assert outside.exit_code == 1 and "outside the 960x540 frame" in outside.output
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def test_track_in_bf16_keeps_the_masks_and_its_own_output(checkpoint, frames, reference, tmp_path):
    """--precision bf16 tracks with a bfloat16 encoder and memory attention: the same masks as float32 up to the
    pixels random weights leave near zero; a float32 re-run into its --out is another run, refused by name."""
    out = tmp_path / "bf16"
    result = track(frames, "--checkpoint", checkpoint, *TWO_OBJECTS, "--out", out, "--max-frames", 2,
                   "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert "[bf16]" in result.output
    for frame_idx in (0, 1):  # object 2 is prompted on frame 1, so two frames hold both objects
        for obj_id, mask in reference[frame_idx].items():
            got = read_png(out / "masks" / f"{frame_idx:05d}_obj{obj_id}.png")
            assert (got & mask).sum() / max((got | mask).sum(), 1) >= 0.95, (frame_idx, obj_id)
    again = track(frames, "--checkpoint", checkpoint, *TWO_OBJECTS, "--out", out, "--precision", "fp32")
    assert again.exit_code == 1 and "precision" in again.output


@pytest.mark.slow
def test_track_unreadable_frame_keeps_finished_frames(checkpoint, frames, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(3):
        shutil.copy(frames / f"{i:05d}.jpg", folder / f"{i:05d}.jpg")
    (folder / "00002.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    result = track(folder, "--checkpoint", checkpoint, "--points", "480,270", "--out", out)
    assert result.exit_code == 1, result.output
    assert "frame 2" in result.output and "2 finished frames are kept" in result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000_obj1.png", "00001_obj1.png"]
    other = track(folder, "--checkpoint", checkpoint, "--points", "100,100", "--out", out)
    assert other.exit_code == 1 and "another tracking run" in other.output and "prompts" in other.output


def test_parse_prompts():
    prompts = parse_prompts([3], ["1,2;3,4", "-"], ["1,0", "-"], ["-", "0,0,5,5"], ["7", "8"])
    assert [(p.frame, p.obj_id, p.points, p.labels, p.box) for p in prompts] == [
        (3, 7, ((1.0, 2.0), (3.0, 4.0)), (1, 0), None), (3, 8, None, None, (0.0, 0.0, 5.0, 5.0))]
    shared = parse_prompts([0, 4], ["1,2", "-"], ["0"], ["-", "0,0,5,5"], [])
    assert [(p.frame, p.obj_id, p.labels) for p in shared] == [(0, 1, (0,)), (4, 2, None)]
    with pytest.raises(PromptError, match="without --points"):
        parse_prompts([], ["1,2", "-"], ["1", "1"], ["-", "0,0,5,5"], [])
    with pytest.raises(PromptError, match="--box is given 1 times for 2 prompts"):
        parse_prompts([], ["1,2", "3,4"], [], ["0,0,5,5"], [])
    with pytest.raises(PromptError, match="2 points need 2 labels"):
        parse_prompts([], ["1,2;3,4"], ["1"], [], [])
    with pytest.raises(PromptError, match="neither --points nor --box"):
        parse_prompts([], ["-"], [], [], ["1"])
    with pytest.raises(PromptError, match="must be integers"):
        parse_prompts([], ["1,2"], [], [], ["car"])
