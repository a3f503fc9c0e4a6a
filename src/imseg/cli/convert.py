"""``imseg convert``: instance annotations between COCO, YOLO-seg, labelme and PNG."""

from __future__ import annotations

from ..instance.cli import convert_command
from .common import app

app.command("convert", help="Convert instance annotations: COCO, labelme, YOLO-seg, VOC, DSB, Label Studio -> "
                            "coco | yolo | labelme | png.")(convert_command)
