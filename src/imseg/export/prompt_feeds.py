"""The prompt feeds of the exported SAM and SAM 2.1 prompt decoders (numpy only).

Both decoders take prompts as the official prompt encoders do: points (B, N, 2) in the model frame with labels
(B, N): 1 foreground, 0 background, 2 and 3 a box's top-left and bottom-right corners, -1 the padding point
(the official predictors append it when no box is given, SAM 2's to every prompt), plus a low-res mask prompt,
its flag and the original image size. Which parts a prompt has, and in what order, is each engine's rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: labels of a box's top-left and bottom-right corners
BOX_CORNER_LABELS = (2.0, 3.0)
#: label of the padding point (ignored by the decoder but for its "not a box" token)
PADDING_LABEL = -1.0
#: the decoder outputs automatic mode reads
POINT_BATCH_OUTPUTS = ("iou_predictions", "low_res_masks")


def box_corners(boxes: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (batch, 4) XYXY in the model frame -> corners (batch, 2, 2) and their labels (batch, 2) = (2, 3)."""
    labels = np.tile(np.array([BOX_CORNER_LABELS], np.float32), (batch, 1))
    return boxes.reshape(batch, 2, 2), labels


def padding_point(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The padding point: coords (batch, 1, 2) zeros, labels (batch, 1) = -1."""
    return np.zeros((batch, 1, 2), np.float32), np.full((batch, 1), PADDING_LABEL, np.float32)


def join_prompts(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(coords (B, n_i, 2), labels (B, n_i)) parts, in decoder order -> coords (B, N, 2), labels (B, N) float32."""
    coords = np.concatenate([c for c, _ in parts], axis=1)
    labels = np.concatenate([lab for _, lab in parts], axis=1)
    return coords.astype(np.float32), labels.astype(np.float32)


def single_point_prompts(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One foreground point per prompt, as automatic mode asks: points (B, 2) in the model frame -> coords
    (B, 2, 2) (the point, then the padding point) and labels (B, 2) = (1, -1)."""
    points = np.asarray(points, np.float32)
    coords = np.zeros((len(points), 2, 2), np.float32)
    coords[:, 0] = points
    labels = np.tile(np.array([[1.0, PADDING_LABEL]], np.float32), (len(points), 1))
    return coords, labels


def decoder_prompt_feeds(coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None,
                         original_size: tuple[int, int], low_res: int) -> dict[str, np.ndarray]:
    """The prompt inputs of a decoder run: coords (B, N, 2), labels (B, N), a low-res mask prompt reshaped to
    (B, 1, low_res, low_res) (zeros and ``has_mask_input`` 0 without one), the original image size (H, W)."""
    return {
        "point_coords": np.ascontiguousarray(coords, np.float32),
        "point_labels": np.ascontiguousarray(labels, np.float32),
        "mask_input": np.zeros((1, 1, low_res, low_res), np.float32) if mask_input is None
        else np.ascontiguousarray(mask_input, np.float32).reshape(-1, 1, low_res, low_res),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(original_size, np.float32),
    }


def decode_single_points(run_decoder: Callable[..., list[np.ndarray]], state: Any, size: tuple[int, int],
                         points: np.ndarray, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``run_decoder(state, size, coords, labels, outputs=...)`` on single-point prompts (B, 2), ``max_batch`` at
    a time (the exported decoders repeat the image embedding per prompt) -> IoU (B, 4), low-res logits (B, 4, h, w)
    of every mask token."""
    coords, labels = single_point_prompts(points)
    runs = [run_decoder(state, size, coords[i:i + max_batch], labels[i:i + max_batch],
                       outputs=list(POINT_BATCH_OUTPUTS))
            for i in range(0, len(coords), max_batch)]
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
