"""The SAM 2.1 video predictor's frame sources and streaming state (beyond the official predictor): lazy JPEG
folders, video files (PyAV) and frame iterators, flat memory on long videos, objects added while streaming, and
clear errors for bad input. Small model inputs (64 px) keep these fast; parity is in test_sam2_video.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imseg.errors import InputError, PromptError, StateError  # noqa: E402
from imseg.io import read_image  # noqa: E402
from imseg.sam2 import build_sam2_video_predictor  # noqa: E402
from imseg.sam2.video_state import state_tensor_bytes  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SIZE = 64
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return build_sam2_video_predictor(CONFIG, device="cpu", hydra_overrides_extra=[f"++model.image_size={SIZE}"])


@pytest.fixture(scope="module")
def bedroom(data_dir) -> Path:
    src = data_dir / "video-bedroom"
    if not (src / "00199.jpg").is_file():
        pytest.skip(f"{src} does not hold the 200 bedroom frames")
    return src


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """Three synthetic 96x64 JPEG frames: a bright square moving right."""
    from PIL import Image

    for i in range(3):
        img = np.full((64, 96, 3), 30, np.uint8)
        img[20:44, 10 + 8 * i:34 + 8 * i] = 220
        Image.fromarray(img).save(tmp_path / f"{i:05d}.jpg")
    return tmp_path


def _track(predictor, state, stop_at=None, add_at=None):
    """{frame: mask logits}; with ``add_at`` a second object is clicked on that frame inside the loop."""
    out = {}
    for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
        out[frame_idx] = (list(obj_ids), masks.clone())
        if frame_idx == add_at:
            predictor.add_new_points_or_box(state, frame_idx, 2, points=[[700, 150]], labels=[1])
        if frame_idx == stop_at:
            break
    return out


@pytest.mark.slow
def test_stream_matches_folder_and_adds_objects_while_streaming(predictor, bedroom, tmp_path):
    """A frame iterator (streaming: only the memory window is kept) gives the folder's answers, and an object
    clicked inside the loop is tracked from the next frame as a new propagate call would track it."""
    n, add_at = 24, 10
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.jpg").symlink_to(bedroom / f"{i:05d}.jpg")
    ref_state = predictor.init_state(str(folder))
    assert not ref_state["streaming"]
    predictor.add_new_points_or_box(ref_state, 0, 1, points=[[210, 350]], labels=[1])
    ref = _track(predictor, ref_state, stop_at=add_at)
    predictor.add_new_points_or_box(ref_state, add_at, 2, points=[[700, 150]], labels=[1])
    ref.update({f: (ids, m.clone()) for f, ids, m in predictor.propagate_in_video(ref_state, start_frame_idx=add_at)})

    stream_state = predictor.init_state(read_image(p) for p in sorted(folder.glob("*.jpg")))
    assert stream_state["streaming"] and stream_state["num_frames"] is None
    predictor.add_new_points_or_box(stream_state, 0, 1, points=[[210, 350]], labels=[1])
    got = _track(predictor, stream_state, add_at=add_at)
    assert sorted(got) == list(range(n)) and stream_state["num_frames"] == n
    for f in range(n):
        ids, masks = got[f]
        ref_ids, ref_masks = ref[f]
        if f <= add_at:
            assert ids == [1]
            ref_masks = ref_masks[:1]
        else:
            assert ids == ref_ids == [1, 2]
        torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-5)
    kept = stream_state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    assert min(kept) == n - 1 - predictor.window  # older tracked outputs were dropped
    assert 0 in stream_state["output_dict_per_obj"][0]["cond_frame_outputs"]  # conditioning frames stay


MEMORY_SCRIPT = """
import json, resource, sys
from pathlib import Path
import torch
from imseg.io import read_image
from imseg.sam2 import build_sam2_video_predictor
from imseg.sam2.video_state import state_tensor_bytes

torch.manual_seed(0)
predictor = build_sam2_video_predictor("{config}", device="cpu", hydra_overrides_extra=["++model.image_size={size}"])
paths = sorted(Path("{frames}").glob("*.jpg"))
state = predictor.init_state(read_image(p) for p in paths)
predictor.add_new_points_or_box(state, 0, 1, points=[[210, 350]], labels=[1])
report = {{}}
for frame_idx, obj_ids, masks in predictor.propagate_in_video(state):
    if frame_idx == 5:
        predictor.add_new_points_or_box(state, 5, 2, points=[[700, 150]], labels=[1])
    if frame_idx + 1 in (20, 200):
        report[frame_idx + 1] = dict(rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                     state_bytes=state_tensor_bytes(state), objects=len(obj_ids))
print(json.dumps(report))
"""


@pytest.mark.slow
def test_streaming_memory_is_flat_over_200_frames(bedroom):
    """Peak RSS (a fresh process) and the state's tensor bytes after 200 frames stay within 10% of those after
    20 frames, while frames come from a camera-like iterator at the video's 960x540 resolution."""
    script = MEMORY_SCRIPT.format(config=CONFIG, size=SIZE, frames=bedroom)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    early, late = report["20"], report["200"]
    assert early["objects"] == late["objects"] == 2
    assert late["state_bytes"] <= 1.10 * early["state_bytes"]
    assert late["rss_kb"] <= 1.10 * early["rss_kb"]


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.slow
def test_video_file_is_read_lazily_and_matches_its_frames(predictor, small_folder, tmp_path):
    pytest.importorskip("av")
    import av

    from imseg.sam2.frames import VideoFileFrames

    frames = [read_image(p) for p in sorted(small_folder.glob("*.jpg"))] * 6  # 18: a stream of unknown length
    # normalises object-pointer offsets as a video of >= 16 frames does
    video = tmp_path / "clip.mp4"
    _write_video(video, frames)
    with av.open(str(video)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    source = VideoFileFrames(video)
    assert source.num_frames == len(decoded) == 18 and (source.height, source.width) == (64, 96)
    np.testing.assert_array_equal(source.rgb(4), decoded[4])
    np.testing.assert_array_equal(source.rgb(1), decoded[1])  # going back re-opens the file
    results = []
    for video_input in (str(video), iter(decoded)):
        state = predictor.init_state(video_input)
        predictor.add_new_points_or_box(state, 0, 1, box=[10, 20, 34, 44])
        results.append(torch.stack([m for _, _, m in predictor.propagate_in_video(state)]))
    assert results[0].shape == (18, 1, 1, 64, 96)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-6)


def test_bad_video_sources(predictor, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        predictor.init_state(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no JPEG frames"):
        predictor.init_state(str(tmp_path))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot be opened as a video"):
        predictor.init_state(str(tmp_path / "broken.mp4"))
    with pytest.raises(InputError, match="iterable of frames"):
        predictor.init_state(42)


def test_unreadable_frame_is_named_and_earlier_frames_are_kept(predictor, small_folder):
    (small_folder / "00001.jpg").write_bytes(b"truncated")
    state = predictor.init_state(str(small_folder))
    predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
    seen = []
    with pytest.raises(InputError, match=r"frame 1 \(.*00001\.jpg\) cannot be read"):
        for frame_idx, _, _ in predictor.propagate_in_video(state):
            seen.append(frame_idx)
    assert seen == [0]


def test_bad_prompts_and_ids(predictor, small_folder):
    state = predictor.init_state(str(small_folder))
    with pytest.raises(StateError, match="no object has prompts"):
        next(predictor.propagate_in_video(state))
    with pytest.raises(PromptError, match="frame 7 does not exist.*3 frames"):
        predictor.add_new_points_or_box(state, 7, 1, points=[[20, 30]], labels=[1])
    with pytest.raises(PromptError, match="frame -1 does not exist"):
        predictor.add_new_mask(state, -1, 1, np.ones((64, 96), bool))
    with pytest.raises(PromptError, match="given together"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]])
    with pytest.raises(PromptError, match=r"points \(with labels\) or a box"):
        predictor.add_new_points_or_box(state, 0, 1)
    with pytest.raises(PromptError, match="labels must be 1"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[5])
    with pytest.raises(PromptError, match=r"\(N, 2\)"):
        predictor.add_new_points_or_box(state, 0, 1, points=[20, 30, 40], labels=[1])
    with pytest.raises(PromptError, match="clear_old_points=True"):
        predictor.add_new_points_or_box(state, 0, 1, box=[0, 0, 10, 10], clear_old_points=False)
    with pytest.raises(PromptError, match="2-D"):
        predictor.add_new_mask(state, 0, 1, np.ones((2, 64, 96), bool))
    assert state["obj_ids"] == []  # rejected prompts add no object
    predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
    with pytest.raises(InputError, match=r"unknown object id 5.*\[1\]"):
        predictor.clear_all_prompts_in_frame(state, 0, 5)
    with pytest.raises(InputError, match="unknown object id 5"):
        predictor.remove_object(state, 5, strict=True)
    assert predictor.remove_object(state, 5) == ([1], [])
    with pytest.raises(StateError, match="inference_state must be the dict"):
        predictor.add_new_points_or_box({}, 0, 1, points=[[20, 30]], labels=[1])


def test_streaming_state_limits(predictor, small_folder):
    state = predictor.init_state(str(small_folder), streaming=True)
    predictor.add_new_points_or_box(state, 0, 1, points=[[20, 30]], labels=[1])
    with pytest.raises(StateError, match="forward only"):
        next(predictor.propagate_in_video(state, reverse=True))
    state["evicted_before"] = 1  # as after tracking past frame 1 + window
    with pytest.raises(StateError, match="no longer holds"):
        predictor.add_new_points_or_box(state, 2, 1, points=[[20, 30]], labels=[1])
    stream = predictor.init_state(iter([read_image(p) for p in sorted(small_folder.glob("*.jpg"))]))
    predictor.add_new_points_or_box(stream, 0, 1, points=[[20, 30]], labels=[1])
    assert [f for f, _, _ in predictor.propagate_in_video(stream)] == [0, 1, 2]
    with pytest.raises(StateError, match="frame 0 of the frame stream is no longer held"):
        predictor.add_new_points_or_box(stream, 0, 2, points=[[20, 30]], labels=[1])
    assert state_tensor_bytes(stream) > 0
