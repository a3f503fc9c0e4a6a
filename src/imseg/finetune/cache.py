"""Image embeddings of a frozen encoder, cached on disk.

Key: the image file's content (sha256), the model (variant, input size and a hash of the image encoder's
weights, so a checkpoint or a random initialisation each get their own entries). Layout:
``ROOT/<model key>/<ab>/<image key>.pt`` holding ``{"embedding": (C, g, g) float32, "input_size": (h, w),
"original_size": (H, W)}``. Writes go to a temporary file renamed into place, so an interrupted run leaves
whole entries or none; an unreadable entry is recomputed and rewritten. Entries are never deleted here.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["EmbeddingCache", "default_cache_root", "file_key", "model_key"]


def default_cache_root() -> Path:
    """``$IMSEG_HOME/embeddings`` (``~/.cache/imseg/embeddings`` without IMSEG_HOME)."""
    from ..registry import cache_dir

    return cache_dir() / "embeddings"


def file_key(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the image content, whatever its name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_key(model: Any, imgsz: int) -> str:
    """Variant + input size + the image encoder's weights (every tensor's bytes, in key order)."""
    digest = hashlib.sha256(f"{getattr(model, 'variant', 'custom')}|{imgsz}".encode())
    for name, tensor in model.image_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class EmbeddingCache:
    """Get/put embeddings of one model; ``hits``/``misses`` count lookups."""

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.dir = Path(root) / key
        self.hits = 0
        self.misses = 0

    def path(self, image_key: str) -> Path:
        return self.dir / image_key[:2] / f"{image_key}.pt"

    def get(self, image_key: str) -> dict[str, Any] | None:
        path = self.path(image_key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, dict) or not isinstance(entry.get("embedding"), torch.Tensor):
                raise ValueError("not an embedding entry")
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
            warnings.warn(f"{path}: unreadable cached embedding ({exc}); it will be recomputed.", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, image_key: str, embedding: torch.Tensor, input_size: tuple[int, int],
            original_size: tuple[int, int]) -> None:
        from ..io import atomic_path

        entry = {"embedding": embedding.detach().to("cpu", torch.float32).contiguous(),
                 "input_size": tuple(int(v) for v in input_size),
                 "original_size": tuple(int(v) for v in original_size)}
        with atomic_path(self.path(image_key)) as tmp:
            torch.save(entry, tmp)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.pt")) if self.dir.is_dir() else 0
