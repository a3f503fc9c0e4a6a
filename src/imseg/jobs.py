"""The batch jobs behind ``imseg segment``, ``imseg predict`` and ``imseg classical``.

Each job is what its command does to one image (see :class:`imseg.batch.BatchJob`); the ``build_*``
functions load the model. This module is the one place the batch commands call model APIs
(``imseg.load``, ``segment``, ``predict``, ``Masks.save`` / ``overlay`` / ``to_coco_dataset``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .batch import BatchJob
from .errors import ConfigError


@dataclass
class SegmentResult:
    masks: Any  # imseg.Masks
    overlay: np.ndarray | None
    size: tuple[int, int]  # (H, W)


class SegmentJob(BatchJob):
    """Masks per image in one of ``Masks.save``'s formats, optional overlays, and for ``coco`` one
    ``coco.json`` listing every image done in the out dir with these settings.

    Layout: ``masks/<name>/<name>_NNN.png`` + ``<name>.json`` (png), ``masks/<name>.<ext>`` (other
    formats), ``overlays/<name>.png``. Format ``jsonl`` writes no per-image mask files: each image's COCO
    RLE row is kept in its done marker and ``shards/part-*.jsonl`` (``shards`` files) hold every row;
    :func:`imseg.batch.merge_shards` turns them into one COCO JSON.
    """

    name, verb = "segment", "segmented"

    def __init__(self, segmenter: Any, settings: dict, prompts: dict | None = None, pipeline: Any = None,
                 fmt: str = "png", overlay: bool = False, shards: int = 1) -> None:
        self.segmenter, self.prompts, self.pipeline = segmenter, dict(prompts or {}), pipeline
        self.fmt, self.overlay, self.shards = fmt, overlay, shards
        self.settings = {**settings, "format": fmt}

    def process(self, image_path: Path) -> SegmentResult:
        from .io import read_image

        rgb = read_image(image_path)
        masks = self.segmenter.segment(rgb, **self.prompts)
        if self.pipeline is not None:
            masks = self.pipeline(masks, image=rgb)
        overlay = masks.overlay(rgb) if self.overlay else None
        return SegmentResult(masks, overlay, (int(rgb.shape[0]), int(rgb.shape[1])))

    def write(self, result: SegmentResult, out_dir: Path, name: str) -> list[Path]:
        from .io import write_image

        mask_dir = out_dir / "masks"
        if self.fmt == "jsonl":
            paths: list[Path] = []
        else:
            paths = list(result.masks.save(mask_dir / name if self.fmt == "png" else mask_dir, format=self.fmt,
                                           stem=name))
        if result.overlay is not None:
            paths.append(write_image(self.overlay_path(out_dir, name), result.overlay))
        return paths

    @staticmethod
    def overlay_path(out_dir: Path, name: str) -> Path:
        return out_dir / "overlays" / f"{name}.png"

    def describe(self, result: SegmentResult) -> dict:
        info = {"masks": len(result.masks), "format": self.fmt, "height": result.size[0], "width": result.size[1]}
        if self.fmt == "jsonl":  # the image's row lives in its marker until finish() shards the rows
            info["row"] = result.masks.to_coco_dataset()
        return info

    def required(self, out_dir: Path, name: str) -> list[Path]:
        return [self.overlay_path(out_dir, name)] if self.overlay else []

    def finish(self, out_dir: Path, records: Callable[[], list[dict]]) -> list[Path]:
        """``coco.json`` (format coco) or ``shards/part-*.jsonl`` (format jsonl): every image done in ``out_dir``
        with these settings (this run and earlier ones)."""
        if self.fmt not in ("coco", "jsonl"):
            return []
        from . import io
        from .batch import coco_from_rows, write_shards
        from .masks import Masks

        done = records()
        if self.fmt == "jsonl":
            rows = [{"image": info["image"], "stem": info["stem"], **info["row"]} for info in done if "row" in info]
            return write_shards(rows, out_dir / "shards", self.shards)
        rows = [{"image": info["image"], "stem": info["stem"],
                 **Masks.load(out_dir / "masks" / f"{info['stem']}.json").to_coco_dataset()} for info in done]
        target = out_dir / "coco.json"
        try:
            return [io.write_bytes(target, json.dumps(coco_from_rows(rows)).encode("utf-8"))]
        except OSError as exc:  # name the file, not the temporary one beside it
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc


def build_segment_job(model: str, *, checkpoint: str | None = None, device: str = "auto", backend: str = "torch",
                      half: bool = False, allow_random: bool = False, prompts: dict | None = None,
                      post: str | None = None, fmt: str = "png", overlay: bool = False,
                      shards: int = 1, text: str | None = None, detector: str = "grounding-dino-tiny",
                      classify: str | None = None, clip: str = "clip-vit-b-32",
                      precision: str | None = None) -> SegmentJob:
    """Load ``model`` (a registry name or a run dir) and the ``post`` pipeline into a :class:`SegmentJob`.
    A bad ``post`` spec or text prompt fails before the model is built. ``text`` (phrases for an
    open-vocabulary ``detector``) or ``classify`` (names CLIP gives everything-mode masks) wrap the
    segmenter in :class:`imseg.text.TextSegmenter`."""
    from . import load
    from .registry import get_spec

    pipeline = None
    if post:
        from .postprocess import parse_pipeline

        pipeline = parse_pipeline(post)
    load_kwargs: dict = {"device": device, "backend": backend}
    family = None if Path(model).is_dir() else get_spec(model).family
    if half:
        import torch

        if device == "cpu" or not torch.cuda.is_available():
            raise ConfigError("--half needs a CUDA device; drop --half or use --device cuda on a GPU machine.")
        load_kwargs["dtype"] = torch.float16
    if family in ("sam", "sam2"):
        load_kwargs["allow_random"] = allow_random
    if precision is not None:
        load_kwargs["precision"] = precision
    text_prompts = _text_prompts(text, classify)
    segmenter = load(model, checkpoint=checkpoint, **load_kwargs)
    choice = getattr(segmenter, "engine_choice", None)  # backend="auto": the engine it picked on this machine
    if text_prompts:
        from .text import TextSegmenter

        segmenter = TextSegmenter(segmenter, detector=detector if text is not None else None,
                                  labeler=clip if classify is not None else None, device=device)
        prompts = {**dict(prompts or {}), **text_prompts}
    # a done marker counts only for the same job: same model, weights, prompts, format and post-processing
    settings = {"model": model, "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
                "backend": backend, "half": half, "prompts": dict(prompts or {}), "post": post}
    if precision not in (None, "fp32"):  # fp32 runs keep the markers they had before precision existed
        settings["precision"] = precision
    if choice is not None:  # images done by another engine than today's pick are done again
        settings["engine"] = f"{choice.engine} {choice.precision}"
    if text_prompts:
        settings["text_models"] = {"detector": detector if text is not None else None,
                                   "clip": clip if classify is not None else None}
    job = SegmentJob(segmenter, settings, prompts=prompts, pipeline=pipeline, fmt=fmt, overlay=overlay,
                     shards=shards)
    job.recipe = functools.partial(build_segment_job, model, checkpoint=checkpoint, device=device, backend=backend,
                                   half=half, allow_random=allow_random,
                                   prompts={k: v for k, v in (prompts or {}).items() if k not in text_prompts},
                                   post=post, fmt=fmt, overlay=overlay, shards=shards, text=text, detector=detector,
                                   classify=classify, clip=clip, precision=precision)
    return job


def _text_prompts(text: str | None, classify: str | None) -> dict:
    """``text=`` phrases or ``classify=`` names for :class:`imseg.text.TextSegmenter`, checked before any model
    is built (empty phrases, repeated names)."""
    from .text.phrases import parse_phrases

    if text is not None:
        return {"text": ". ".join(parse_phrases(text.replace(",", ".")))}
    if classify is not None:
        return {"classify": parse_phrases(classify.replace(",", "."))}
    return {}


@dataclass
class LabelResult:
    labels: np.ndarray  # (H, W) class or region ids, uint8 or uint16
    overlay: np.ndarray | None = None
    masks: int | None = None


class PredictJob(BatchJob):
    """A semantic run's label map (``<name>.png``, pixel = class id) and colour overlay (``<name>_overlay.png``)."""

    name, verb = "predict", "predicted"

    def __init__(self, segmenter: Any, settings: dict | None = None) -> None:
        self.segmenter, self.settings = segmenter, dict(settings or {})

    def process(self, image_path: Path) -> LabelResult:
        from .io import read_image
        from .masks import Masks

        rgb = read_image(image_path)
        labels = self.segmenter.predict(rgb)
        num_classes = self.segmenter.num_classes
        # the one overlay: every writer draws through Masks (classes other than background, by class colour)
        blend = Masks.from_label_map(labels, background=0).overlay(rgb, colour_by="label")
        return LabelResult(labels.astype(np.uint8 if num_classes <= 256 else np.uint16), blend)

    def write(self, result: LabelResult, out_dir: Path, name: str) -> list[Path]:
        from .io import write_image

        return [write_image(out_dir / f"{name}.png", result.labels),
                write_image(out_dir / f"{name}_overlay.png", result.overlay)]


def build_predict_job(run: str, *, checkpoint: str | None = None, device: str = "auto", tta: bool | None = None,
                      overlap: float = 0.25, resize: bool | None = None, scales: str | None = None) -> PredictJob:
    """Load a training run for :class:`PredictJob` (``tta``/``scales``/``resize`` None: the run's own defaults)."""
    from .semantic.infer import load_run, parse_scales

    segmenter = load_run(run, checkpoint=checkpoint, device=device, tta=tta, overlap=overlap, resize=resize,
                         scales=None if scales is None else parse_scales(scales))
    settings = {"run": str(Path(run).resolve()), "checkpoint": checkpoint, "tta": tta, "overlap": overlap,
                "resize": resize, "scales": scales}
    job = PredictJob(segmenter, settings)
    job.recipe = functools.partial(build_predict_job, run, checkpoint=checkpoint, device=device, tta=tta,
                                   overlap=overlap, resize=resize, scales=scales)
    return job


def build_instance_predict_job(run: str, *, checkpoint: str | None = None, device: str = "auto", fmt: str = "coco",
                               overlay: bool = True, score_threshold: float | None = None, refine: str | None = None,
                               sam_checkpoint: str | None = None, sam_model: str = "mobile-sam") -> SegmentJob:
    """An instance run (Mask R-CNN) as a :class:`SegmentJob`: its masks with labels, class names and scores in
    ``fmt`` (``coco``: one ``coco.json`` for the folder), overlays; ``refine="sam"`` re-segments each detected box
    with SAM (``sam_checkpoint``) and keeps its label and score."""
    from .instance.infer import load_instance_run

    if refine not in (None, "sam"):
        raise ConfigError(f"--refine must be sam (or left out); got {refine!r}.")
    if refine is None and sam_checkpoint is not None:
        raise ConfigError("--sam-checkpoint is only used with --refine sam; add --refine sam or drop it.")
    weights = checkpoint or "best"
    source = run if weights in ("best", "last") else weights
    segmenter = load_instance_run(source, weights=weights if weights in ("best", "last") else "best", device=device,
                                  score_threshold=score_threshold)
    if refine == "sam":
        from .instance.refine import SamRefiner

        segmenter = SamRefiner.build(segmenter, sam_checkpoint, model=sam_model, device=device)
    settings = {"run": str(Path(run).resolve()), "checkpoint": checkpoint, "score_threshold": score_threshold,
                "refine": refine, "sam_model": sam_model if refine else None,
                "sam_checkpoint": None if sam_checkpoint is None else str(Path(sam_checkpoint).resolve())}
    job = SegmentJob(segmenter, settings, fmt=fmt, overlay=overlay)
    job.name, job.verb = "predict", "predicted"
    job.recipe = functools.partial(build_instance_predict_job, run, checkpoint=checkpoint, device=device, fmt=fmt,
                                   overlay=overlay, score_threshold=score_threshold, refine=refine,
                                   sam_checkpoint=sam_checkpoint, sam_model=sam_model)
    return job


class ClassicalJob(BatchJob):
    """A classical method's label map per image (``<name>.png``; uint16 above 255 regions)."""

    name, verb = "classical", "segmented"

    def __init__(self, segmenter: Any, settings: dict | None = None, pipeline: Any = None) -> None:
        self.segmenter, self.pipeline, self.settings = segmenter, pipeline, dict(settings or {})

    def process(self, image_path: Path) -> LabelResult:
        from .io import read_image

        masks = self.segmenter.segment(image_path)  # from the file: methods read gray images as stored
        if self.pipeline is not None:
            masks = self.pipeline(masks, image=read_image(image_path))
        labels = masks.label_map()
        return LabelResult(labels.astype(np.uint16 if labels.max() > 255 else np.uint8), masks=len(masks))

    def write(self, result: LabelResult, out_dir: Path, name: str) -> list[Path]:
        from .io import write_image

        return [write_image(out_dir / f"{name}.png", result.labels)]

    def describe(self, result: LabelResult) -> dict:
        return {"masks": result.masks}


def build_classical_job(method: str, params: dict | None = None, post: str | None = None) -> ClassicalJob:
    """Build a classical method with ``params`` (and the ``post`` pipeline) into a :class:`ClassicalJob`."""
    from .postprocess import parse_pipeline
    from .registry import load

    pipeline = parse_pipeline(post) if post else None
    segmenter = load(method, **dict(params or {}))
    job = ClassicalJob(segmenter, {"method": method, "params": dict(params or {}), "post": post}, pipeline)
    job.recipe = functools.partial(build_classical_job, method, params, post)
    return job
