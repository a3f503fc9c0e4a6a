"""Command functions ``explain_cmd`` and ``distill_cmd`` (flags only; registered on the main typer app).

    imseg explain IMAGES --run RUN --class horse --method gradcam --out DIR
    imseg explain IMAGES --model mobile-sam --checkpoint P --points 500,375 --out DIR
    imseg distill --teacher sam-vit-b --teacher-checkpoint P --student mobile-sam --data IMAGES --epochs N --out DIR
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from .errors import ImsegError


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _pairs(values: list[str] | None, size: int, what: str) -> list[list[float]] | None:
    """'x,y' (or 'x0,y0,x1,y1') strings -> lists of floats; a clear error otherwise."""
    if not values:
        return None
    out = []
    for value in values:
        for item in value.replace(";", " ").split():
            try:
                numbers = [float(p) for p in item.split(",")]
            except ValueError:
                numbers = []
            if len(numbers) != size:
                _fail(f"{what} {item!r}: expected {size} comma-separated numbers, e.g. "
                      f"{'500,375' if size == 2 else '10,20,300,400'}.")
            out.append(numbers)
    return out


def _load_explained(run: str | None, model: str | None, checkpoint: str | None, device: str):
    if (run is None) == (model is None):
        _fail("pass either --run RUN (a semantic run directory) or --model mobile-sam/sam-vit-b with --checkpoint.")
    if run is not None:
        from .semantic.infer import load_run

        return load_run(run, device=device)
    from .registry import load

    return load(model, checkpoint=checkpoint, device=device)


def explain_cmd(
    source: str = typer.Argument(..., help="Image file, folder or glob."),
    run: str = typer.Option(None, "--run", help="Semantic run directory (or its best.pt)."),
    class_name: str = typer.Option(None, "--class", help="Class name or id to explain; default: the most frequent."),
    mask: str = typer.Option(None, "--mask", help="Region mask image (non-zero = region) instead of the class pixels."),
    model: str = typer.Option(None, "--model", help="SAM model instead of a run: mobile-sam, sam-vit-b, ..."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="SAM checkpoint file; default: the weights cache."),
    points: list[str] = typer.Option(None, "--points", help="SAM point prompt x,y in pixels (repeatable)."),
    labels: str = typer.Option(None, "--labels", help="SAM point labels, 1 foreground / 0 background (e.g. 1,0)."),
    box: str = typer.Option(None, "--box", help="SAM box prompt x0,y0,x1,y1 in pixels."),
    method: str = typer.Option("gradcam", "--method", help="gradcam, gradcam++ or hirescam."),
    layer: str = typer.Option(None, "--layer", help="Module name; semantic: decoder (default) or encoder too."),
    out: str = typer.Option("runs/explain", "--out", help="Output directory."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Class activation maps (Grad-CAM family): writes <image>_<target>_<method>.png overlays and _cam.png maps."""
    import numpy as np

    from .explain import explain
    from .io import list_images, read_image, write_image

    point_list = _pairs(points, 2, "--points")
    box_list = _pairs([box] if box else None, 4, "--box")
    label_list = None if labels is None else _pairs([labels.replace(",", " ")], 1, "--labels")
    try:
        target = _load_explained(run, model, checkpoint, device)
        region = None if mask is None else read_image(mask)[..., 0] > 0
        paths = list_images(source)
        if not paths:
            _fail(f"no images found at {source!r}.")
        for path in paths:
            rgb = read_image(path)
            kwargs = ({"target": class_name, "mask": region, "device": device} if run is not None else
                      {"points": point_list, "labels": None if label_list is None else [int(v[0]) for v in label_list],
                       "box": None if box_list is None else box_list[0]})
            result = explain(target, rgb, method=method, layer=layer, **kwargs)
            stem = re.sub(r"[^\w.-]+", "_", f"{Path(path).stem}_{result.target}_{method.replace('+', 'p')}")
            write_image(Path(out) / f"{stem}.png", result.overlay(rgb))
            write_image(Path(out) / f"{stem}_cam.png", np.round(result.cam * 255).astype(np.uint8))
            typer.echo(f"{path}: {result.target} at {result.layer} -> {Path(out) / stem}.png")
    except ImsegError as exc:
        _fail(str(exc))


def distill_cmd(
    teacher: str = typer.Option("sam-vit-b", "--teacher", help="Teacher SAM: sam-vit-b, sam-vit-l, sam-vit-h, mobile-sam."),
    teacher_checkpoint: str = typer.Option(None, "--teacher-checkpoint", help="Teacher checkpoint; default: cache."),
    student: str = typer.Option("mobile-sam", "--student", help="Student: mobile-sam (TinyViT encoder)."),
    student_checkpoint: str = typer.Option(None, "--student-checkpoint", help="Start the student from this file."),
    data: str = typer.Option(..., "--data", help="Training images: folder, glob or file."),
    val: str = typer.Option(None, "--val", help="Held-out images: embedding MSE before training and per epoch."),
    epochs: int = typer.Option(8, "--epochs"),
    batch: int = typer.Option(2, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    imgsz: int = typer.Option(1024, "--imgsz", help="Input size (multiple of 64); checkpoints load at any size."),
    cache: str = typer.Option(None, "--cache-dir", help="Teacher embedding cache; default <imseg cache>/distill."),
    out: str = typer.Option("runs/distill", "--out", help="Output directory (mobile_sam.pt, metrics.csv)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Distil a SAM image encoder into MobileSAM's TinyViT (decoupled distillation); writes OUT/mobile_sam.pt."""
    from .distill import build_student, distill_sam_encoder
    from .registry import find_weights
    from .sam.checkpoint import ALIASES, CONFIGS, VARIANT_MODEL_NAMES, build_sam

    def variant_of(name: str) -> str | None:
        key = name.strip().lower()
        return ALIASES.get(key, key if key in CONFIGS else None)

    if variant_of(student) != "vit_t":
        _fail(f"--student must be mobile-sam (a TinyViT encoder), got {student!r}.")
    variant = variant_of(teacher)
    if variant is None:
        _fail(f"--teacher must be one of sam-vit-b, sam-vit-l, sam-vit-h, mobile-sam; got {teacher!r}.")
    try:
        teacher_ckpt = teacher_checkpoint or find_weights(VARIANT_MODEL_NAMES[variant])
        if teacher_ckpt is None:
            _fail(f"no checkpoint for the teacher {teacher}: pass --teacher-checkpoint PATH or run "
                  f"`imseg weights download {teacher}`.")
        teacher_model = build_sam(variant, teacher_ckpt, img_size=imgsz)
        student_model = build_student(teacher_model, imgsz, student_checkpoint)
        result = distill_sam_encoder(teacher_model, student_model, data, epochs, out, val_images=val, lr=lr,
                                     batch_size=batch, teacher_checkpoint=teacher_ckpt, cache_dir=cache,
                                     device=device, log=typer.echo)
    except ImsegError as exc:
        _fail(str(exc))
    typer.echo(f"saved {result.checkpoint} (load with imseg.load('mobile-sam', checkpoint=...))")
