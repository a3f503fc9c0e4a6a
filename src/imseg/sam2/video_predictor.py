"""SAM2VideoPredictor: promptable video segmentation with SAM 2.1 (the official signatures, our implementation).

Frames are read lazily (JPEG folder, video file, or an iterator of frames); memories are stored in bfloat16
as the official predictor stores them and attended to in float32, so it runs on a CPU without autocast and
gives the official answers. ``init_state(..., streaming=True)`` keeps only the memory window.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PromptError, StateError
from .frames import open_frames, preprocess_frame
from .model import Sam2Model
from .tracking import NO_OBJ_SCORE, condition_on_memory, decode_frame, encode_memory, fill_holes, mask_as_output, non_overlapping
from .video_prompts import mask_prompt, point_prompt
from .video_state import (
    COND,
    NON_COND,
    check_state,
    check_window,
    evict,
    latest_output,
    new_state,
    obj_index,
    select_memories,
    window_size,
)


class SAM2VideoPredictor:
    """Drop-in for ``sam2.sam2_video_predictor.SAM2VideoPredictor`` on a :class:`Sam2Model`.

    Args (as the official): fill_hole_area: fill background holes up to this many low-res pixels in the
        outputs; non_overlap_masks: keep only the highest-scoring object per pixel in the outputs;
        clear_non_cond_mem_around_input: drop tracked memories near a corrected frame;
        add_all_frames_to_correct_as_cond: corrected frames become conditioning frames;
        binarize_mask_from_pts_for_mem_enc: memories of prompted frames use the thresholded mask;
        memory_temporal_stride_for_eval, max_cond_frames_in_attn: memory bank selection.
    """

    def __init__(self, model: Sam2Model, fill_hole_area: float = 0, non_overlap_masks: bool = False,
                 clear_non_cond_mem_around_input: bool = False, add_all_frames_to_correct_as_cond: bool = False,
                 binarize_mask_from_pts_for_mem_enc: bool = False, memory_temporal_stride_for_eval: int = 1,
                 max_cond_frames_in_attn: int = -1) -> None:
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.max_cond_frames_in_attn = max_cond_frames_in_attn
        self.precision = "fp32"  # build_sam2_video_predictor(precision=...) sets the bfloat16 variant

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs: Any) -> SAM2VideoPredictor:
        """Not available offline; the error names the official checkpoint to download."""
        from .compat import build_sam2_video_predictor_hf

        return build_sam2_video_predictor_hf(model_id, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the official predictor is the model: expose its attributes
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def window(self) -> int:
        return window_size(self.model.num_maskmem, self.memory_temporal_stride_for_eval)

    def to(self, *args: Any, **kwargs: Any) -> SAM2VideoPredictor:
        self.model.to(*args, **kwargs)
        return self

    def eval(self) -> SAM2VideoPredictor:
        self.model.eval()
        return self

    @torch.inference_mode()
    def init_state(self, video_path: Any, offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                   async_loading_frames: bool = False, streaming: bool | None = None) -> dict:
        """A new inference state for a video: a folder of JPEG frames, a video file, or an iterable of RGB frames
        (a camera). Frames are always read lazily (the offload/async options need no work). ``streaming``
        (default: True for iterables) keeps only the outputs the memory bank can still attend to."""
        frames = open_frames(video_path)
        if streaming is None:
            streaming = frames.num_frames is None
        return new_state(frames, self.device, offload_state_to_cpu, bool(streaming))

    def _features(self, state: dict, frame_idx: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Top-level features (1, C, h, w), their position encoding, and the two high-resolution levels of a frame
        (the latest frame's are cached for repeated prompts)."""
        cached = state["cached_features"].get(frame_idx)
        if cached is None:
            image = preprocess_frame(state["frames"].rgb(frame_idx), self.image_size).to(self.device)[None]
            out = self.model.forward_image(image)
            fpn, pos = out["backbone_fpn"][-3:], out["vision_pos_enc"][-3:]
            cached = (fpn[-1], pos[-1], list(fpn[:-1]))
            state["cached_features"] = {frame_idx: cached}
        return cached

    def _memory_pos(self, state: dict, pos: list[torch.Tensor]) -> list[torch.Tensor]:
        """The memories' position encoding is the same for every frame and object: keep one copy."""
        constants = state["constants"]
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [p[0:1].clone() for p in pos]
        return constants["maskmem_pos_enc"]

    def _run_frame(self, state: dict, obj_idx: int, frame_idx: int, is_init_cond_frame: bool,
                   point_inputs: dict | None, mask_inputs: torch.Tensor | None, reverse: bool, run_mem_encoder: bool,
                   prev_logits: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
        """Track one object on one frame -> (compact output to store, low-res mask logits to show)."""
        feat, pos, high_res = self._features(state, frame_idx)
        model = self.model
        if mask_inputs is not None:
            out = mask_as_output(model, feat, high_res, mask_inputs)
        else:
            memories, pointers, max_ptrs = None, [], 16
            if not is_init_cond_frame:
                memories, pointers, max_ptrs = select_memories(
                    state["output_dict_per_obj"][obj_idx], frame_idx, reverse, state["num_frames"],
                    model.num_maskmem, self.memory_temporal_stride_for_eval, self.max_cond_frames_in_attn)
            pix_feat = condition_on_memory(model, feat, pos, memories, pointers, max_ptrs)
            num_points = 0 if point_inputs is None else point_inputs["point_labels"].shape[1]
            coords = labels = None
            if point_inputs is not None:
                coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
            out = decode_frame(model, pix_feat, coords, labels, prev_logits, high_res,
                               multimask_output=num_points <= 1)
        storage = state["storage_device"]
        maskmem = mem_pos = None
        if run_mem_encoder:
            binarize = self.binarize_mask_from_pts_for_mem_enc and point_inputs is not None
            features, mem_pos_raw = encode_memory(model, feat, out.high_res_masks, out.object_score_logits, binarize)
            maskmem = features.to(torch.bfloat16).to(storage)
            mem_pos = self._memory_pos(state, mem_pos_raw)
        pred = out.low_res_masks
        if self.fill_hole_area > 0:
            pred = fill_holes(pred, self.fill_hole_area)
        compact = {"maskmem_features": maskmem, "maskmem_pos_enc": mem_pos, "pred_masks": pred.to(storage),
                   "obj_ptr": out.obj_ptr, "object_score_logits": out.object_score_logits}
        return compact, pred

    def _video_res(self, state: dict, masks: torch.Tensor) -> torch.Tensor:
        hw = (state["video_height"], state["video_width"])
        masks = masks.to(state["device"])
        if tuple(masks.shape[-2:]) != hw:
            masks = F.interpolate(masks, size=hw, mode="bilinear", align_corners=False)
        return non_overlapping(masks) if self.non_overlap_masks else masks

    def _consolidated(self, state: dict, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """Every object's newest mask logits on a frame at the video resolution; objects without one get
        ``NO_OBJ_SCORE``."""
        hw = (state["video_height"], state["video_width"])
        n = len(state["obj_ids"])
        masks = torch.full((n, 1, *hw), NO_OBJ_SCORE, dtype=torch.float32, device=state["storage_device"])
        key = COND if is_cond else NON_COND
        for obj_idx in range(n):
            out = latest_output(state, obj_idx, frame_idx, key)
            if out is not None:
                masks[obj_idx:obj_idx + 1] = F.interpolate(out["pred_masks"], size=hw, mode="bilinear",
                                                           align_corners=False)
        return self._video_res(state, masks)

    def _check_frame(self, state: dict, frame_idx: Any, what: str) -> int:
        if not isinstance(frame_idx, (int, np.integer)) or isinstance(frame_idx, bool):
            raise PromptError(f"{what}: frame_idx must be an integer frame index, got {frame_idx!r}.")
        frames = state["frames"]
        if not frames.has_frame(int(frame_idx)):
            raise PromptError(f"{what}: frame {frame_idx} does not exist in {frames.description}, which has "
                              f"{frames.length_text()}.")
        check_window(state, int(frame_idx), self.window, what)
        if what.startswith("add_new"):
            self._features(state, int(frame_idx))  # an unreadable frame fails before the object is registered
        return int(frame_idx)

    def _prompt_frame(self, state: dict, frame_idx: int, obj_idx: int, point_inputs: dict | None,
                      mask_inputs: torch.Tensor | None) -> tuple[int, list, torch.Tensor]:
        """Run a new prompt of one object on one frame (without encoding its memory yet) and show all objects."""
        tracked = state["frames_tracked_per_obj"][obj_idx]
        is_init = frame_idx not in tracked
        reverse = False if is_init else tracked[frame_idx]["reverse"]
        is_cond = is_init or self.add_all_frames_to_correct_as_cond
        key = COND if is_cond else NON_COND
        prev_logits = None
        if point_inputs is not None:
            prev = latest_output(state, obj_idx, frame_idx, key)
            if prev is not None and prev["pred_masks"] is not None:
                prev_logits = torch.clamp(prev["pred_masks"].to(state["device"]), -32.0, 32.0)
        out, _ = self._run_frame(state, obj_idx, frame_idx, is_init, point_inputs, mask_inputs, reverse,
                                 run_mem_encoder=False, prev_logits=prev_logits)
        state["temp_output_dict_per_obj"][obj_idx][key][frame_idx] = out
        return frame_idx, state["obj_ids"], self._consolidated(state, frame_idx, is_cond)

    @torch.inference_mode()
    def add_new_points_or_box(self, inference_state: dict, frame_idx: int, obj_id: Any, points: Any = None,
                              labels: Any = None, clear_old_points: bool = True, normalize_coords: bool = True,
                              box: Any = None) -> tuple[int, list, torch.Tensor]:
        """Click points (XY, labels 1 = object / 0 = background) and/or a box (XYXY) for one object on one
        frame. Returns (frame_idx, obj_ids, mask logits (num_objects, 1, H, W) at the video resolution)."""
        state = check_state(inference_state)
        frame_idx = self._check_frame(state, frame_idx, "add_new_points_or_box")
        coords, labs = point_prompt(points, labels, box, clear_old_points, normalize_coords,
                                    (state["video_height"], state["video_width"]), self.image_size, state["device"])
        obj_idx = obj_index(state, obj_id)
        old = None if clear_old_points else state["point_inputs_per_obj"][obj_idx].get(frame_idx)
        if old is not None:
            coords = torch.cat([old["point_coords"], coords], dim=1)
            labs = torch.cat([old["point_labels"], labs], dim=1)
        point_inputs = {"point_coords": coords, "point_labels": labs}
        state["point_inputs_per_obj"][obj_idx][frame_idx] = point_inputs
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._prompt_frame(state, frame_idx, obj_idx, point_inputs, None)

    def add_new_points(self, *args: Any, **kwargs: Any) -> tuple[int, list, torch.Tensor]:
        """Older name of :meth:`add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

    @torch.inference_mode()
    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id: Any, mask: Any,
                     ) -> tuple[int, list, torch.Tensor]:
        """A binary (H, W) mask of one object on one frame (any size; resized to the model input)."""
        state = check_state(inference_state)
        frame_idx = self._check_frame(state, frame_idx, "add_new_mask")
        mask_inputs = mask_prompt(mask, self.image_size, state["device"])
        obj_idx = obj_index(state, obj_id)
        state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask_inputs
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._prompt_frame(state, frame_idx, obj_idx, None, mask_inputs)

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: dict) -> None:
        """Encode the memories of newly prompted frames and move them into the memory bank."""
        state = check_state(inference_state)
        if not state["obj_ids"]:
            raise StateError("no object has prompts yet: call add_new_points_or_box or add_new_mask first.")
        for obj_idx, obj_id in enumerate(state["obj_ids"]):
            outputs = state["output_dict_per_obj"][obj_idx]
            temp = state["temp_output_dict_per_obj"][obj_idx]
            for key in (NON_COND, COND):
                for frame_idx, out in temp[key].items():
                    if out["maskmem_features"] is None:
                        self._encode_prompted(state, frame_idx, out)
                    outputs[key][frame_idx] = out
                    if self.clear_non_cond_mem_around_input:
                        self._clear_non_cond_mem_around_input(state, frame_idx)
                temp[key].clear()
            if not outputs[COND]:
                raise StateError(f"object id {obj_id!r} has no prompts (its prompts were cleared); add points, a "
                                 f"box or a mask for it, or remove_object(state, {obj_id!r}).")
            for frame_idx in outputs[COND]:
                outputs[NON_COND].pop(frame_idx, None)

    def _encode_prompted(self, state: dict, frame_idx: int, out: dict) -> None:
        feat, _, _ = self._features(state, frame_idx)
        high_res = F.interpolate(out["pred_masks"].to(state["device"]), size=(self.image_size, self.image_size),
                                 mode="bilinear", align_corners=False)
        features, pos = encode_memory(self.model, feat, high_res, out["object_score_logits"],
                                      binarize=self.binarize_mask_from_pts_for_mem_enc)
        out["maskmem_features"] = features.to(torch.bfloat16).to(state["storage_device"])
        out["maskmem_pos_enc"] = self._memory_pos(state, pos)

    def _clear_non_cond_mem_around_input(self, state: dict, frame_idx: int) -> None:
        reach = self.memory_temporal_stride_for_eval * self.model.num_maskmem
        for outputs in state["output_dict_per_obj"].values():
            for t in range(frame_idx - reach, frame_idx + reach + 1):
                outputs[NON_COND].pop(t, None)

    def _start_frame(self, state: dict, start_frame_idx: int | None) -> int:
        if start_frame_idx is None:
            start = min(t for outputs in state["output_dict_per_obj"].values() for t in outputs[COND])
            if state["streaming"] and state["evicted_before"] is not None:
                start = max(start, state["evicted_before"] + self.window)
            return start
        return self._check_frame(state, start_frame_idx, "propagate_in_video: start")

    @torch.inference_mode()
    def propagate_in_video(self, inference_state: dict, start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, reverse: bool = False,
                           ) -> Iterator[tuple[int, list, torch.Tensor]]:
        """Track every object over the video from ``start_frame_idx`` (default: the first prompted frame; for a
        streaming state the first frame still in its memory window), forward or in ``reverse``; yields (frame_idx,
        obj_ids, mask logits (num_objects, 1, H, W)). Objects prompted on the frame just yielded are tracked from
        the next frame on (the official predictor needs a new propagate call for them)."""
        state = check_state(inference_state)
        self.propagate_in_video_preflight(state)
        if reverse and state["streaming"]:
            raise StateError("a streaming state tracks forward only; use init_state(video, streaming=False) on a "
                             "folder or video file to propagate in reverse.")
        start = self._start_frame(state, start_frame_idx)
        frames = state["frames"]
        if reverse:
            end = max(start - (state["num_frames"] if max_frame_num_to_track is None else max_frame_num_to_track), 0)
            order: Any = range(start, end - 1, -1) if start > 0 else []
        else:
            last = None if max_frame_num_to_track is None else start + max_frame_num_to_track
            order = _forward(start, last, frames.has_frame)
        for frame_idx in order:
            if any(t[COND] or t[NON_COND] for t in state["temp_output_dict_per_obj"].values()):
                self.propagate_in_video_preflight(state)  # prompts added while iterating (a live stream)
            obj_ids = state["obj_ids"]
            masks = [self._track(state, obj_idx, frame_idx, reverse) for obj_idx in range(len(obj_ids))]
            if state["streaming"]:
                evict(state, frame_idx, self.window)
            yield frame_idx, obj_ids, self._video_res(state, torch.cat(masks, dim=0))
        state["num_frames"] = frames.num_frames  # a stream's length is known once it ended

    def _track(self, state: dict, obj_idx: int, frame_idx: int, reverse: bool) -> torch.Tensor:
        outputs = state["output_dict_per_obj"][obj_idx]
        if frame_idx in outputs[COND]:
            pred = outputs[COND][frame_idx]["pred_masks"].to(state["device"])
            if self.clear_non_cond_mem_around_input:
                self._clear_non_cond_mem_around_input(state, frame_idx)
        else:
            out, pred = self._run_frame(state, obj_idx, frame_idx, False, None, None, reverse, run_mem_encoder=True)
            outputs[NON_COND][frame_idx] = out
        state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
        return pred

    @torch.inference_mode()
    def clear_all_prompts_in_frame(self, inference_state: dict, frame_idx: int, obj_id: Any,
                                   need_output: bool = True) -> tuple[int, list, torch.Tensor] | None:
        """Remove one object's prompts on one frame (its output there becomes a tracked, non-conditioning one)."""
        state = check_state(inference_state)
        obj_idx = obj_index(state, obj_id, create=False)
        frame_idx = self._check_frame(state, frame_idx, "clear_all_prompts_in_frame")
        self._clear_prompts(state, frame_idx, obj_idx)
        if not need_output:
            return None
        is_cond = any(frame_idx in t[COND] for t in state["temp_output_dict_per_obj"].values())
        return frame_idx, state["obj_ids"], self._consolidated(state, frame_idx, is_cond)

    def _clear_prompts(self, state: dict, frame_idx: int, obj_idx: int) -> None:
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        temp = state["temp_output_dict_per_obj"][obj_idx]
        temp[COND].pop(frame_idx, None)
        temp[NON_COND].pop(frame_idx, None)
        outputs = state["output_dict_per_obj"][obj_idx]
        out = outputs[COND].pop(frame_idx, None)
        if out is not None:
            outputs[NON_COND][frame_idx] = out
            state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)

    @torch.inference_mode()
    def reset_state(self, inference_state: dict) -> None:
        """Forget every object, prompt and tracking result (the video stays open)."""
        state = check_state(inference_state)
        for key in ("obj_id_to_idx", "obj_idx_to_id", "point_inputs_per_obj", "mask_inputs_per_obj",
                    "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            state[key].clear()
        state["obj_ids"] = []

    @torch.inference_mode()
    def remove_object(self, inference_state: dict, obj_id: Any, strict: bool = False, need_output: bool = True,
                      ) -> tuple[list, list[tuple[int, torch.Tensor]]]:
        """Remove an object; returns the remaining obj_ids and [(frame_idx, masks)] of the frames it was prompted
        on. An unknown id is ignored unless ``strict``."""
        state = check_state(inference_state)
        if obj_id not in state["obj_id_to_idx"]:
            if strict:
                obj_index(state, obj_id, create=False)
            return state["obj_ids"], []
        if len(state["obj_ids"]) == 1:
            self.reset_state(state)
            return state["obj_ids"], []
        old_idx = state["obj_id_to_idx"][obj_id]
        prompted = set(state["point_inputs_per_obj"][old_idx]) | set(state["mask_inputs_per_obj"][old_idx])
        for frame_idx in prompted:
            self._clear_prompts(state, frame_idx, old_idx)
        remaining = [i for i in range(len(state["obj_ids"])) if i != old_idx]
        new_ids = [state["obj_ids"][i] for i in remaining]
        state["obj_id_to_idx"].clear()
        state["obj_id_to_idx"].update((oid, i) for i, oid in enumerate(new_ids))
        state["obj_idx_to_id"].clear()
        state["obj_idx_to_id"].update(enumerate(new_ids))
        state["obj_ids"] = new_ids
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                    "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            old = state[key]
            state[key] = {new: old[i] for new, i in enumerate(remaining)}
        updated = []
        if need_output:
            for frame_idx in sorted(prompted):
                is_cond = any(frame_idx in t[COND] for t in state["temp_output_dict_per_obj"].values())
                updated.append((frame_idx, self._consolidated(state, frame_idx, is_cond)))
        return state["obj_ids"], updated


def _forward(start: int, last: int | None, has_frame: Any) -> Iterator[int]:
    """start, start + 1, ... up to ``last`` or the end of the video (found lazily for streams)."""
    frame_idx = start
    while (last is None or frame_idx <= last) and has_frame(frame_idx):
        yield frame_idx
        frame_idx += 1

