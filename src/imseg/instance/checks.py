"""Validation shared by the readers: collect every problem, then refuse once with all of them.

A reader calls ``problems.add(source, what)`` for each fault it finds and ``problems.raise_if_any()``
when it is done, so one DatasetError lists every offending file and annotation. Faults with an
explicit repair (``repair=True``) are fixed and recorded in ``problems.repairs`` instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .sample import Source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# polygon points may sit this far outside the image (tools round or snap to the outer pixel edge)
EDGE_TOLERANCE_PX = 1.0


class Problems:
    """Faults found while reading one data set (``what`` names it for the message)."""

    def __init__(self, what: str, repair: bool = False, limit: int = 1000):
        self.what, self.repair, self.limit = what, repair, limit
        self.items: list[str] = []
        self.repairs: list[str] = []

    def add(self, source: Source | str, message: str) -> None:
        self.items.append(f"{source}: {message}")

    def repaired(self, source: Source | str, message: str) -> None:
        self.repairs.append(f"{source}: repaired: {message}")

    def raise_if_any(self, fix: str = "") -> None:
        if not self.items:
            return
        shown = "\n  ".join(self.items[: self.limit])
        more = f"\n  ... and {len(self.items) - self.limit} more" if len(self.items) > self.limit else ""
        hint = f"\n{fix}" if fix else ""
        error = DatasetError(f"{self.what}: {len(self.items)} problem(s) found:\n  {shown}{more}{hint}")
        error.problems = list(self.items)  # every one, also when the message is cut at ``limit``
        raise error


REPAIR_HINT = (
    "Fix the annotations, or pass repair=True (CLI: --repair) to drop degenerate polygons, clip points and "
    "boxes to the image, rasterise self-intersecting polygons and renumber duplicate ids (each repair is reported)."
)


def _cross(u: np.ndarray, v: np.ndarray) -> float:
    return float(u[0] * v[1] - u[1] * v[0])


def signed_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _bridge_edges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Edges the ring also runs back along (a to b and later b to a): zero-width bridges, which YOLO-seg
    uses to join the parts of one object into one line. They add nothing to any fill, so may cross."""
    forward = {(tuple(p), tuple(q)) for p, q in zip(a.tolist(), b.tolist(), strict=True)}
    return np.array([(tuple(q), tuple(p)) in forward for p, q in zip(a.tolist(), b.tolist(), strict=True)], bool)


def self_intersects(ring: np.ndarray, graze_px: float = 1.5, min_loop_px: float = 4.0) -> bool:
    """Whether two non-adjacent edges of the closed ring (K, 2) cross so that the ring twists.

    Hand-drawn outlines often graze themselves where an arm returns beside its outward edge. A crossing
    within ``graze_px`` of an end point of the crossing edges, or one that cuts off a loop smaller than
    ``min_loop_px`` square pixels, changes no pixel that matters and is accepted as drawn; any other
    crossing twists the ring (a figure eight) and is reported.
    """
    pts = np.asarray(ring, np.float64)
    n = len(pts)
    if n < 4:
        return False
    a, b = pts, np.roll(pts, -1, axis=0)

    def orient(p, q, r):  # sign of the cross product (q - p) x (r - p), broadcast over edge pairs
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    a1, b1, a2, b2 = a[:, None], b[:, None], a[None, :], b[None, :]
    crossing = (orient(a1, b1, a2) * orient(a1, b1, b2) < 0) & (orient(a2, b2, a1) * orient(a2, b2, b1) < 0)
    idx = np.arange(n)
    gap = idx[None, :] - idx[:, None]
    crossing &= (gap > 1) & (gap < n - 1)  # each pair once (i < j); neighbours share an end point
    bridge = _bridge_edges(a, b)
    crossing &= ~bridge[:, None] & ~bridge[None, :]
    for i, j in zip(*np.nonzero(crossing), strict=True):
        d1, d2 = b[i] - a[i], b[j] - a[j]
        x = a[i] + _cross(a[j] - a[i], d2) / _cross(d1, d2) * d1
        if min(np.hypot(*(x - e)) for e in (a[i], b[i], a[j], b[j])) <= graze_px:
            continue
        inner = signed_area(np.vstack([x, pts[i + 1 : j + 1]]))
        outer = signed_area(np.vstack([x, pts[j + 1 :], pts[: i + 1]]))
        if min(abs(inner), abs(outer)) >= min_loop_px:
            return True
    return False


def check_rings(
    rings: list[np.ndarray], height: int, width: int, source: Source, problems: Problems
) -> tuple[list[np.ndarray], bool]:
    """Validate polygon rings in pixels. Returns (usable rings, needs rasterising) after any repairs.

    Faults: fewer than three distinct points, points outside the image (beyond EDGE_TOLERANCE_PX),
    self-intersection. With ``problems.repair`` they are dropped, clipped or rasterised and reported.
    """
    kept: list[np.ndarray] = []
    rasterise = False
    for i, ring in enumerate(rings):
        ring = np.asarray(ring, np.float64).reshape(-1, 2)
        label = f"ring {i}" if len(rings) > 1 else "polygon"
        if len(np.unique(ring, axis=0)) < 3:
            msg = f"{label} has {len(np.unique(ring, axis=0))} distinct point(s); a region needs at least 3"
            problems.repaired(source, msg + " (dropped)") if problems.repair else problems.add(source, msg)
            continue
        lo, hi = ring.min(axis=0), ring.max(axis=0)
        if (lo < -EDGE_TOLERANCE_PX).any() or hi[0] > width + EDGE_TOLERANCE_PX or hi[1] > height + EDGE_TOLERANCE_PX:
            msg = f"{label} reaches ({lo[0]:.1f}, {lo[1]:.1f})-({hi[0]:.1f}, {hi[1]:.1f}), outside the {width}x{height} image"
            if not problems.repair:
                problems.add(source, msg)
                continue
            problems.repaired(source, msg + " (clipped)")
            ring = np.clip(ring, 0, [width, height])
        if self_intersects(ring):
            msg = f"{label} intersects itself"
            if not problems.repair:
                problems.add(source, msg)
                continue
            problems.repaired(source, msg + " (rasterised by pycocotools' fill and kept as a mask)")
            rasterise = True
        kept.append(ring)
    return kept, rasterise


def check_box(box, height: int, width: int, source: Source, problems: Problems) -> None:
    """A COCO XYWH box must lie inside the image (its value is recomputed from the mask on writing)."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        problems.add(source, f"bbox {box!r} is not four numbers [x, y, w, h]")
        return
    tol = EDGE_TOLERANCE_PX
    if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        msg = f"bbox [{x:g}, {y:g}, {w:g}, {h:g}] lies outside the {width}x{height} image"
        # the box is derived again from the mask when written, so the repair is to ignore it
        problems.repaired(source, msg + " (box ignored)") if problems.repair else problems.add(source, msg)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file after its EXIF orientation, reading the header only."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block leaves the stored orientation
            orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def find_image(folder: Path, stem: str) -> Path | None:
    """The image file named ``stem`` with any usual suffix in ``folder``, if there is one."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_label_image(path: Path) -> np.ndarray:
    """A label image (PNG palette/gray/16-bit, TIFF) as a 2-D integer array of its stored values."""
    from PIL import Image

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    else:
        with Image.open(path) as im:
            arr = np.asarray(im) if im.mode in ("P", "L", "I", "I;16", "1") else np.asarray(im.convert("L"))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0] if (arr[..., :3] == arr[..., :1]).all() else None
    if arr is None or arr.ndim != 2:
        raise DatasetError(f"{path}: a label image must be single-channel (one value per object); got colour values.")
    return arr
