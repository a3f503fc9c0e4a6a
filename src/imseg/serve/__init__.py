"""Serving: REST API + click-to-segment web page (``imseg serve``). Needs ``pip install 'imseg[serve]'``.

``create_app(segmenter, settings)`` builds the FastAPI app; FastAPI is imported only on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "SamBackend", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("ServeSettings", "create_app"):
        from ..errors import require

        require("fastapi", "serve", "imseg serve")
        from . import app

        return getattr(app, name)
    if name == "SamBackend":
        from .backend import SamBackend

        return SamBackend
    raise AttributeError(name)
