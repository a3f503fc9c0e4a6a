"""The ``imseg`` command line (typer). Heavy imports happen inside each command."""

from __future__ import annotations

import sys

import typer

from . import __version__
from .errors import ImsegError

app = typer.Typer(
    name="imseg",
    help="Image segmentation: Segment Anything, semantic training, classical methods, export, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="List, download and locate official checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """imseg command line."""


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# ============================================================================ weights
@weights_app.command("list")
def weights_list() -> None:
    """Official checkpoints, their cache paths and whether they are present."""
    from rich.console import Console
    from rich.table import Table

    from .registry import list_models, weights_path

    table = Table(title="imseg weights")
    for col in ("model", "file", "sha256", "cached"):
        table.add_column(col)
    for spec in list_models("sam"):
        path = weights_path(spec.name)
        table.add_row(spec.name, spec.weights.filename, spec.weights.sha256[:12] + "…", "yes" if path.is_file() else "no")
    Console().print(table)


@weights_app.command("path")
def weights_path_cmd(model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b.")) -> None:
    """Print where the model's checkpoint is (or would be) cached."""
    from .registry import weights_path

    try:
        typer.echo(str(weights_path(model)))
    except ImsegError as exc:
        fail(str(exc))


@weights_app.command("download")
def weights_download(
    model: str = typer.Argument(..., help="Model name, e.g. sam-vit-b."),
    force: bool = typer.Option(False, help="Download again even if cached."),
) -> None:
    """Download an official checkpoint into the cache and verify its sha256."""
    from .registry import download_weights

    try:
        path = download_weights(model, force=force)
    except ImsegError as exc:
        fail(str(exc))
    typer.echo(str(path))


# ============================================================================ segment / demo (SAM, issue 2/3)
@app.command("demo")
def demo_cmd(
    model: str = typer.Option("sam-vit-b", "--model", help="SAM model: sam-vit-b or mobile-sam (also sam-vit-l/h)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Official checkpoint file; default: the weights cache."),
    out: str = typer.Option("runs/demo", "--out", help="Output directory for overlays and masks."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Segment scikit-image's astronaut and coffee with a point and a box prompt (no download needed)."""
    from .sam.demo import run_demo

    try:
        run_demo(model=model, checkpoint=checkpoint, out=out, device=device, echo=typer.echo)
    except ImsegError as exc:
        fail(str(exc))


def _parse_xy_list(values: list[str] | None, what: str, size: int) -> list[list[float]] | None:
    """'x,y' strings (repeatable, or several in one string split by spaces/semicolons) -> [[x, y], ...]."""
    if not values:
        return None
    out = []
    for value in values:
        for item in value.replace(";", " ").split():
            parts = item.split(",")
            try:
                numbers = [float(p) for p in parts]
            except ValueError:
                numbers = []
            if len(numbers) != size:
                example = "x,y" if size == 2 else "x0,y0,x1,y1"
                fail(f"{what} {item!r} is not {size} comma-separated numbers; write it as {example}.")
            out.append(numbers)
    return out


def _out_dir(out: str):
    """--out as a Path; a path that is an existing file fails up front, not once per image."""
    from pathlib import Path

    root = Path(out)
    if root.exists() and not root.is_dir():
        fail(f"--out {root} is a file; pass a directory (it is created when missing).")
    return root


def _read_marker(marker) -> dict | None:
    """A done marker's record, or None when there is none or it cannot be read (the image is redone)."""
    import json

    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "image" in info else None


def _output_names(images: list, done_dir=None) -> list[str]:
    """One output name per image, unique and the same on every run into the same --out.

    An image gets its file stem unless another image already owns that name (in this run, or by a
    done marker from an earlier run); then it gets ``stem-<8 hex digits of its absolute path>``.
    """
    import hashlib
    from pathlib import Path

    taken: dict[str, str] = {}
    names = []
    for path in images:
        key = str(Path(path).resolve())
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        for name in (path.stem, f"{path.stem}-{digest}"):
            owner = taken.get(name)
            if owner is None and done_dir is not None:
                info = _read_marker(done_dir / f"{name}.json")
                owner = None if info is None else info.get("source", str(Path(info["image"]).resolve()))
            if owner is None or owner == key:
                break
        taken[name] = key
        names.append(name)
    return names


@app.command("segment")
def segment_cmd(
    src: str = typer.Argument(..., help="An image, a directory of images or a glob pattern (quote it)."),
    model: str = typer.Option("sam-vit-b", "--model", help="Registry model (sam-vit-b, mobile-sam, otsu, ...) or run dir."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Checkpoint file; default: the weights cache."),
    points: list[str] = typer.Option(None, "--points", help="Point prompt x,y in pixels (repeat for several)."),
    labels: list[str] = typer.Option(None, "--labels", help="1 (foreground) / 0 (background) per point (repeat or 1,0)."),
    box: str = typer.Option(None, "--box", help="Box prompt x0,y0,x1,y1 in pixels."),
    everything: bool = typer.Option(False, "--everything", help="Segment everything (the default without prompts)."),
    points_per_side: int = typer.Option(None, "--points-per-side", help="Everything mode: grid points per side."),
    pred_iou_thresh: float = typer.Option(None, "--pred-iou-thresh", help="Everything mode: min predicted IoU (0.88)."),
    stability_thresh: float = typer.Option(
        None, "--stability-score-thresh", help="Everything mode: min stability score (0.95)."
    ),
    out: str = typer.Option("runs/segment", "--out", help="Output directory (re-running resumes)."),
    fmt: str = typer.Option("png", "--format", help="Mask format: png, coco, rle, polygons or npz."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write overlays/<image>.png."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    half: bool = typer.Option(False, "--half", help="float16 weights (CUDA only)."),
    backend: str = typer.Option("torch", "--backend", help="torch or onnxruntime (SAM: exported once to the cache)."),
    post: str = typer.Option(None, "--post", help="Post-processing, e.g. 'remove_small=64,fill_holes=64,crf'."),
    allow_random_weights: bool = typer.Option(
        False, "--allow-random-weights", help="Build random weights when no checkpoint is found (testing only)."
    ),
) -> None:
    """Segment images; writes masks/, overlays/, coco.json (format coco) and done/ markers under --out.

    Images already done in --out are skipped, so an interrupted run resumes. Unreadable images are
    reported and skipped; the exit code is 1 when any image failed.
    """
    import json
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from . import load
    from .io import list_images, read_image, write_bytes, write_image
    from .masks import SAVE_FORMATS, Masks
    from .registry import get_spec

    console = Console(stderr=True)
    fmt = fmt.lower()
    if fmt not in SAVE_FORMATS:
        fail(f"--format must be one of {', '.join(SAVE_FORMATS)}, got {fmt!r}.")
    point_list = _parse_xy_list(points, "--points", 2)
    box_list = _parse_xy_list([box] if box else None, "--box", 4)
    label_list = None
    if labels:
        try:
            label_list = [int(v) for item in labels for v in item.replace(",", " ").split()]
        except ValueError:
            fail(f"--labels must be integers (1 foreground, 0 background), got {' '.join(labels)!r}.")
    prompts = point_list is not None or box_list is not None
    if everything and prompts:
        fail("--everything cannot be combined with --points/--box; drop one of them.")
    if label_list is not None and point_list is None:
        fail("--labels needs --points.")
    amg_options = {
        key: value
        for key, value in (("points_per_side", points_per_side), ("pred_iou_thresh", pred_iou_thresh),
                           ("stability_score_thresh", stability_thresh))
        if value is not None
    }
    if amg_options and prompts:
        fail("--points-per-side / --pred-iou-thresh / --stability-score-thresh apply to everything mode only.")
    try:
        pipeline = None
        if post:
            from .postprocess import parse_pipeline

            pipeline = parse_pipeline(post)  # fail on a bad spec before any model is built
        images = list_images(src)
        load_kwargs: dict = {"device": device, "backend": backend}
        family = None
        if not Path(model).is_dir():
            family = get_spec(model).family
        if half:
            import torch

            if device == "cpu" or not torch.cuda.is_available():
                fail("--half needs a CUDA device; drop --half or use --device cuda on a GPU machine.")
            load_kwargs["dtype"] = torch.float16
        if family == "sam":
            load_kwargs["allow_random"] = allow_random_weights
        segmenter = load(model, checkpoint=checkpoint, **load_kwargs)
    except ImsegError as exc:
        fail(str(exc))
    seg_kwargs: dict = {}
    if prompts:
        seg_kwargs = {"points": point_list, "labels": label_list, "box": None if box_list is None else box_list[0]}
    elif amg_options:
        seg_kwargs = amg_options

    root = _out_dir(out)
    done_dir, mask_dir = root / "done", root / "masks"
    names = _output_names(images, done_dir)
    # a done marker counts only for the same job: same model, weights, prompts, format and post-processing
    settings = {"model": model, "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
                "backend": backend, "half": half, "format": fmt, "prompts": seg_kwargs, "post": post}
    settings = json.loads(json.dumps(settings))  # compared with what the markers read back
    rows, failed, skipped, redone = [], 0, 0, 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("segmenting", total=len(images))
        for path, stem in zip(images, names, strict=True):
            marker = done_dir / f"{stem}.json"
            overlay_path = root / "overlays" / f"{stem}.png"
            progress.update(task, description=f"segmenting {path.name}")
            earlier = _read_marker(marker)
            if earlier is not None and earlier.get("settings") == settings and (not overlay or overlay_path.is_file()):
                skipped += 1
                rows.append((path.name, "-", "-", "skipped (done)"))
                progress.advance(task)
                continue
            if earlier is not None:
                redone += 1
                marker.unlink()  # the old record no longer describes what masks/ will hold
            start = time.perf_counter()
            try:
                rgb = read_image(path)
                masks = segmenter.segment(rgb, **seg_kwargs)
                if pipeline is not None:
                    masks = pipeline(masks, image=rgb)
                masks.save(mask_dir if fmt != "png" else mask_dir / stem, format=fmt, stem=stem)
                if overlay:
                    write_image(overlay_path, masks.overlay(rgb))
            except (ImsegError, OSError, ValueError) as exc:  # OSError/ValueError: decoders on corrupt files
                failed += 1
                console.print(f"[red]failed[/red] {path}: {exc}")
                rows.append((path.name, "-", "-", "FAILED"))
                progress.advance(task)
                continue
            seconds = time.perf_counter() - start
            info = {"image": str(path), "source": str(path.resolve()), "stem": stem, "masks": len(masks),
                    "seconds": round(seconds, 3), "format": fmt, "height": int(rgb.shape[0]),
                    "width": int(rgb.shape[1]), "settings": settings}
            write_bytes(marker, json.dumps(info).encode())  # written last: the image is done
            rows.append((path.name, str(len(masks)), f"{seconds:.1f}", "ok"))
            progress.advance(task)
    if fmt == "coco":  # one COCO file for everything done so far in --out (this run and earlier ones)
        dataset: dict = {"images": [], "annotations": [], "categories": []}
        cats: dict = {}
        records = [_read_marker(marker) for marker in sorted(done_dir.glob("*.json"))]
        records = [info for info in records if info is not None and info.get("settings") == settings]
        file_names = [Path(info["image"]).name for info in records]
        for image_id, info in enumerate(records, start=1):
            name = Path(info["image"]).name
            part = Masks.load(mask_dir / f"{info['stem']}.json").to_coco_dataset(
                file_name=name if file_names.count(name) == 1 else info["image"], image_id=image_id,
                start_id=len(dataset["annotations"]) + 1)
            dataset["images"] += part["images"]
            dataset["annotations"] += part["annotations"]
            cats.update({c["id"]: c for c in part["categories"]})
        dataset["categories"] = [cats[k] for k in sorted(cats)] or [{"id": 1, "name": "object"}]
        write_bytes(root / "coco.json", json.dumps(dataset).encode())
    table = Table(title=f"imseg segment -> {root}")
    for col in ("image", "masks", "seconds", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    done = len(images) - failed - skipped
    if redone:
        typer.echo(f"{redone} image(s) done earlier in {root} with other settings were segmented again.")
    typer.echo(f"{done} segmented, {skipped} skipped (already done), {failed} failed; outputs in {root}")
    if failed:
        raise typer.Exit(1)


# ============================================================================ train / val / predict (issue 4)
@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: str = typer.Option(None, "--data", help="Dataset YAML or directory (folder pairs, VOC, COCO, labelme)."),
    model: str = typer.Option("unet", "--model", help="Architecture: unet, unet++, fpn, deeplabv3+, segformer, ..."),
    encoder: str = typer.Option("resnet34", "--encoder", help="smp encoder (resnet18/34/50, efficientnet-b0, ...) or tu-<timm>."),
    weights: str = typer.Option("none", "--weights", help="Encoder weights: none or imagenet (needs a download)."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 50; with --resume: the run's own)."),
    imgsz: int = typer.Option(512, "--imgsz", help="Training size in pixels (multiple of 32)."),
    batch: int = typer.Option(8, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adam or sgd."),
    scheduler: str = typer.Option("cosine", "--scheduler", help="cosine, poly, plateau or none."),
    warmup: float = typer.Option(1.0, "--warmup", help="Linear warm-up in epochs."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (fp16 on GPU, bf16 on CPU)."),
    patience: int = typer.Option(10, "--patience", help="Early stopping on val mIoU (0 = off)."),
    workers: int = typer.Option(2, "--workers"),
    seed: int = typer.Option(0, "--seed"),
    name: str = typer.Option("exp", "--name"),
    project: str = typer.Option("runs/train", "--project"),
    loss: str = typer.Option("ce+dice", "--loss", help="e.g. ce, ce+dice, 0.5*focal+lovasz."),
    augment: str = typer.Option("default", "--augment", help="default, none, or a YAML/JSON mapping."),
    cache: bool = typer.Option(False, "--cache", help="Keep decoded images in memory."),
    devices: str = typer.Option("1", "--devices", help="Devices per node (an int or auto)."),
    nodes: int = typer.Option(1, "--nodes"),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto, cpu or gpu."),
    ema: float = typer.Option(0.0, "--ema", help="Validate and save a moving average of the weights with this decay "
                              "(e.g. 0.995; 0 = off)."),
    save_period: int = typer.Option(1, "--save-period", help="Write the resumable weights/last.ckpt every N epochs "
                                    "(and at the last)."),
    resume: str = typer.Option(None, "--resume", help="Run directory (or weights/last.ckpt) to continue."),
    init: str = typer.Option(None, "--init", help="Start from these weights (a run directory or its best.pt/last.pt): "
                             "fine-tune, e.g. at a larger --imgsz; --model/--encoder must be the checkpoint's."),
) -> None:
    """Train a semantic segmentation model; writes runs/train/NAME[N]/ (weights, metrics.csv, plots)."""
    import yaml

    from .semantic.train import train

    if resume:
        sources = {name: getattr(ctx.get_parameter_source(name), "name", "") for name in ctx.params}
        given = sorted(f"--{name.replace('_', '-')}" for name, source in sources.items()
                       if name not in ("resume", "epochs") and source == "COMMANDLINE")
        if given:
            fail(f"--resume continues {resume} with the settings in its config.yaml; {', '.join(given)} would be "
                 f"ignored. Drop them (only --epochs may be raised), or start a new run with --init {resume}.")
    try:
        aug = augment if augment in ("default", "none") else yaml.safe_load(augment)
        options = dict(
            data=data, model=model, encoder=encoder, weights=None if weights.lower() == "none" else weights,
            epochs=50 if epochs is None else epochs, imgsz=imgsz, batch=batch, lr=lr, optimizer=optimizer,
            scheduler=scheduler, warmup=warmup,
            amp=amp, patience=patience, workers=workers, seed=seed, name=name, project=project, loss=loss, augment=aug,
            cache=cache, devices=int(devices) if devices.isdigit() else devices, nodes=nodes, accelerator=accelerator,
            ema=ema, save_period=save_period, init=init,
        )
        if resume:
            result = train(resume=resume, **({"epochs": epochs} if epochs is not None else {}))
        else:
            result = train(options)
    except ImsegError as exc:
        fail(str(exc))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    typer.echo(f"best: {metrics}\nresults saved to {result.run_dir}")


def _per_class_table(title: str, class_names: list[str], metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("class", "IoU", "Dice", "precision", "recall"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for i, cls in enumerate(class_names):
        table.add_row(cls, *(f"{float(metrics[k][i]):.4f}" for k in ("iou", "dice", "precision", "recall")))
    table.add_row("mean", *(f"{metrics[k]:.4f}" for k in ("miou", "mdice", "mprecision", "mrecall")), style="bold")
    Console().print(table)
    typer.echo(f"pixel accuracy {metrics['pixel_accuracy']:.4f}")


@app.command("val")
def val_cmd(
    run: str = typer.Option(..., "--run", help="Run directory from imseg train (runs/train/exp)."),
    data: str = typer.Option(None, "--data", help="Dataset YAML/dir; default: the run's own dataset."),
    split: str = typer.Option("val", "--split", help="val or test (or train)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="best, last or a .pt path (default best)."),
    device: str = typer.Option("auto", "--device"),
    tta: bool = typer.Option(False, "--tta", help="Flip test-time augmentation (the flips the run trained with)."),
    scales: str = typer.Option(
        "1", "--scales",
        help="Multi-scale test-time augmentation: comma-separated factors of the inference size, e.g. 1,1.2,1.4 "
             "(predictions at each size, scaled back and averaged; choose them on a validation split)."),
    resize: bool = typer.Option(
        None, "--resize/--native",
        help="--resize: scale each image's longer side to the run's imgsz, as training validated (the default); "
             "--native: keep native resolution, sliding imgsz tiles (runs trained on native-size crops).",
        show_default=False),
) -> None:
    """Evaluate a run at full resolution: per-class IoU/Dice table and confusion_matrix.png in the run dir."""
    from pathlib import Path

    import yaml

    from .semantic.data import build_datasets, load_data_config
    from .semantic.infer import load_run, parse_scales
    from .semantic.train import plot_confusion_matrix

    try:
        segmenter = load_run(run, checkpoint=checkpoint, device=device, tta=tta, resize=resize,
                             scales=parse_scales(scales))
        source = data
        if source is None:
            cfg_file = Path(run) / "config.yaml"
            saved = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
            source = saved.get("data")
            if not isinstance(source, dict | str) or source == "<in-memory>":
                fail(f"{run}: the run does not record its dataset; pass --data data.yaml")
        data_config = load_data_config(source)
        if list(data_config.names) != list(segmenter.class_names):
            fail(f"the dataset's classes {list(data_config.names)} are not the run's {list(segmenter.class_names)}; "
                 f"evaluate on data labelled with the run's classes (in that order).")
        datasets = build_datasets(data_config, imgsz=None, augment="none")
        if split not in datasets:
            fail(f"the dataset has no {split!r} split; it has {', '.join(datasets)}")
        cm = segmenter.evaluate(datasets[split])
    except ImsegError as exc:
        fail(str(exc))
    metrics = cm.compute()
    _per_class_table(f"{run} on {split} ({len(datasets[split])} images)", segmenter.class_names, metrics)
    out = plot_confusion_matrix(cm.matrix.cpu().numpy(), segmenter.class_names, Path(run) / f"confusion_matrix_{split}.png",
                                title=f"{split} split")
    typer.echo(f"confusion matrix: {out}")


@app.command("predict")
def predict_cmd(
    source: str = typer.Argument(..., help="Image file, directory or glob."),
    run: str = typer.Option(..., "--run", help="Run directory from imseg train."),
    out: str = typer.Option("runs/predict", "--out", help="Output directory: NAME.png label maps + NAME_overlay.png."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="best, last or a .pt path (default best)."),
    device: str = typer.Option("auto", "--device"),
    tta: bool = typer.Option(False, "--tta", help="Flip test-time augmentation (the flips the run trained with)."),
    scales: str = typer.Option(
        "1", "--scales",
        help="Multi-scale test-time augmentation: comma-separated factors of the inference size, e.g. 1,1.2,1.4 "
             "(predictions at each size, scaled back and averaged; choose them on a validation split)."),
    overlap: float = typer.Option(0.25, "--overlap", help="Tile overlap for images larger than imgsz."),
    resize: bool = typer.Option(
        None, "--resize/--native",
        help="--resize: scale each image's longer side to the run's imgsz, as training validated (the default); "
             "--native: keep native resolution, sliding imgsz tiles (runs trained on native-size crops).",
        show_default=False),
) -> None:
    """Predict label maps (PNG, pixel = class id) and colour overlays for images."""

    import numpy as np

    from .io import list_images, read_image, write_image
    from .semantic.infer import load_run, parse_scales
    from .semantic.train import colorize

    try:
        segmenter = load_run(run, checkpoint=checkpoint, device=device, tta=tta, overlap=overlap, resize=resize,
                             scales=parse_scales(scales))
        paths = list_images(source)
    except ImsegError as exc:
        fail(str(exc))
    out_dir = _out_dir(out)
    failed = 0
    for path, name in zip(paths, _output_names(paths), strict=True):  # same stem twice: stem-<hash> for the second
        try:
            rgb = read_image(path)
            labels = segmenter.predict(rgb)
            dtype = np.uint8 if segmenter.num_classes <= 256 else np.uint16
            write_image(out_dir / f"{name}.png", labels.astype(dtype))
            colours = colorize(labels, segmenter.num_classes)
            blend = np.where((labels > 0)[..., None], (0.5 * rgb + 0.5 * colours), rgb).round().astype(np.uint8)
            write_image(out_dir / f"{name}_overlay.png", blend)
        except (ImsegError, OSError, ValueError) as exc:  # one bad file does not stop the others
            failed += 1
            typer.echo(f"failed {path}: {exc}", err=True)
    typer.echo(f"{len(paths) - failed} image(s) -> {out_dir}" + (f"; {failed} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


# ============================================================================ classical (issue 5)
@app.command("classical")
def classical_cmd(
    source: str = typer.Argument(None, help="Image file, directory or glob."),
    method: str = typer.Option("otsu", "--method", "-m", help="Classical method (see --list)."),
    out: str = typer.Option("runs/classical", "--out", help="Output directory: one label-map PNG per image."),
    param: list[str] = typer.Option([], "--param", "-p", help="Method parameter KEY=VALUE (repeatable), e.g. sigma=1."),
    post: str = typer.Option("", "--post", help="Post-processing, e.g. 'remove_small=64,fill_holes=64,crf'."),
    list_methods: bool = typer.Option(False, "--list", help="List the methods with when to use each, then exit."),
) -> None:
    """Segment images with a classical method (no weights); one label map PNG per image."""
    from .registry import list_models

    if list_methods:
        specs = list_models("classical")
        width = max(len(s.name) for s in specs)
        for spec in specs:
            typer.echo(f"{spec.name:<{width}}  {spec.summary}")
        return
    if source is None:
        fail("give an image SOURCE (file, directory or glob), or --list to see the methods.")
    import json

    import numpy as np

    from .io import list_images, read_image, write_image
    from .postprocess import parse_pipeline
    from .registry import load

    params = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r}: write KEY=VALUE, e.g. --param sigma=1.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    try:
        pipeline = parse_pipeline(post) if post else None
        segmenter = load(method, **params)
        files = list_images(source)
    except ImsegError as exc:
        fail(str(exc))
    out_dir = _out_dir(out)
    failed = 0
    for path, name in zip(files, _output_names(files), strict=True):
        try:
            masks = segmenter.segment(path)
            if pipeline is not None:
                masks = pipeline(masks, image=read_image(path))
            labels = masks.label_map()
            target = write_image(out_dir / f"{name}.png", labels.astype(np.uint16 if labels.max() > 255 else np.uint8))
        except (ImsegError, OSError, ValueError) as exc:  # one bad file does not stop the others
            failed += 1
            typer.echo(f"failed {path}: {exc}", err=True)
            continue
        typer.echo(f"{path}: {len(masks)} mask(s) -> {target}")
    if failed:
        typer.echo(f"{failed} of {len(files)} image(s) failed; the others were written to {out_dir}.", err=True)
        raise typer.Exit(1)


# ============================================================================ export (issue 6)
@app.command("export")
def export_cmd(
    model: str = typer.Option(None, "--model", "-m", help="SAM model to export: sam-vit-b, sam-vit-l, sam-vit-h, mobile-sam."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="SAM checkpoint (.pth/.pt); default: the cached weights."),
    run: str = typer.Option(None, "--run", help="Training run directory to export (runs/train/exp)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript (torchscript: runs only)."),
    out: str = typer.Option(None, "--out", "-o", help="Output directory (default: RUN/export or runs/export/MODEL)."),
    int8: bool = typer.Option(False, "--int8", help="Also quantize to int8 (dynamic) and report size/accuracy change."),
    calibration: str = typer.Option(None, "--calibration", help="Image folder for static int8 quantization."),
    raw_input: bool = typer.Option(False, "--raw-input", help="SAM encoder takes a uint8 HxWx3 image (preprocessing in graph)."),
    single_mask: bool = typer.Option(False, "--single-mask", help="SAM decoder returns only the best mask (official option)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)."),
    simplify: bool = typer.Option(False, "--simplify", help="Run onnxsim when installed."),
) -> None:
    """Export SAM (encoder.onnx + decoder.onnx) or a training run (ONNX / TorchScript), optionally int8."""
    import json
    from pathlib import Path

    from .export import export_model

    if out is None:
        out = str(Path(run) / "export") if run else str(Path("runs") / "export" / (model or "model"))
    try:
        manifest = export_model(model, run=run, checkpoint=checkpoint, out=out, format=format, int8=int8,
                                calibration=calibration, raw_input=raw_input, single_mask=single_mask, opset=opset,
                                simplify=simplify)
    except ImsegError as exc:
        fail(str(exc))
    info = json.loads(Path(manifest).read_text())
    for role, name in info["files"].items():
        typer.echo(f"{role}: {Path(manifest).parent / name}")
    report = info.get("quantization")
    if report:
        typer.echo(f"int8 ({report['mode']}): {report['bytes_int8'] / 1e6:.1f} MB vs {report['bytes_fp32'] / 1e6:.1f} MB fp32 "
                   f"({100 * report['size_ratio']:.0f}%); accuracy vs fp32: {json.dumps(report['accuracy'])}")
    typer.echo(f"manifest: {manifest}")


# ============================================================================ serve (issue 7)


@app.command("serve")
def serve(
    model: str = typer.Option("mobile-sam", "--model", "-m", help="SAM model: mobile-sam, sam-vit-b, sam-vit-l, sam-vit-h."),
    checkpoint: str = typer.Option(None, "--checkpoint", "-c", help="Checkpoint path (default: the weights cache)."),
    host: str = typer.Option("127.0.0.1", help="Bind address. Loopback by default; use --api-key when exposing it."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="IMSEG_API_KEY", help="Require this X-API-Key header on /v1 and /metrics."
    ),
    cors: list[str] = typer.Option([], "--cors", help="Allowed CORS origin (repeatable). CORS is off by default."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MiB."),
    max_pixels: int = typer.Option(40_000_000, help="Largest accepted image, pixels (checked from the header)."),
    cache_items: int = typer.Option(32, help="Embeddings kept in the LRU cache."),
    cache_mb: float = typer.Option(512.0, help="Memory bound of the embedding cache, MiB."),
    concurrency: int = typer.Option(1, help="Model calls run at once (each worker shares the weights)."),
    queue_timeout: float = typer.Option(30.0, help="Seconds a request waits for the model before 503 + Retry-After."),
    request_timeout: float = typer.Option(120.0, help="Seconds one model call may take before 504."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, mps."),
) -> None:
    """REST API + click-to-segment web page (http://HOST:PORT/); OpenAPI docs at /docs."""
    from .errors import require

    require("fastapi", "serve", "imseg serve")
    require("uvicorn", "serve", "imseg serve")
    import uvicorn

    from .registry import get_spec, load
    from .serve.app import ServeSettings, create_app

    try:
        if get_spec(model).family != "sam":
            fail(f"--model {model!r} is not a Segment Anything model; the server needs mobile-sam or sam-vit-b/l/h.")
        settings = ServeSettings(
            max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, cache_items=cache_items,
            cache_bytes=int(cache_mb * 1024 * 1024), concurrency=concurrency, queue_timeout=queue_timeout,
            request_timeout=request_timeout, api_key=api_key or None, cors_origins=list(cors),
        )
        segmenter = load(model, checkpoint=checkpoint, device=device)
        application = create_app(segmenter, settings)
    except ImsegError as exc:
        fail(str(exc))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.secho(f"warning: serving on {host} without --api-key: anyone who can reach it can use the model.",
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(f"imseg serve: {model} on http://{host}:{port}/ (API docs: /docs)")
    uvicorn.run(application, host=host, port=port, log_level="info", timeout_keep_alive=5,
                limit_concurrency=max(64, settings.max_queue + 16), server_header=False)


def main() -> None:
    try:
        app()
    except ImsegError as exc:  # last resort: never a bare traceback for our own errors
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
