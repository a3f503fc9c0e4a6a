"""``backend="auto"`` for a semantic training run: the run as a :class:`~imseg.engines_auto.Target` of the rule in
:mod:`imseg.engines_auto`.

* the engines: torch (the run's own segmenter, in fp32 or bf16 through :func:`imseg.precision.apply_to_semantic`),
  and ONNX Runtime / OpenVINO on an ONNX export of the run's weights file, made once into the cache
  (:func:`imseg.export.runtime.export_cache_dir`, keyed by the file's resolved path, size and mtime);
* the probe: the first image of the run's validation split when the data config its ``config.yaml`` records is
  still readable, else scikit-image's astronaut (:func:`probe_image`);
* the time: the whole prediction (class probabilities, then the label map) on the probe;
* the drift: :func:`label_iou` of the label maps against torch fp32's.

The options every engine takes are the run's prediction options ``resize``, ``imgsz``, ``tta`` and ``scales``;
the torch-only ones (``overlap``, ``batch``) need ``backend="torch"``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import engines_auto
from .engines_auto import Target, file_stamp
from .errors import ConfigError, ImsegError

#: The prediction options the torch, ONNX Runtime and OpenVINO segmenters of a run all take.
SHARED_OPTIONS = ("resize", "imgsz", "tta", "scales")


def run_target(path: Path, checkpoint: str | os.PathLike | None, options: dict) -> RunTarget:
    """The :class:`RunTarget` of a semantic run directory (or one of its weights files), or a
    :class:`ConfigError` for the paths the rule does not measure (export directories, instance and fine-tuning
    runs) and for options the exported engines do not take."""
    from .export.onnx import MANIFEST
    from .finetune.run import is_finetune_run
    from .instance.infer import is_instance_run
    from .semantic.checkpoints import find_checkpoint

    if not path.exists():
        raise ConfigError(f"{path}: no such run directory.")
    if (path / MANIFEST).is_file():
        raise ConfigError(f"{path} is an export directory: backend='auto' measures the registry SAM and SAM 2.1 "
                          f"models and semantic training runs; load it with backend='onnxruntime' or 'openvino'.")
    kind = "a fine-tuning (SAM)" if is_finetune_run(path) else "an instance (Mask R-CNN)" if is_instance_run(path) \
        else None
    if kind is not None:
        raise ConfigError(f"{path} is {kind} run: backend='auto' measures semantic training runs and the registry "
                          f"SAM and SAM 2.1 models; load it with backend='torch' (or export it and load the export "
                          f"with backend='onnxruntime').")
    other = sorted(set(options) - set(SHARED_OPTIONS))
    if other:
        raise ConfigError(f"backend='auto' on a semantic run takes the options every engine shares "
                          f"({', '.join(SHARED_OPTIONS)}), not {', '.join(other)}: drop them, or pass backend='torch'.")
    weights = find_checkpoint(path, checkpoint).resolve()
    run_dir = weights.parent.parent if weights.parent.name == "weights" else weights.parent
    return RunTarget(run_dir, weights, {k: v for k, v in options.items() if v is not None})


class RunTarget(Target):
    """A semantic run (``run_dir``) with its weights file ``weights`` and prediction ``options``."""

    family = "semantic"

    def __init__(self, run_dir: Path, weights: Path, options: dict) -> None:
        self.run_dir, self.weights, self.options = run_dir, weights, dict(options)
        self.label = f"run {run_dir}"
        self._probe: np.ndarray | None = None

    def key(self) -> dict:
        return {"model": f"run:{self.run_dir}", "weights": file_stamp(self.weights),
                "options": {k: repr(v) for k, v in sorted(self.options.items())}}

    def build(self, engine: str, precision: str, *, quiet: bool = False, device: Any = "cpu") -> Any:
        from .registry import load

        with warnings.catch_warnings() if quiet else contextlib.nullcontext():
            if quiet:
                warnings.simplefilter("ignore")
            if engine == "torch":
                return load(self.run_dir, checkpoint=self.weights, device=device, backend="torch", precision=precision,
                            **self.options)
            return load(self.export(), device=device, backend=engine, precision=precision, **self.options)

    def export(self) -> Path:
        """The ONNX export of the run's weights file in the cache (made on the first call)."""
        from .export import export_run
        from .export.onnx import MANIFEST
        from .export.runtime import export_cache_dir

        target = export_cache_dir(f"run-{self.run_dir.name}", self.weights)
        if (target / MANIFEST).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:  # exported beside the target and renamed, so a half-written export is never taken for one
            export_run(self.run_dir, tmp, checkpoint=self.weights)
            with contextlib.suppress(OSError):  # another process renamed its export there first
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def probe(self) -> np.ndarray:
        if self._probe is None:
            self._probe = probe_image(self.run_dir)
        return self._probe

    def measure(self, segmenter: Any) -> tuple[float, np.ndarray]:
        """(best seconds of a whole prediction on the probe, its (H, W) label map)."""
        rgb = self.probe()
        labels = segmenter.probabilities(rgb).argmax(0)  # warm-up
        best = float("inf")
        for _ in range(engines_auto.TIMED_CALLS):
            start = time.perf_counter()
            labels = segmenter.probabilities(rgb).argmax(0)
            best = min(best, time.perf_counter() - start)
        return best, labels

    def drift(self, reference: np.ndarray, outputs: np.ndarray) -> float:
        return label_iou(reference, outputs)


def label_iou(reference: np.ndarray, labels: np.ndarray) -> float:
    """The mean, over the classes present in either (H, W) label map, of the IoU of each class's mask in
    ``labels`` against its mask in ``reference`` (1.0: the same map)."""
    reference, labels = np.asarray(reference), np.asarray(labels)
    if reference.shape != labels.shape:
        raise ConfigError(f"label maps of different shapes {reference.shape} and {labels.shape} cannot be compared.")
    ious = []
    for c in np.union1d(np.unique(reference), np.unique(labels)):
        a, b = reference == c, labels == c
        ious.append(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())
    return float(np.mean(ious))


def probe_image(run_dir: Path) -> np.ndarray:
    """RGB uint8: the first image of the run's validation split, when its ``config.yaml`` records a data config
    that still loads; else scikit-image's astronaut."""
    import yaml

    from .semantic.data import build_datasets, load_data_config

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        source = saved.get("data") if isinstance(saved, dict) else None
        if isinstance(source, dict | str) and source != "<in-memory>":
            datasets = build_datasets(load_data_config(source), imgsz=None, augment="none")
            if "val" in datasets and len(datasets["val"]):
                rgb, _ = datasets["val"].read_raw(0)
                return np.ascontiguousarray(rgb)
    except (ImsegError, OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        pass  # a moved or deleted dataset: the built-in image measures as well
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., :3])

