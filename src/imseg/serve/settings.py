"""Server limits and options (:class:`ServeSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

#: Hard schema limit on prompt points (the configurable limit ``max_points`` must be <= this).
SCHEMA_MAX_POINTS = 1024
#: Room for multipart framing and text fields on top of ``max_upload_bytes``.
MULTIPART_OVERHEAD = 64 * 1024
#: Smallest default limit of a segment request's JSON body (``max_json_bytes`` not given).
DEFAULT_MAX_JSON_BYTES = 2 * 1024 * 1024
#: Room in a segment request's JSON body beside one mask_input: SCHEMA_MAX_POINTS points written with
#: full float precision and indentation, their labels, a box and the options.
JSON_PROMPT_ROOM = 256 * 1024


def mask_input_chars(low_res_size: tuple[int, int]) -> int:
    """Length of the base64 text of one (h, w) float32 ``mask_input`` (or ``low_res_logits``)."""
    h, w = low_res_size
    return 4 * -(-(h * w * 4) // 3)


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
    #: largest JSON body of /v1/images/{id}/segment; None = 2 MiB, or more where the model's mask_input needs it
    #: (see :meth:`json_body_limit`; a 256x256 mask_input is ~350 kB as base64, max_points points a few kB)
    max_json_bytes: int | None = None
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
            "max_json_bytes": self.max_json_bytes is None or self.max_json_bytes >= 1,
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

    def json_body_limit(self, low_res_size: tuple[int, int]) -> int:
        """Largest segment request JSON body for a model whose ``mask_input`` is ``low_res_size`` (h, w):
        ``max_json_bytes`` when given, else 2 MiB or, for larger low-res maps, one mask_input plus room
        for the other prompts."""
        if self.max_json_bytes is not None:
            return self.max_json_bytes
        return max(DEFAULT_MAX_JSON_BYTES, mask_input_chars(low_res_size) + JSON_PROMPT_ROOM)
