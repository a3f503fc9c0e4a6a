"""SAM's prompt labels and its longest-side resize of images, points and boxes.

Torch-free (torch is imported only inside the ``*_torch`` methods): the ONNX Runtime engine uses
this module in a process where torch cannot be imported.
"""

from __future__ import annotations

import numpy as np

from ..io import to_uint8

#: SAM's point labels: 1 foreground, 0 background, -1 padding, 2 and 3 a box's top-left and bottom-right corners
SAM_LABELS = (-1, 0, 1, 2, 3)


def longest_side_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(H', W') with the longer side scaled to ``long_side``, rounded half up, as SAM's ResizeLongestSide does;
    a side is never below 1 px (an image more elongated than ``long_side``:1 keeps a 1-pixel short side)."""
    scale = long_side * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class ResizeLongestSide:
    """SAM's resize of images, points and boxes to a ``target_length`` longest side (the official
    ``ResizeLongestSide`` semantics). It imports torch only inside the ``*_torch`` methods, so the ONNX Runtime
    predictor uses it in a process without torch."""

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """The official signature of :func:`longest_side_shape`."""
        return longest_side_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear (Pillow, antialiased). Float images are taken as
        0..1 and scaled by 255 (truncated), as the official transform does; other dtypes go through
        :func:`to_uint8`."""
        from PIL import Image

        image = np.asarray(image)
        if np.issubdtype(image.dtype, np.floating):
            image = (image * 255).astype(np.uint8)
        elif image.dtype != np.uint8:
            image = to_uint8(image)
        h, w = longest_side_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def scale(self, original_size: tuple[int, ...]) -> tuple[float, float]:
        """(x, y) factors from an ``original_size`` (H, W) image to the resized frame."""
        old_h, old_w = int(original_size[0]), int(original_size[1])
        new_h, new_w = longest_side_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) XY pixels of the original image -> resized-frame float64 pixels."""
        sx, sy = self.scale(original_size)
        out = np.array(coords, dtype=float, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(B, 4) XYXY -> resized frame (B, 4)."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords, original_size: tuple[int, ...]):
        """Torch (..., 2) XY pixels -> float32 resized frame, on the input's device (torch imported on call)."""
        import torch

        sx, sy = self.scale(original_size)
        out = coords.to(torch.float).clone()
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes_torch(self, boxes, original_size: tuple[int, ...]):
        """Torch (B, 4) XYXY -> float32 resized frame (B, 4)."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image):
        """(B, C, H, W) float torch tensor -> resized (antialiased bilinear; close to, not equal to, apply_image)."""
        import torch.nn.functional as F

        size = longest_side_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)
