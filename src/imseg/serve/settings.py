"""Server limits and options (:class:`ServeSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

#: Hard schema limit on prompt points (the configurable limit ``max_points`` must be <= this).
SCHEMA_MAX_POINTS = 1024
#: Room for multipart framing and text fields on top of ``max_upload_bytes``.
MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class ServeSettings:
    """Server limits and options. Sizes in bytes/pixels, times in seconds."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    cache_items: int = 32
    cache_bytes: int = 512 * 1024 * 1024
    concurrency: int = 1
    max_queue: int = 256
    queue_timeout: float = 30.0
    request_timeout: float = 120.0
    max_points: int = 64
    #: largest JSON body of /v1/images/{id}/segment (a mask_input is ~350 kB, max_points points a few kB)
    max_json_bytes: int = 2 * 1024 * 1024
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    #: keyword arguments for the automatic mask generator (``points_per_side``, ``pred_iou_thresh``, ...)
    everything_options: dict[str, Any] = field(default_factory=dict)
    #: upload bodies held in memory at once, all requests together (default: 4 uploads of the largest size);
    #: an upload that does not fit waits up to ``queue_timeout``, then gets 503 with Retry-After
    upload_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "max_upload_bytes": self.max_upload_bytes >= 1,
            "max_pixels": self.max_pixels >= 1,
            "cache_items": self.cache_items >= 1,
            "cache_bytes": self.cache_bytes >= 1,
            "concurrency": self.concurrency >= 1,
            "max_queue": self.max_queue >= 0,
            "queue_timeout": self.queue_timeout > 0,
            "request_timeout": self.request_timeout > 0,
            "max_points": 1 <= self.max_points <= SCHEMA_MAX_POINTS,
            "max_json_bytes": self.max_json_bytes >= 1,
            "upload_memory_bytes": self.upload_memory_bytes is None or self.upload_memory_bytes >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid server settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}; sizes, counts and "
                f"timeouts must be positive (max_points at most {SCHEMA_MAX_POINTS})."
            )
        if self.upload_memory_bytes is not None and self.upload_memory_bytes < self.max_body_bytes:
            raise ConfigError(
                f"upload_memory_bytes={self.upload_memory_bytes:,} cannot hold one upload of max_upload_bytes="
                f"{self.max_upload_bytes:,} (plus {MULTIPART_OVERHEAD:,} bytes of form framing); use at least "
                f"{self.max_body_bytes:,} or lower max_upload_bytes."
            )

    @property
    def max_body_bytes(self) -> int:
        """Largest upload request body read (the image plus multipart framing)."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD

    @property
    def upload_memory(self) -> int:
        """Bytes of upload bodies the server holds at once (``upload_memory_bytes`` or its default)."""
        return self.upload_memory_bytes if self.upload_memory_bytes is not None else 4 * self.max_body_bytes
