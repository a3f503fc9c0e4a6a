"""``imseg explain`` (class activation maps) and ``imseg distill`` (a MobileSAM encoder from a SAM teacher)."""

from __future__ import annotations

from ..explain_cli import distill_cmd, explain_cmd
from .common import app

app.command("explain")(explain_cmd)
app.command("distill")(distill_cmd)
