"""Instance-segmentation data: an in-memory record per image, readers and writers per format, conversion."""

from .convert import convert, run_convert
from .formats import detect_format, read_dataset
from .report import ConvertReport, Loss
from .sample import InstanceDataset, InstanceMask, InstanceObject, InstanceSample, Source

__all__ = [
    "ConvertReport",
    "InstanceDataset",
    "InstanceMask",
    "InstanceObject",
    "InstanceSample",
    "Loss",
    "Source",
    "convert",
    "detect_format",
    "read_dataset",
    "run_convert",
]
