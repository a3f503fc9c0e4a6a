"""A lighter instance model for CPUs: a contour-aware U-Net whose instances come from a watershed.

The network is imseg's semantic U-Net (segmentation_models_pytorch, trained by :func:`imseg.semantic.train.train`)
with three classes per pixel: background, an object's core (its pixels deeper than half its own depth, see
:func:`pixel_labels`) and the rest of the object, so touching objects' cores lie apart by about their radii. An
image's instances are the connected components of the cores, grown back over the foreground (core or rest) by a
watershed on the rest-minus-core probability; each object's score is its mean foreground probability. One dense
pass per image and no proposals, boxes or per-object heads: the cost of a semantic U-Net, which suits CPUs and
dense images of many small objects.
Each image is normalised on its own before the network sees it, in training and prediction alike
(:func:`normalize_image`: its intensity range stretched, bright backgrounds optionally inverted), and ``tta``
averages the flips the network trained with at prediction.
One object class (the data set's first); the run directory is a semantic run plus an ``instance`` entry in its
config.yaml, which :func:`imseg.instance.infer.load_instance_run` reads.

``native=True`` trains on random ``imgsz`` crops at each image's own resolution (augment ``native``, see
:mod:`imseg.semantic.transforms`) instead of whole images letterboxed to ``imgsz``, validates on centre crops at
that resolution, and predicts at native resolution with sliding tiles: for mixed image sizes with small objects,
which a letterbox would shrink below the pixels their cores need.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError
from .detections import InstanceEngine, check_thresholds
from .sample import InstanceDataset, InstanceSample

ARCH = "unet-watershed"
#: the pixel classes' names in runs and exports: "interior" is an object's core, "boundary" the rest of it
PIXEL_CLASSES = ["background", "interior", "boundary"]
#: an object's core: its pixels deeper than this share of its deepest pixel's depth (see :func:`pixel_labels`)
CORE = 0.5
#: per-image intensity normalisation before the network (see :func:`normalize_image`)
NORMALIZE = ("none", "stretch", "stretch-dark")

DEFAULTS: dict[str, Any] = {
    "data": None, "val": None, "val_fraction": 0.2, "seed": 0, "encoder": "resnet18", "epochs": 100, "imgsz": 256,
    "batch": 4, "lr": 2e-3, "max_time": None, "workers": 0,
    # half smp's default decoder widths: the decoder's full-resolution stages dominate a U-Net's CPU time
    "decoder_channels": [128, 64, 32, 16, 16], "accelerator": "auto", "progress": True,
    "min_area": 8, "core": CORE, "normalize": "stretch", "tta": False, "name": "exp", "project": "runs/train",
    "exist_ok": False, "native": False, "amp": False,
    # small objects' cores are a few pixels wide: scaling stays mild so they survive resampling
    "augment": {"scale": [0.75, 1.33], "vflip": 0.5, "rotate90": 0.5, "color_jitter": 0.2},
}


def check_core(core: Any) -> float:
    """``core`` as a float in [0, 1), or a ConfigError that says so."""
    if isinstance(core, bool) or not isinstance(core, int | float) or not 0.0 <= float(core) < 1.0:
        raise ConfigError(f"core must be a number in [0, 1) (a share of each object's depth, default {CORE}); "
                          f"got {core!r}.")
    return float(core)


def check_normalize(mode: Any) -> str:
    """``mode`` if it is one of :data:`NORMALIZE`, or a ConfigError that lists them."""
    if mode not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}; got {mode!r}.")
    return str(mode)


def check_tta(tta: Any) -> bool | str:
    """``tta`` (True: the flips the run trained with, averaged at prediction; "h", "v", "hv"; False), or a
    ConfigError."""
    from ..semantic.testtime import check_flips

    return tta if isinstance(tta, bool) else check_flips(tta, "tta")


def _intensity(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``image`` as float32, its intensity (the channels' mean) and that intensity's 1st and 99.8th percentiles."""
    pixels = np.asarray(image, np.float32)
    gray = pixels.mean(axis=-1) if pixels.ndim == 3 else pixels
    low, high = np.percentile(gray, (1.0, 99.8))
    return pixels, gray, float(low), float(high)


def background_level(image: np.ndarray) -> float:
    """Where an image's median pixel lies in its 1st..99.8th percentile intensity range (0 dark, 1 bright; 0.5 for a
    flat image): the background's brightness when objects cover less than half the image."""
    _, gray, low, high = _intensity(image)
    return _level(gray, low, high)


def _level(gray: np.ndarray, low: float, high: float) -> float:
    return 0.5 if high - low < 1e-3 else float((np.median(gray) - low) / (high - low))


def normalize_image(image: np.ndarray, mode: str) -> np.ndarray:
    """``image`` (H, W, 3) as the network sees it. ``stretch`` maps the 1st..99.8th percentile of the image's
    intensity (its channels' mean) to 0..255, one range for all channels so colours keep their balance: dim and
    bright exposures of one kind of image look alike. ``stretch-dark`` also inverts an image whose median pixel
    lies in the upper half of that range (a bright background: brightfield, stained tissue), so objects are
    always lighter than the background. ``none`` returns ``image`` as it is; so does a flat image."""
    mode = check_normalize(mode)
    if mode == "none":
        return image
    pixels, gray, low, high = _intensity(image)
    if high - low < 1e-3:
        return image
    out = np.clip((pixels - low) / (high - low), 0.0, 1.0)
    if mode == "stretch-dark" and _level(gray, low, high) > 0.5:
        out = 1.0 - out
    return (out * 255.0 + 0.5).astype(np.uint8)


def pixel_labels(sample: InstanceSample, core: float = CORE) -> np.ndarray:
    """(H, W) uint8 training target: 0 background, 1 an object's core, 2 the rest of the object; 255 (ignored) on
    crowd. The core is the object's pixels deeper than ``core`` times its deepest pixel's depth (the Euclidean
    distance to the nearest pixel outside it) and never its one-pixel rim: a disc keeps a central disc of ``core``
    times its radius, so touching objects' cores stay apart by about their radii. ``core=0`` leaves the one-pixel
    rim alone in class 2."""
    from scipy import ndimage

    core = check_core(core)
    ids = np.zeros((sample.height, sample.width), np.int32)
    crowd = np.zeros_like(ids, bool)
    for k, obj in enumerate(sample.objects, start=1):
        if obj.iscrowd:
            crowd |= obj.mask.decode()
        else:
            ids[obj.mask.decode()] = k
    out = np.where(ids > 0, 2, 0).astype(np.uint8)
    for k, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None:
            continue
        # one pixel of margin, so the edt sees the pixels around the object (other objects count as outside)
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        own = ids[box] == k
        depth = ndimage.distance_transform_edt(own)
        out[box][own & (depth > max(1.0, core * float(depth.max())))] = 1
    out[crowd & (ids == 0)] = 255
    return out


def write_pixel_data(train: InstanceDataset, val: InstanceDataset, root: Path, core: float = CORE,
                     normalize: str = "none") -> dict:
    """Images (``normalize``: see :func:`normalize_image`) and pixel targets (``core``: see :func:`pixel_labels`)
    as a semantic folder data set under ``root``; returns its data config dict."""
    from ..io import read_image, write_image

    stems: dict[str, list[str]] = {"train": [], "val": []}
    for split, dataset in (("train", train), ("val", val)):
        for sample in dataset.samples:
            stem = f"{split}{len(stems[split]):05d}_{sample.stem}"
            write_image(root / "images" / f"{stem}.png", normalize_image(read_image(sample.image_path), normalize))
            write_image(root / "masks" / f"{stem}.png", pixel_labels(sample, core))
            stems[split].append(stem)
    return {"path": str(root.resolve()), "train": stems["train"], "val": stems["val"], "names": PIXEL_CLASSES,
            "ignore_index": 255}


def train_unet_instance(config: dict[str, Any], callbacks: list | None = None) -> Path:
    """Train the contour-aware U-Net on an instance data set; returns the run directory. Options: see ``DEFAULTS``
    (``max_time`` in seconds: no epoch starts after it); ``callbacks``: more Lightning callbacks."""
    import yaml

    from ..semantic.data import build_datasets
    from ..semantic.run import increment_run_dir, write_yaml
    from ..semantic.train import train
    from .train import _plain, _read, split_dataset

    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {ARCH}; known: {', '.join(DEFAULTS)}.")
    cfg = {**DEFAULTS, **config}
    check_core(cfg["core"])  # before the run directory is made
    check_normalize(cfg["normalize"])
    tta = check_tta(cfg["tta"])
    dataset = _read(cfg["data"], "data")
    if cfg["val"] is not None:
        train_set, val_set = dataset, _read(cfg["val"], "val")
    else:
        train_set, val_set = split_dataset(dataset, cfg["val_fraction"], cfg["seed"])
    if len(train_set.categories) != 1:
        raise DatasetError(f"{ARCH} segments one object class; the data has {train_set.categories}. "
                           "Train Mask R-CNN (--model maskrcnn) for several classes.")
    run_dir = increment_run_dir(cfg["project"], cfg["name"], cfg["exist_ok"])
    data = write_pixel_data(train_set, val_set, run_dir / "pixel-data", cfg["core"], cfg["normalize"])
    callbacks = [*(callbacks or []), *([] if cfg["max_time"] is None else [_time_budget(float(cfg["max_time"]))])]
    native = bool(cfg["native"])
    augment = native_augment(cfg["augment"]) if native else cfg["augment"]
    sets = build_datasets(data, imgsz=int(cfg["imgsz"]), augment=augment, seed=int(cfg["seed"])) if native else None
    train({"data": data, "model": "unet", "encoder": cfg["encoder"], "epochs": int(cfg["epochs"]),
           "imgsz": int(cfg["imgsz"]), "batch": int(cfg["batch"]), "lr": float(cfg["lr"]), "patience": 0,
           "workers": int(cfg["workers"]), "seed": int(cfg["seed"]), "augment": augment, "loss": "ce+dice",
           "amp": bool(cfg["amp"]),
           "accelerator": cfg["accelerator"], "progress": bool(cfg["progress"]), "project": str(run_dir.parent),
           "model_kwargs": {"decoder_channels": [int(c) for c in cfg["decoder_channels"]]},
           "name": run_dir.name, "exist_ok": True}, callbacks=callbacks, datasets=sets,
          class_names=PIXEL_CLASSES if native else None, inference={"resize": not native, "tta": tta})
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    plain = _plain(cfg)
    saved.update({"task": "instance", "instance": {
        "model": ARCH, "class_names": list(train_set.categories), "min_area": int(cfg["min_area"]),
        "normalize": cfg["normalize"],
        "data": plain["data"], "val": plain["val"], "val_fraction": cfg["val_fraction"], "seed": cfg["seed"],
        "options": plain}})
    write_yaml(run_dir / "config.yaml", saved)
    return run_dir


def native_augment(augment: Any) -> dict[str, Any]:
    """``augment`` (a dict, "default" or "none") with native-resolution crops switched on."""
    from ..semantic.transforms import DEFAULT_AUGMENT, NO_AUGMENT

    if isinstance(augment, dict):
        return {**augment, "native": True}
    base = NO_AUGMENT if augment in (None, False, "none") else DEFAULT_AUGMENT
    return {**base, "scale": [1.0, 1.0], "native": True}


def _time_budget(seconds: float):
    """A Lightning callback that ends training before an epoch that would end past ``seconds`` (judged by the
    mean epoch time so far), so every run ends on a whole, validated epoch within the budget."""
    import lightning as L

    class TimeBudget(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            self.started = time.monotonic()

        def on_train_epoch_end(self, trainer, module) -> None:
            elapsed = time.monotonic() - self.started
            done = trainer.current_epoch + 1
            if elapsed + elapsed / done > seconds:
                trainer.should_stop = True

    return TimeBudget()


def split_instances(probs: np.ndarray, class_names: list[str], *, mask_threshold: float = 0.5, min_area: int = 8):
    """Instances from (3, H, W) background/core/rest-of-object probabilities as :class:`imseg.Masks` (RLE-backed),
    best score first."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    from ..masks import Masks, encode_rle

    foreground = 1.0 - probs[0]
    seeds, _ = ndimage.label(probs[1] > mask_threshold)
    regions = watershed(probs[2] - probs[1], seeds, mask=foreground > mask_threshold)
    ids = np.arange(1, int(regions.max()) + 1)
    areas = ndimage.sum_labels(np.ones_like(regions), regions, ids) if len(ids) else np.zeros(0)
    scores = ndimage.mean(foreground, regions, ids) if len(ids) else np.zeros(0)
    keep = np.flatnonzero(areas >= min_area)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    slices = ndimage.find_objects(regions)
    rles = []
    for k in keep:  # one object at a time: dense images hold hundreds of objects
        mask = np.zeros(regions.shape, bool)
        mask[slices[k]] = regions[slices[k]] == ids[k]
        rles.append(encode_rle(mask[None])[0])
    return Masks(rles=rles, scores=np.asarray(scores[keep], np.float32), labels=np.zeros(len(keep), np.int64),
                 class_names=list(class_names), image_size=tuple(probs.shape[1:]))


class UnetInstanceSegmenter(InstanceEngine):
    """The contour-aware U-Net (a semantic segmenter of background, object core and the rest of the object) plus
    the watershed split."""

    name = ARCH

    def __init__(self, semantic: Any, class_names: list[str], *, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, min_area: int = 8, max_detections: int = 1000,
                 normalize: str = "none") -> None:
        check_thresholds(score_threshold, mask_threshold)
        self.normalize = check_normalize(normalize)
        if list(semantic.class_names) != PIXEL_CLASSES:
            raise ConfigError(f"{ARCH} needs a model of the pixel classes {PIXEL_CLASSES}; got {semantic.class_names}.")
        self.semantic, self.class_names = semantic, list(class_names)
        self.score_threshold, self.mask_threshold = float(score_threshold), float(mask_threshold)
        self.min_area, self.max_detections = int(min_area), int(max_detections)

    def detect(self, image: Any, score_threshold: float | None = None):
        from ..io import read_image

        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        pixels = normalize_image(read_image(image), self.normalize)
        found = split_instances(self.semantic.predict_probs(pixels), self.class_names,
                                mask_threshold=self.mask_threshold, min_area=self.min_area)
        return found[np.flatnonzero(found.scores >= threshold)[: self.max_detections]]

    def __repr__(self) -> str:
        return f"UnetInstanceSegmenter(classes={self.class_names}, min_area={self.min_area})"


def load_unet_instance(run: str | os.PathLike, info: dict, *, weights: str = "best", device: str = "auto",
                       score_threshold: float | None = None, mask_threshold: float = 0.5) -> UnetInstanceSegmenter:
    from ..semantic.infer import load_run

    path = Path(run)
    # a weights file (RUN/weights/x.pt) is that checkpoint of its run
    semantic = load_run(path.parent.parent, checkpoint=str(path), device=device) if path.is_file() else \
        load_run(path, checkpoint=weights, device=device)
    return UnetInstanceSegmenter(semantic, info["class_names"],
                                 score_threshold=0.5 if score_threshold is None else score_threshold,
                                 mask_threshold=mask_threshold, min_area=int(info.get("min_area", 8)),
                                 normalize=info.get("normalize", "none"))
