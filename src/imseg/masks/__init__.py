"""``Masks``: the one result type every segmenter returns and every writer takes.

N binary masks of one image, each with a score, an XYWH box, an area, an optional class label,
and free-form per-mask fields (e.g. SAM's ``stability_score``). Masks are held either as a dense
boolean array (N, H, W) or as COCO RLEs (decoded lazily on first access of ``.masks``).

``core`` holds the class, ``rle`` the RLE/box helpers, ``draw`` polygons and overlays, ``files`` save/load.
"""

from .core import Masks
from .draw import mask_colours
from .files import SAVE_FORMATS
from .rle import _as_bool_masks as _as_bool_masks
from .rle import _rle_counts_to_str as _rle_counts_to_str
from .rle import boxes_from_masks, coco_rles, decode_rle, encode_rle, rle_counts

__all__ = [
    "SAVE_FORMATS",
    "Masks",
    "boxes_from_masks",
    "coco_rles",
    "decode_rle",
    "encode_rle",
    "mask_colours",
    "rle_counts",
]
