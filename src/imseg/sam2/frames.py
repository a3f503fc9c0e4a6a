"""Lazy video frame sources for the SAM 2 video predictor: a folder of JPEG frames, a video file (PyAV) or a
Python iterator of frames (a camera). Nothing is decoded up front; each source keeps at most the frames that
may still be asked for, so memory does not grow with the video length."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, StateError
from .transforms import MEAN, STD

JPEG_SUFFIXES = (".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def preprocess_frame(rgb: np.ndarray, image_size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, S, S): a bicubic PIL resize to the square model input (as the
    official video predictor loads frames), then ImageNet mean/std."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(rgb).resize((image_size, image_size)))
    x = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
    mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


class FrameSource:
    """Frames by index, read on demand. ``num_frames`` is None while the length is unknown (a live stream)."""

    description = "video"
    num_frames: int | None = None

    def __init__(self, recent: int = 2) -> None:
        self._recent: OrderedDict[int, np.ndarray] = OrderedDict()
        self._keep = recent
        self.height = self.width = 0

    def rgb(self, index: int) -> np.ndarray:
        """The frame ``index`` as RGB uint8 (H, W, 3) at the video resolution."""
        self._check_index(index)
        frame = self._recent.get(index)
        if frame is None:
            frame = self._read(index)
            if frame.shape[:2] != (self.height, self.width) and self.height:
                raise InputError(f"frame {index} of {self.description} is {frame.shape[1]}x{frame.shape[0]} "
                                 f"but frame 0 is {self.width}x{self.height}; all frames of a video must have one "
                                 f"size (resize them first).")
            self._recent[index] = frame
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        return frame

    def release_before(self, index: int) -> None:
        """Frames before ``index`` will not be asked for again (sources that buffer may drop them)."""

    def has_frame(self, index: int) -> bool:
        return index >= 0 and (self.num_frames is None or index < self.num_frames)

    def _check_index(self, index: int) -> None:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise InputError(f"frame_idx must be an integer frame index, got {index!r}.")
        if not self.has_frame(int(index)):
            raise InputError(f"frame {index} does not exist in {self.description}: it has {self.length_text()}; "
                             f"frame indices start at 0.")

    def length_text(self) -> str:
        return f"{self.num_frames} frames (0..{self.num_frames - 1})" if self.num_frames else "no frames"

    def _read(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _init_size(self) -> None:
        first = self.rgb(0)
        self.height, self.width = first.shape[:2]


def _frame_key(name: str) -> tuple:
    """Numeric file names sort by number (00009 < 00010), others by their digit runs."""
    stem = Path(name).stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, [int(t) if t.isdigit() else t
                                                               for t in re.split(r"(\d+)", stem)])


class FolderFrames(FrameSource):
    """A folder of JPEG frames (``00000.jpg``, ``00001.jpg``, ...), read from disk when needed."""

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__()
        self.folder = Path(folder)
        names = [p.name for p in self.folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES and p.is_file()]
        if not names:
            raise InputError(f"{self.folder}: no JPEG frames (*.jpg, *.jpeg) in this folder; write the video's "
                             f"frames as 00000.jpg, 00001.jpg, ... or pass the video file itself.")
        self.paths = [self.folder / n for n in sorted(names, key=_frame_key)]
        self.num_frames = len(self.paths)
        self.description = f"the frame folder {self.folder}"
        self._init_size()

    def _read(self, index: int) -> np.ndarray:
        from ..io import read_image

        path = self.paths[index]
        try:
            return read_image(path)
        except InputError as exc:
            raise InputError(f"frame {index} ({path}) cannot be read: {exc}") from exc
        except OSError as exc:
            raise InputError(f"frame {index} ({path}) cannot be read: {exc}. Replace or remove the file.") from exc


class VideoFileFrames(FrameSource):
    """A video file decoded with PyAV, sequentially; going back re-opens the file and decodes forward again."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(recent=2)
        from ..errors import require

        self.av = require("av", "video", "Reading video files")
        self.path = Path(path)
        self.description = f"the video {self.path}"
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such video file.")
        self._container: Any = None
        self._frames: Iterator | None = None
        self._next = 0
        self.num_frames = self._count_frames()
        if not self.num_frames:
            raise InputError(f"{self.path}: the video has no decodable frames.")
        self._init_size()

    def _open(self) -> None:
        self.close()
        try:
            self._container = self.av.open(str(self.path))
            stream = self._container.streams.video[0]
        except (self.av.FFmpegError, IndexError, OSError) as exc:
            raise InputError(f"{self.path}: cannot be opened as a video ({exc}); pass a readable video file "
                             f"(mp4, mov, avi, mkv, webm) or a folder of JPEG frames.") from exc
        self._frames = self._container.decode(stream)
        self._next = 0

    def _count_frames(self) -> int:
        self._open()
        n = int(self._container.streams.video[0].frames or 0)
        if n <= 0:  # the container does not record it: count by decoding once
            n = sum(1 for _ in self._frames)  # type: ignore[union-attr]
        self._open()
        return n

    def _read(self, index: int) -> np.ndarray:
        if self._frames is None or index < self._next:
            self._open()
        try:
            while True:
                frame = next(self._frames)  # type: ignore[arg-type]
                self._next += 1
                if self._next - 1 == index:
                    return frame.to_ndarray(format="rgb24")
        except StopIteration:
            self.num_frames = self._next
            raise InputError(f"frame {index} of {self.path} cannot be decoded: the video ends after "
                             f"{self._next} frames.") from None
        except self.av.FFmpegError as exc:
            raise InputError(f"frame {index} of {self.path} cannot be decoded: {exc}.") from exc

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class IteratorFrames(FrameSource):
    """Frames pulled from an iterator (a camera, a generator): forward only, length unknown until it ends.
    Frames read ahead are buffered until :meth:`release_before` passes them."""

    def __init__(self, frames: Iterable[Any]) -> None:
        super().__init__(recent=0)
        self._it = iter(frames)
        self._buffer: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pulled = 0
        self._released = 0
        self.description = "the frame stream"
        self._init_size()

    def has_frame(self, index: int) -> bool:
        if index < 0:
            return False
        while self.num_frames is None and index >= self._pulled:
            self._pull()
        return self.num_frames is None or index < self.num_frames

    def length_text(self) -> str:
        return f"ended after {self.num_frames} frames" if self.num_frames is not None else "not ended"

    def _pull(self) -> None:
        from ..io import read_image

        try:
            item = next(self._it)
        except StopIteration:
            self.num_frames = self._pulled
            return
        try:
            frame = read_image(item)
        except InputError as exc:
            raise InputError(f"frame {self._pulled} of the frame stream cannot be used: {exc}") from exc
        self._buffer[self._pulled] = frame
        self._pulled += 1

    def _read(self, index: int) -> np.ndarray:
        if index < self._released or index not in self._buffer:
            raise StateError(f"frame {index} of the frame stream is no longer held (a stream keeps only the "
                             f"frames from {self._released} on); prompt the current frame instead.")
        return self._buffer[index]

    def release_before(self, index: int) -> None:
        for i in [i for i in self._buffer if i < index]:
            del self._buffer[i]
        self._released = max(self._released, index)


def open_frames(video: Any) -> FrameSource:
    """A frame source for a JPEG folder, a video file path, or an iterable of frames (arrays, PIL images, paths)."""
    if isinstance(video, FrameSource):
        return video
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            return FolderFrames(path)
        if path.is_file():
            if path.suffix.lower() in JPEG_SUFFIXES:
                raise InputError(f"{path} is a single image; pass the folder holding the video's JPEG frames.")
            return VideoFileFrames(path)
        raise InputError(f"{path}: no such folder of JPEG frames or video file.")
    if isinstance(video, (bytes, bytearray, np.ndarray)) or not isinstance(video, Iterable):
        raise InputError(f"cannot read a video from a {type(video).__name__}: pass a folder of JPEG frames, a video "
                         f"file path, or an iterable of frames (RGB arrays or PIL images).")
    return IteratorFrames(video)
