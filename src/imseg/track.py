"""`imseg track`: SAM 2.1 video object tracking from prompts to per-frame mask files and an overlay video.

One run: prompts (points and/or a box per object, on any frame) go into
:class:`~imseg.sam2.video_predictor.SAM2VideoPredictor`; every tracked frame's masks are written at once,
atomically, then the frame's marker ``frames/NNNNN.json`` (RLEs of all objects) last, so a frame counts as done
only when all its files are complete. A re-run with the same video, model and prompts keeps the frames already
written and writes the rest: the tracker replays the earlier frames to rebuild its memory (a frame's answer
depends on all frames before it), without touching their files. Formats: ``png`` (``masks/NNNNN_objK.png``,
0/255), ``coco`` (``annotations.json``, one image per frame, one category per object) or ``rle``
(``masks.rle.json``); the JSON files are assembled from the markers at the end. ``overlay.mp4`` is drawn from
the markers too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, ConfigError, InputError, PromptError

FORMATS = ("png", "coco", "rle")
MANIFEST = "track.json"


@dataclass(frozen=True)
class TrackPrompt:
    """One object's prompt on one frame: points (N, 2) XY with labels (N,), and/or a box XYXY."""

    frame: int
    obj_id: int
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None


def _numbers(text: str, what: str, count: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise PromptError(f"{what} {text!r}: expected comma-separated numbers.") from None
    if count is not None and len(values) != count:
        raise PromptError(f"{what} {text!r}: expected {count} numbers, got {len(values)}.")
    return values


def _per_prompt(values: list[str], n: int, name: str, shared: bool = False) -> list[str | None]:
    """One value per prompt ('-' for none); a ``shared`` flag given once applies to every prompt."""
    if not values:
        return [None] * n
    if shared and len(values) == 1:
        values = values * n
    if len(values) != n:
        once = "once (for all prompts) or " if shared else ""
        raise PromptError(f"{name} is given {len(values)} times for {n} prompts; give it {once}once per prompt, in "
                          f"the order of the prompts ('-' for none).")
    return [None if v.strip() in ("-", "") else v for v in values]


def parse_prompts(frames: list[int], points: list[str], labels: list[str], boxes: list[str],
                  obj_ids: list[str]) -> list[TrackPrompt]:
    """CLI flags -> prompts. Prompt i takes the i-th ``--points`` ("x,y" or "x,y;x,y"), ``--box``
    ("x0,y0,x1,y1"), ``--obj-id`` (default 1, 2, ...), ``--labels`` ("1" or "1,0") and ``--frame``; the last two
    may be given once for all prompts."""
    n = max(len(points), len(boxes), len(obj_ids), 1)
    ids = _per_prompt(obj_ids, n, "--obj-id") if obj_ids else [str(i + 1) for i in range(n)]
    frame_list = _per_prompt([str(f) for f in frames], n, "--frame", shared=True) if frames else ["0"] * n
    out = []
    for i, (p, lab, b, k, f) in enumerate(zip(_per_prompt(points, n, "--points"),
                                               _per_prompt(labels, n, "--labels", shared=True),
                                               _per_prompt(boxes, n, "--box"), ids, frame_list, strict=True)):
        try:
            obj_id, frame = int(k), int(f)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PromptError(f"prompt {i + 1}: --obj-id {k!r} and --frame {f!r} must be integers.") from None
        if obj_id < 0 or frame < 0:
            raise PromptError(f"prompt {i + 1}: --obj-id and --frame must be >= 0 (got {obj_id}, {frame}).")
        pts = None if p is None else tuple(tuple(_numbers(xy, "--points", 2)) for xy in p.split(";"))
        if lab is not None and pts is None and not (len(labels) == 1 and n > 1):  # a shared --labels is for points
            raise PromptError(f"prompt {i + 1}: --labels {lab!r} without --points; labels belong to points.")
        labs = tuple(int(v) for v in _numbers(lab, "--labels")) if lab is not None and pts is not None else None
        if pts is not None:
            labs = labs or (1,) * len(pts)
            if len(labs) != len(pts) or not set(labs) <= {0, 1}:
                raise PromptError(f"prompt {i + 1}: {len(pts)} points need {len(pts)} labels of 1 (object) or 0 "
                                  f"(background); got {lab!r}.")
        box = None if b is None else tuple(_numbers(b, "--box", 4))
        if pts is None and box is None:
            raise PromptError(f"prompt {i + 1} (object {obj_id}, frame {frame}) has neither --points nor --box.")
        if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
            raise PromptError(f"prompt {i + 1}: --box {b!r} must be x0,y0,x1,y1 with x1 > x0 and y1 > y0.")
        out.append(TrackPrompt(frame, obj_id, pts, labs, box))  # type: ignore[arg-type]
    return out


def build_video_predictor(model: str, checkpoint: str | os.PathLike | None, device: str = "cpu",
                          precision: str | None = None):
    """The SAM 2.1 video predictor of registry model ``model`` with its official checkpoint, its image encoder and
    memory attention in ``precision`` (fp32 by default; see :func:`imseg.sam2.build_sam2_video_predictor`)."""
    from .device import resolve_device
    from .registry import find_weights, get_spec

    spec = get_spec(model)
    if spec.family != "sam2":
        raise ConfigError(f"--model {model!r} is not a SAM 2.1 model; tracking needs sam2.1-hiera-t/s/b+/l.")
    if checkpoint is None:
        checkpoint = find_weights(spec.name)
        if checkpoint is None:
            raise CheckpointError(f"no checkpoint for {spec.name}: pass --checkpoint PATH or run "
                                  f"`imseg weights download {spec.name}`.")
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found; pass the path of the official .pt file.")
    from .sam2.compat import build_sam2_video_predictor
    from .sam2.specs import SPECS

    predictor = build_sam2_video_predictor(SPECS[spec.name].config_file, checkpoint, device=resolve_device(device),
                                           precision=precision)
    return spec.name, Path(checkpoint).resolve(), predictor


class TrackOutput:
    """The out dir of one tracking run: the manifest, per-frame markers and mask files, the final JSON."""

    def __init__(self, root: Path, fmt: str, identity: dict[str, Any]) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
        self.root, self.format, self.identity = Path(root), fmt, identity
        self.marker_dir = self.root / "frames"

    def open(self) -> int:
        """Check or write the manifest; returns the number of frames already done."""
        from .io import write_bytes

        path = self.root / MANIFEST
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path} is unreadable ({exc}); remove it (and the frames) or use a new --out.") from None
            old.setdefault("precision", "fp32")  # manifests written before the option tracked in fp32
            differs = [k for k in self.identity if old.get(k) != self.identity[k]]
            if differs:
                raise ConfigError(f"{self.root} holds masks of another tracking run (it differs in: "
                                  f"{', '.join(differs)}); pass a new --out, or remove that directory to start over.")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            write_bytes(path, (json.dumps(self.identity, indent=2) + "\n").encode())
        return len(self.done_frames())

    def marker(self, frame: int) -> Path:
        return self.marker_dir / f"{frame:05d}.json"

    def done_frames(self) -> list[int]:
        if not self.marker_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.marker_dir.glob("*.json") if p.stem.isdigit())

    def write(self, frame: int, obj_ids: list[int], masks: np.ndarray) -> None:
        """Write frame ``frame``'s masks (K, H, W) bool of objects ``obj_ids``, then its marker."""
        from .io import write_bytes, write_image
        from .masks import Masks

        found = Masks(masks, labels=np.asarray(obj_ids, np.int64))
        files = []
        if self.format == "png":
            for obj_id, mask in zip(obj_ids, masks, strict=True):
                path = write_image(self.root / "masks" / f"{frame:05d}_obj{obj_id}.png",
                                   mask.astype(np.uint8) * 255)
                files.append(path.relative_to(self.root).as_posix())
        objects = [{"obj_id": int(k), "rle": rle, "area": int(a), "bbox": [float(v) for v in box]}
                   for k, rle, a, box in zip(obj_ids, found.to_rle(), found.areas, found.boxes, strict=True)]
        record = {"frame": frame, "height": int(masks.shape[1]), "width": int(masks.shape[2]), "objects": objects,
                  "files": files}
        write_bytes(self.marker(frame), json.dumps(record).encode())

    def records(self) -> list[dict]:
        return [json.loads(self.marker(f).read_text()) for f in self.done_frames()]

    def finish(self, names: dict[int, str] | None = None) -> Path | None:
        """Assemble the COCO / RLE file from the markers (png: nothing more to write)."""
        from .io import write_bytes

        if self.format == "png":
            return None
        records = self.records()
        obj_ids = sorted({o["obj_id"] for r in records for o in r["objects"]})
        if self.format == "rle":
            doc: dict[str, Any] = {"frames": [{"frame": r["frame"], "size": [r["height"], r["width"]],
                                               "objects": [{"obj_id": o["obj_id"], "rle": o["rle"]} for o in r["objects"]]}
                                              for r in records], "obj_ids": obj_ids}
            path = self.root / "masks.rle.json"
        else:
            images = [{"id": r["frame"] + 1, "file_name": f"{r['frame']:05d}", "frame": r["frame"],
                       "height": r["height"], "width": r["width"]} for r in records]
            annotations = [{"id": n + 1, "image_id": r["frame"] + 1, "category_id": o["obj_id"],
                            "segmentation": o["rle"], "area": o["area"], "bbox": o["bbox"], "iscrowd": 0}
                           for n, (r, o) in enumerate((r, o) for r in records for o in r["objects"])]
            categories = [{"id": k, "name": f"object {k}"} for k in obj_ids]
            doc = {"images": images, "annotations": annotations, "categories": categories}
            path = self.root / "annotations.json"
        return write_bytes(path, json.dumps(doc).encode())


def write_overlay_video(output: TrackOutput, frames: Any, path: Path, fps: float) -> Path:
    """``overlay.mp4``: every done frame with its masks drawn over it (one colour per object), in frame order."""
    from .errors import require
    from .io import atomic_path
    from .masks import Masks

    av = require("av", "video", "Writing the overlay video")
    records = output.records()
    if not records:
        raise InputError("no tracked frames to draw: the overlay video needs at least one written frame.")
    h, w = records[0]["height"] // 2 * 2, records[0]["width"] // 2 * 2  # yuv420p needs even sizes
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=max(1, round(fps)))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for record in records:
                rgb = frames.rgb(record["frame"])
                masks = Masks(rles=[o["rle"] for o in record["objects"]], image_size=rgb.shape[:2],
                              labels=np.asarray([o["obj_id"] for o in record["objects"]], np.int64))
                picture = masks.overlay(rgb, colour_by="label")[:h, :w]
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def identity_of(video: Any, model: str, checkpoint: Path, prompts: list[TrackPrompt], fmt: str,
                reverse: bool, precision: str = "fp32") -> dict[str, Any]:
    return {"video": str(Path(video).resolve()), "model": model, "checkpoint": str(checkpoint), "format": fmt,
            "reverse": bool(reverse), "prompts": [asdict(p) for p in prompts], "precision": precision}


def _normalised(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(identity))


def add_prompts(predictor: Any, state: dict, prompts: list[TrackPrompt]) -> None:
    """Give every prompt to the predictor; a frame outside the video is refused before anything is tracked."""
    frames = state["frames"]
    for i, p in enumerate(prompts):
        if not frames.has_frame(p.frame):
            raise PromptError(f"prompt {i + 1} (object {p.obj_id}) is on frame {p.frame}, which does not exist in "
                              f"{frames.description}: it has {frames.length_text()}.")
        xy = [*(p.points or ()), *((p.box[:2], p.box[2:]) if p.box else ())]
        outside = [c for c in xy if not (0 <= c[0] <= state["video_width"] and 0 <= c[1] <= state["video_height"])]
        if outside:
            raise PromptError(f"prompt {i + 1} (object {p.obj_id}, frame {p.frame}): {outside[0]} lies outside the "
                              f"{state['video_width']}x{state['video_height']} frame; coordinates are XY pixels.")
    seen: set[tuple[int, int]] = set()
    for p in prompts:
        key = (p.frame, p.obj_id)
        predictor.add_new_points_or_box(state, frame_idx=p.frame, obj_id=p.obj_id,
                                        points=None if p.points is None else np.asarray(p.points, np.float32),
                                        labels=None if p.labels is None else np.asarray(p.labels, np.int32),
                                        box=None if p.box is None else np.asarray(p.box, np.float32),
                                        clear_old_points=key not in seen)  # more prompts of one object add up
        seen.add(key)


def run_track(video: Any, model: str, checkpoint: Any, prompts: list[TrackPrompt], out: Path, fmt: str = "png",
              overlay: bool = False, reverse: bool = False, max_frames: int | None = None, device: str = "cpu",
              fps: float | None = None, progress: Any = None, precision: str | None = None) -> dict[str, Any]:
    """Track ``prompts`` over ``video`` and write the frames not written yet under ``out``; returns a summary."""
    if not prompts:
        raise PromptError("no prompts: give --points and/or --box for at least one object.")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {max_frames}.")
    if fps is not None and fps <= 0:
        raise ConfigError(f"--fps must be > 0, got {fps}.")
    name, ckpt, predictor = build_video_predictor(model, checkpoint, device, precision)
    identity = identity_of(video, name, ckpt, prompts, fmt, reverse, predictor.precision)
    output = TrackOutput(out, fmt, _normalised(identity))
    state = predictor.init_state(video, streaming=False if reverse else None)
    add_prompts(predictor, state, prompts)
    kept = output.open()
    done = set(output.done_frames())
    written = 0
    passes = [False, True] if reverse else [False]
    for backwards in passes:
        # the predictor tracks max_frame_num_to_track frames beyond the start frame; each pass starts at the
        # first prompted frame
        track_frames = None if max_frames is None else max_frames - 1
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(
                state, max_frame_num_to_track=track_frames, reverse=backwards):
            if frame_idx in done:
                continue  # replayed for the tracker's memory; its files stay as they are
            output.write(frame_idx, [int(k) for k in obj_ids], (logits[:, 0] > 0).cpu().numpy())
            done.add(frame_idx)
            written += 1
            if progress is not None:
                progress(frame_idx)
    summary: dict[str, Any] = {"kept": kept, "written": written, "frames": len(done), "out": str(out),
                               "precision": predictor.precision}
    result = output.finish()
    if result is not None:
        summary["annotations"] = str(result)
    if overlay:
        rate = fps or float(getattr(state["frames"], "fps", 0) or 24.0)
        summary["overlay"] = str(write_overlay_video(output, state["frames"], Path(out) / "overlay.mp4", rate))
    return summary
