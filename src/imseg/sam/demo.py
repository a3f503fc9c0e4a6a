"""``imseg demo``: segment scikit-image's bundled photos with a point and a box prompt.

Without a checkpoint the demo fetches the model's official weights into the cache (sha256 checked); offline it
says so and runs with random weights under a banner, so it always shows the whole flow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_image

#: image name -> (point prompt XY, box prompt XYXY) in that image's pixels
DEMO_PROMPTS: dict[str, tuple[tuple[int, int], tuple[int, int, int, int]]] = {
    "astronaut": ((230, 120), (140, 20, 340, 250)),  # the face; head and shoulders
    "coffee": ((300, 190), (120, 50, 480, 340)),  # the coffee; cup and saucer
}

def _mark(image: np.ndarray, point: tuple[int, int] | None = None, box: tuple[int, ...] | None = None) -> np.ndarray:
    """Draw the prompt (a white-on-black cross or rectangle) so the overlay shows what was asked."""
    img = image.copy()
    h, w = img.shape[:2]
    if point is not None:
        x, y = point
        for col, r in (((0, 0, 0), 7), ((255, 255, 255), 5)):
            img[max(0, y - 1) : y + 2, max(0, x - r) : x + r + 1] = col
            img[max(0, y - r) : y + r + 1, max(0, x - 1) : x + 2] = col
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        x1, y1 = min(x1, w - 1), min(y1, h - 1)
        for col, t in (((0, 0, 0), 2), ((255, 255, 255), 1)):
            img[y0 : y0 + t, x0 : x1 + 1] = col
            img[y1 - t + 1 : y1 + 1, x0 : x1 + 1] = col
            img[y0 : y1 + 1, x0 : x0 + t] = col
            img[y0 : y1 + 1, x1 - t + 1 : x1 + 1] = col
    return img


def demo_weights(name: str, checkpoint: str | os.PathLike | None, echo: Any = print,
                 timeout: float = 20.0) -> str | os.PathLike | None:
    """The checkpoint the demo runs: ``checkpoint`` if given, else the cached official weights of model
    ``name``, else a fresh download of them; None (random weights) when the download fails, with the reason."""
    from ..errors import WeightsError
    from ..registry import download_weights, find_weights, get_spec, weights_path

    spec = get_spec(name)
    if checkpoint is not None or spec.weights is None:
        return checkpoint
    cached = find_weights(spec.name)
    if cached is not None:
        return cached
    size = f" ({spec.weights.size / 1e6:.0f} MB)" if spec.weights.size else ""
    echo(f"downloading the official {spec.name} weights{size} from {spec.weights.url} to {weights_path(spec.name)}")
    try:
        return download_weights(spec.name, timeout=timeout)
    except WeightsError as exc:
        echo(f"the download failed, so the demo continues offline: {exc}")
        return None


def run_demo(model: str = "mobile-sam", checkpoint: str | os.PathLike | None = None, out: str | os.PathLike = "runs/demo",
             images: tuple[str, ...] = ("astronaut", "coffee"), device: str = "auto", echo: Any = print) -> list[Path]:
    """Build ``model`` with :func:`demo_weights` (random weights, loudly, when none can be had), segment each
    image with its point and box prompt, write overlay and mask PNGs into ``out``; returns the written paths."""
    import warnings

    from skimage import data

    from ..registry import get_spec, load

    spec = get_spec(model)
    checkpoint = demo_weights(spec.name, checkpoint, echo)
    if checkpoint is None:
        echo("=" * 78)
        echo(f"WEIGHTS ARE RANDOM: no checkpoint for {spec.name} could be had, so this demo runs the real model")
        echo("code with RANDOM weights and the masks will not look like objects.")
        echo(f"Get real weights: `imseg weights download {spec.name}`, or pass --checkpoint PATH.")
        echo("=" * 78)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-weights notice was printed above
        segmenter = load(spec.name, checkpoint=checkpoint, device=device, allow_random=True)
    out_dir = Path(out)
    written: list[Path] = []
    for name in images:
        image = getattr(data, name)()
        point, box = DEMO_PROMPTS.get(name, ((image.shape[1] // 2, image.shape[0] // 2), None))
        if box is None:
            box = (0, 0, image.shape[1] - 1, image.shape[0] - 1)
        for kind, prompt in (("point", {"points": [point], "labels": [1]}), ("box", {"box": list(box)})):
            masks = segmenter.segment(image, **prompt)
            shown = masks.overlay(image)
            shown = _mark(shown, point=point) if kind == "point" else _mark(shown, box=box)
            written.append(write_image(out_dir / f"{name}_{kind}_overlay.png", shown))
            written.append(write_image(out_dir / f"{name}_{kind}_mask.png", masks.masks[0]))
            echo(f"{name} ({kind} prompt): mask of {int(masks.areas[0])} px, predicted IoU {masks.scores[0]:.3f}")
    echo(f"wrote {len(written)} files to {out_dir.resolve()}/")
    return written
