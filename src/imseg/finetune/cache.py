"""Image embeddings of a frozen encoder, cached on disk.

Key: the image file's content (sha256), the model (variant, input size and a hash of the image encoder's
weights, so a checkpoint or a random initialisation each get their own entries). Layout:
``ROOT/<model key>/<ab>/<image key>.pt`` holding ``{"embedding": (C, g, g) float32, "input_size": (h, w),
"original_size": (H, W)}`` (SAM 2 entries also hold ``"high_res_feats"``, the decoder's two projected
high-resolution levels; their model key starts with ``sam2-`` and also covers the weights that make them, so a SAM
entry is never read for SAM 2). Writes go to a temporary file renamed into place, so an interrupted run leaves
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
    """Variant + input size + the weights that make the cached features (every tensor's bytes, in key order):
    the image encoder's; for SAM 2 also the decoder's high-resolution projections and the no-memory embedding,
    under a ``sam2`` family tag and prefix."""
    from .families import family_of

    family = family_of(model)
    tag = family.cache_tag.replace("-", "|") + f"{getattr(model, 'variant', 'custom')}|{imgsz}"
    digest = hashlib.sha256(tag.encode())
    for name, tensor in family.cached_weights(model).items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return family.cache_tag + digest.hexdigest()[:24]


class EmbeddingCache:
    """Get/put embeddings of one model; ``hits``/``misses`` count lookups."""

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.dir = Path(root) / key
        self.fields = ("embedding", "high_res_feats") if key.startswith("sam2-") else ("embedding",)
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
            if "high_res_feats" in self.fields and not (isinstance(entry.get("high_res_feats"), list)
                                                        and len(entry["high_res_feats"]) == 2):
                raise ValueError("no high-resolution features")
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
            warnings.warn(f"{path}: unreadable cached embedding ({exc}); it will be recomputed.", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, image_key: str, embedding: torch.Tensor, input_size: tuple[int, int],
            original_size: tuple[int, int], high_res_feats: list[torch.Tensor] | None = None) -> None:
        from ..io import atomic_path

        def plain(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", torch.float32).contiguous()

        entry = {"embedding": plain(embedding), "input_size": tuple(int(v) for v in input_size),
                 "original_size": tuple(int(v) for v in original_size)}
        if high_res_feats is not None:
            entry["high_res_feats"] = [plain(t) for t in high_res_feats]
        with atomic_path(self.path(image_key)) as tmp:
            torch.save(entry, tmp)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.pt")) if self.dir.is_dir() else 0
