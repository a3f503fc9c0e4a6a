"""The inference state of the SAM 2 video predictor and its memory bank.

The state is a dict with the official key names (``num_frames``, ``video_height``, ``obj_ids``,
``output_dict_per_obj``, ...), so code written for the official predictor can read it. Per object and frame an
output holds the bfloat16 spatial memory, the low-res mask logits, the object pointer and the object score.
Which memories a frame attends to follows SAM 2: every (selected) conditioning frame, the last
``num_maskmem - 1`` tracked frames and up to 15 earlier object pointers. A streaming state drops everything
older than that window (conditioning frames are kept), so memory stays flat on long videos.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from ..errors import InputError, StateError
from .frames import FrameSource
from .tracking import Memory

MAX_OBJ_PTRS = 16
COND, NON_COND = "cond_frame_outputs", "non_cond_frame_outputs"


def new_state(frames: FrameSource, device: torch.device, offload_state_to_cpu: bool, streaming: bool) -> dict:
    return {
        "frames": frames,
        "num_frames": frames.num_frames,
        "video_height": frames.height,
        "video_width": frames.width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "offload_state_to_cpu": offload_state_to_cpu,
        "streaming": streaming,
        "evicted_before": None,  # streaming: outputs of frames before this index are gone
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def check_state(state: Any) -> dict:
    if not isinstance(state, dict) or "output_dict_per_obj" not in state or "frames" not in state:
        raise StateError(f"inference_state must be the dict returned by predictor.init_state(video), got "
                         f"{type(state).__name__}.")
    return state


def obj_index(state: dict, obj_id: Any, create: bool = True) -> int:
    """The model-side index of ``obj_id``; new ids get the next slot (objects may join at any time)."""
    idx = state["obj_id_to_idx"].get(obj_id)
    if idx is not None:
        return idx
    if not create:
        raise InputError(f"unknown object id {obj_id!r}; the objects of this video are {state['obj_ids']}. "
                         f"Add the object with add_new_points_or_box or add_new_mask first.")
    try:
        hash(obj_id)
    except TypeError:
        raise InputError(f"obj_id must be hashable (an int or str), got {type(obj_id).__name__}.") from None
    idx = len(state["obj_id_to_idx"])
    state["obj_id_to_idx"][obj_id] = idx
    state["obj_idx_to_id"][idx] = obj_id
    state["obj_ids"] = list(state["obj_id_to_idx"])
    for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj"):
        state[key][idx] = {}
    state["output_dict_per_obj"][idx] = {COND: {}, NON_COND: {}}
    state["temp_output_dict_per_obj"][idx] = {COND: {}, NON_COND: {}}
    return idx


def latest_output(state: dict, obj_idx: int, frame_idx: int, key: str) -> dict | None:
    """The newest output of an object on a frame: its pending (temporary) ``key`` output first, then the stored
    conditioning, then the stored tracked one."""
    pending = state["temp_output_dict_per_obj"][obj_idx][key].get(frame_idx)
    if pending is not None:
        return pending
    stored = state["output_dict_per_obj"][obj_idx]
    return stored[COND].get(frame_idx, stored[NON_COND].get(frame_idx))


def closest_cond_frames(frame_idx: int, cond: dict, max_num: int) -> tuple[dict, dict]:
    """Up to ``max_num`` conditioning frames closest in time (the nearest before and after first), and the rest."""
    if max_num == -1 or len(cond) <= max_num:
        return cond, {}
    if max_num < 2:
        raise StateError(f"max_cond_frames_in_attn must be -1 or >= 2, got {max_num}.")
    selected: dict = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    after = min((t for t in cond if t >= frame_idx), default=None)
    for t in (before, after):
        if t is not None:
            selected[t] = cond[t]
    rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame_idx))
    selected.update((t, cond[t]) for t in rest[: max_num - len(selected)])
    return selected, {t: v for t, v in cond.items() if t not in selected}


def memory_frame_indices(frame_idx: int, num_maskmem: int, stride: int, reverse: bool) -> list[tuple[int, int]]:
    """(t_pos, frame index) of the non-conditioning memories of ``frame_idx``: the previous frame (in tracking
    order) at t_pos num_maskmem - 1, then every ``stride``-th frame further back."""
    out = []
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx + 1 if reverse else frame_idx - 1
        elif reverse:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        else:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        out.append((t_pos, prev))
    return out


def select_memories(outputs: dict, frame_idx: int, reverse: bool, num_frames: int | None, num_maskmem: int,
                    stride: int = 1, max_cond_frames: int = -1,
                    ) -> tuple[list[Memory], list[tuple[int, torch.Tensor]], int]:
    """The spatial memories, object pointers ((signed offset, pointer)) and the pointer normaliser that a
    non-initial frame of one object attends to, from that object's stored outputs."""
    if not outputs[COND]:
        raise StateError("an object without conditioning frames cannot be tracked; add points, a box or a mask.")
    selected, unselected = closest_cond_frames(frame_idx, outputs[COND], max_cond_frames)
    picked = [(0, out) for out in selected.values()]
    for t_pos, prev in memory_frame_indices(frame_idx, num_maskmem, stride, reverse):
        out = outputs[NON_COND].get(prev, unselected.get(prev))
        picked.append((t_pos, out))
    memories = [Memory(t_pos, out["maskmem_features"], out["maskmem_pos_enc"][-1])
                for t_pos, out in picked if out is not None]
    # pointer offsets are normalised by the reach min(video length, 16) - 1; a stream of unknown length
    # counts as a long video
    max_ptrs = MAX_OBJ_PTRS if num_frames is None else min(num_frames, MAX_OBJ_PTRS)
    sign = -1 if reverse else 1
    pointers = [((frame_idx - t) * sign, out["obj_ptr"]) for t, out in selected.items()
                if (t >= frame_idx if reverse else t <= frame_idx)]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = outputs[NON_COND].get(t, unselected.get(t))
        if out is not None:
            pointers.append((t_diff, out["obj_ptr"]))
    return memories, pointers, max_ptrs


def window_size(num_maskmem: int, stride: int) -> int:
    """How many frames back (in tracking order) a frame's memories and object pointers reach."""
    return max(MAX_OBJ_PTRS - 1, num_maskmem * stride)


def evict(state: dict, frame_idx: int, window: int) -> None:
    """Streaming: drop non-conditioning outputs and tracking marks of frames more than ``window`` frames before
    ``frame_idx`` (they can no longer be attended to), and let the frame source drop older frames."""
    state["frames"].release_before(frame_idx)
    limit = frame_idx - window
    if limit <= 0:
        return
    for obj_idx, outputs in state["output_dict_per_obj"].items():
        for t in [t for t in outputs[NON_COND] if t < limit]:
            del outputs[NON_COND][t]
        tracked = state["frames_tracked_per_obj"][obj_idx]
        for t in [t for t in tracked if t < limit and t not in outputs[COND]]:
            del tracked[t]
    state["evicted_before"] = max(limit, state["evicted_before"] or 0)


def check_window(state: dict, frame_idx: int, window: int, what: str) -> None:
    """Streaming states can only work on frames whose memory window is still held."""
    first = state["evicted_before"]
    if state["streaming"] and first is not None and frame_idx - window < first:
        raise StateError(f"{what} frame {frame_idx} needs memories of frames the streaming state no longer holds "
                         f"(it keeps frames from {first} on); use frames >= {first + window}, or "
                         f"init_state(video, streaming=False) to keep every frame's outputs.")


def state_tensor_bytes(state: dict) -> int:
    """Bytes of the distinct tensor storages (and frame buffers) the state holds: what grows with the video."""
    seen: set[int] = set()
    total = 0

    def walk(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk({k: v for k, v in state.items() if k != "frames"})
    frames = state["frames"]
    for buffer in (getattr(frames, "_buffer", {}), frames._recent):
        total += sum(a.nbytes for a in buffer.values())
    return total
