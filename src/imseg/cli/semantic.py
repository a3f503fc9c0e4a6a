"""`imseg train`, `imseg val` and `imseg predict`: semantic segmentation runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from ..errors import ImsegError
from .common import (
    ADDRESS,
    BATCH_SIZE,
    CPUS_PER_WORKER,
    ENGINE,
    GPUS_PER_WORKER,
    WORKERS,
    app,
    fail,
    make_executor,
    out_dir,
    run_and_exit,
)


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: str = typer.Option(None, "--data", help="Dataset YAML or directory (folder pairs, VOC, COCO, labelme)."),
    task: str = typer.Option("semantic", "--task", help="semantic (a class per pixel) or instance (Mask R-CNN: a mask "
                             "per object; data in any format `imseg convert` reads)."),
    model: str = typer.Option(None, "--model", help="Architecture: unet, unet++, fpn, deeplabv3+, segformer, ... "
                              "(default unet); --task instance: maskrcnn or unet-watershed (a contour-aware "
                              "U-Net, lighter on CPUs)."),
    backbone: str = typer.Option("resnet18", "--backbone", help="--task instance: resnet18/34/50 or mobilenet_v3."),
    encoder: str = typer.Option("resnet34", "--encoder", help="smp encoder (resnet18/34/50, efficientnet-b0, ...) or tu-<timm>."),
    weights: str = typer.Option("none", "--weights", help="Encoder weights: none or imagenet (needs a download)."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 50; with --resume: the run's own)."),
    imgsz: int = typer.Option(512, "--imgsz", help="Training size in pixels (multiple of 32)."),
    batch: int = typer.Option(8, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adam or sgd."),
    scheduler: str = typer.Option("cosine", "--scheduler", help="cosine, poly, plateau or none."),
    warmup: float = typer.Option(1.0, "--warmup", help="Linear warm-up in epochs."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="Mixed precision (fp16 on GPU, bf16 on "
                                                             "CPU); under --time it is on where the hardware "
                                                             "has native half precision."),
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
    teacher: str = typer.Option(None, "--teacher", help="Distil from this trained semantic run (directory or best.pt): "
                                "its predictions on each augmented batch are added to the loss (a frozen teacher)."),
    distill: str = typer.Option("kd", "--distill", help="With --teacher: kd (pixel-wise KL of the class "
                                "distributions) or cwd (channel-wise: KL of each class map's spatial distribution)."),
    distill_weight: float = typer.Option(1.0, "--distill-weight", help="Weight of the distillation loss."),
    distill_temperature: float = typer.Option(1.0, "--distill-temperature", help="Softmax temperature T of the "
                                              "distillation loss (scaled by T^2); cwd is often used with 4."),
    distill_cache: bool = typer.Option(False, "--distill-cache", help="With --teacher: run the teacher before "
                                       "training on --distill-views augmented views of each training image and keep "
                                       "its logits in memory; epochs then cycle through those views."),
    distill_views: int = typer.Option(8, "--distill-views", help="Augmented views per image with --distill-cache "
                                      "(epochs before the views repeat; at most --epochs are made)."),
    logger: str = typer.Option("csv", "--logger", help="csv (metrics.csv, always written) and/or tensorboard "
                               "(RUN/tensorboard events: losses, metrics, lr, validation overlays), e.g. csv,tensorboard."),
    time: float = typer.Option(None, "--time", help="Time budget in minutes: plan the options not given from the "
                               "dataset and this machine, train within the budget (a wall-clock stop that saves and "
                               "validates the last state), choose test-time augmentation on val. With --resume of a planned run: "
                               "a new budget for the whole run, the time it used so far included."),
    plan: bool = typer.Option(False, "--plan", help="With --time: print the plan and stop."),
) -> None:
    """Train a semantic segmentation model; writes runs/train/NAME[N]/ (weights, metrics.csv, plots).

    `imseg train --data DATA --time MINUTES` plans --model, --encoder, --imgsz, --epochs, --batch, --lr, \
--optimizer, --scheduler, --warmup, --patience, --loss, --augment, --cache, --workers, --ema, --save-period and --amp \
(plus encoder depth, decoder widths, class weights, a second stage at a larger size and test-time augmentation) \
from the data and a timing probe; every one of them given explicitly wins. The plan and its reasons are printed \
first and recorded in the run's config.yaml. With --task instance, --time plans --model, --encoder or --backbone, \
--imgsz, --batch, --lr and --epochs from the objects' sizes, counts and contacts (and mixed precision for the U-Net).
    """
    import yaml

    if task not in ("semantic", "instance"):
        fail(f"--task must be semantic or instance, got {task!r}.")
    if task == "instance":
        _train_instance(ctx, data, model, backbone, epochs, imgsz, batch, lr, workers, seed, name, project, resume,
                        accelerator, time, plan)
        return
    if plan and time is None:
        fail("--plan prints the plan for a time budget: give --time MINUTES too.")
    if time is not None and not resume:
        _train_planned(ctx, data, time, plan)
        return
    model = model or "unet"
    from ..semantic.ddp import parse_devices
    from ..semantic.train import train

    if resume:
        sources = {name: getattr(ctx.get_parameter_source(name), "name", "") for name in ctx.params}
        given = sorted(f"--{name.replace('_', '-')}" for name, source in sources.items()
                       if name not in ("resume", "epochs", "time") and source == "COMMANDLINE")
        if given:
            fail(f"--resume continues {resume} with the settings in its config.yaml; {', '.join(given)} would be "
                 f"ignored. Drop them (only --epochs may be raised), or start a new run with --init {resume}.")
        from ..semantic.plan.resume import planned_run

        if planned_run(resume) is not None:
            _resume_planned(resume, time, epochs)
            return
    try:
        aug = augment if augment in ("default", "none") else yaml.safe_load(augment)
        options = dict(
            data=data, model=model, encoder=encoder, weights=None if weights.lower() == "none" else weights,
            epochs=50 if epochs is None else epochs, imgsz=imgsz, batch=batch, lr=lr, optimizer=optimizer,
            scheduler=scheduler, warmup=warmup,
            amp=amp, patience=patience, workers=workers, seed=seed, name=name, project=project, loss=loss, augment=aug,
            cache=cache, devices=parse_devices(devices), nodes=nodes, accelerator=accelerator,
            ema=ema, save_period=save_period, init=init, teacher=teacher, distill=distill,
            distill_weight=distill_weight, distill_temperature=distill_temperature, distill_cache=distill_cache,
            distill_views=distill_views, logger=logger,
        )
        if resume:
            result = train(resume=resume, **({"epochs": epochs} if epochs is not None else {}),
                           **({"time": time} if time is not None else {}))
        else:
            result = train(options)
    except ImsegError as exc:
        fail(str(exc))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    typer.echo(f"best: {metrics}\nresults saved to {result.run_dir}")


def _resume_planned(resume: str, minutes: float | None, epochs: int | None) -> None:
    """``imseg train --resume RUN`` of a planned run: the rest of its plan, within its budget (``--time`` replaces
    the budget; the time the run used so far counts against it)."""
    from ..semantic.plan.resume import resume_planned

    try:
        _, result = resume_planned(resume, minutes, echo=typer.echo, **({"epochs": epochs} if epochs is not None else {}))
    except ImsegError as exc:
        fail(str(exc))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    typer.echo(f"best: {metrics}\nresults saved to {result.run_dir}")


#: train_cmd parameters the planner chooses unless given (the rest pass through unchanged)
_PLANNED = ("model", "encoder", "imgsz", "epochs", "batch", "lr", "optimizer", "scheduler", "warmup", "patience",
            "loss", "augment", "cache", "workers", "ema", "save_period", "amp")
_PASSED = ("weights", "seed", "name", "project", "devices", "nodes", "accelerator", "init", "teacher", "distill",
           "distill_weight", "distill_temperature", "distill_cache", "distill_views", "logger")


def _train_planned(ctx: typer.Context, data: str | None, minutes: float, plan_only: bool) -> None:
    """``imseg train --time``: the plan for the options not given, printed, then trained (unless ``--plan``)."""
    import yaml

    from ..semantic.ddp import parse_devices
    from ..semantic.plan.runner import plan_and_train

    if data is None:
        fail("--time plans from the dataset: give --data DATA (dataset YAML or directory).")
    if minutes <= 0:
        fail(f"--time is a budget in minutes > 0, got {minutes}.")
    params = ctx.params
    given = {k: params[k] for k in _PLANNED if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    if isinstance(given.get("augment"), str) and given["augment"] not in ("default", "none"):
        given["augment"] = yaml.safe_load(given["augment"])
    fixed = {k: params[k] for k in _PASSED}
    fixed["weights"] = None if str(fixed["weights"]).lower() == "none" else fixed["weights"]
    fixed["devices"] = parse_devices(str(fixed["devices"]))
    try:
        _, result = plan_and_train(data, minutes, given, fixed, plan_only=plan_only, echo=typer.echo)
    except ImsegError as exc:
        fail(str(exc))
    if result is not None:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        typer.echo(f"best: {metrics}\nresults saved to {result.run_dir}")


_INSTANCE_OPTIONS = ("data", "task", "model", "backbone", "epochs", "imgsz", "batch", "lr", "workers", "seed", "name",
                     "project", "resume", "accelerator", "time", "plan")


def _train_instance(ctx: typer.Context, data, model, backbone, epochs, imgsz, batch, lr, workers, seed, name, project,
                    resume, accelerator, minutes=None, plan_only=False) -> None:
    """``imseg train --task instance``: Mask R-CNN or the contour-aware U-Net on an instance data set."""
    from ..instance.train import train_command

    given = {key for key in ctx.params if getattr(ctx.get_parameter_source(key), "name", "") == "COMMANDLINE"}
    allowed = {*_INSTANCE_OPTIONS, *(("encoder",) if minutes is not None else ())}  # the planned U-Net's encoder
    unused = sorted(f"--{key.replace('_', '-')}" for key in given - allowed)
    if unused:
        fail(f"{', '.join(unused)} apply to semantic training only; --task instance takes --data, --model, --backbone, "
             f"--epochs, --imgsz, --batch, --lr, --workers, --seed, --name, --project, --resume, --accelerator, "
             f"--time and --plan (and --encoder with --time).")
    if data is None and resume is None:
        fail("--task instance needs --data DATA (COCO JSON, labelme, YOLO-seg, VOC, label images or DSB folders).")
    if plan_only and minutes is None:
        fail("--plan prints the plan for a time budget: give --time MINUTES too.")
    if minutes is not None:
        _train_instance_planned(ctx, data, minutes, plan_only, given, resume)
        return
    model = model or "maskrcnn"
    try:
        run_dir = train_command(data, model=model, backbone=backbone, epochs=50 if epochs is None else epochs,
                                imgsz=imgsz, batch=batch, lr=lr, workers=workers, seed=seed, name=name, project=project,
                                resume=resume, accelerator=accelerator)
    except ImsegError as exc:
        fail(str(exc))
    typer.echo(f"results saved to {run_dir}")


def _train_instance_planned(ctx: typer.Context, data, minutes: float, plan_only: bool, given: set[str],
                            resume) -> None:
    """``imseg train --task instance --time``: plan the options not given, print the plan, train it."""
    from ..instance.planner import plan_and_train_instance

    if resume is not None:
        fail("--resume continues a run with its own settings; drop --time.")
    if minutes <= 0:
        fail(f"--time is a budget in minutes > 0, got {minutes}.")
    params = ctx.params
    wanted = {k: params[k] for k in ("model", "encoder", "backbone", "epochs", "imgsz", "batch", "lr") if k in given}
    # loader workers compete with the step for a small CPU's cores: the models' own default (0) unless given
    fixed = {k: params[k] for k in ("workers", "seed", "name", "project", "accelerator") if k != "workers" or k in given}
    try:
        run_dir = plan_and_train_instance(data, minutes, wanted, fixed, plan_only=plan_only, echo=typer.echo)
    except ImsegError as exc:
        fail(str(exc))
    if run_dir is not None:
        typer.echo(f"results saved to {run_dir}")


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


def _run_kind(run: str) -> str:
    """finetune, instance or semantic: the task a run's config.yaml records (anything else is left to the
    semantic loader, which says what it cannot read)."""
    from ..finetune.run import is_finetune_run
    from ..instance.infer import is_instance_run

    if is_finetune_run(run):
        return "finetune"
    return "instance" if is_instance_run(run) else "semantic"


def _refuse_options(ctx: typer.Context, names: tuple[str, ...], instance: bool, kind: str | None = None) -> None:
    """Fail on options of the other kind of run (given on the command line), rather than ignore them.
    ``instance``: the run is not semantic (``kind`` names it when it is not an instance run)."""
    flags = {"fmt": "--format"}
    given = sorted(flags.get(n, f"--{n.replace('_', '-')}") for n in names
                   if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE")
    if given:
        kinds = ("semantic", kind or "an instance (Mask R-CNN)") if instance else ("instance", "a semantic")
        fail(f"{', '.join(given)} apply to {kinds[0]} runs only; {ctx.params.get('run')} is {kinds[1]} run.")


#: val/predict options of one kind of run, refused for the others
_SEMANTIC_VAL = ("tta", "scales", "resize")
_SEMANTIC_PREDICT = ("tta", "scales", "overlap", "resize")
_INSTANCE_PREDICT = ("fmt", "conf", "refine", "sam_checkpoint", "sam_model")


def _val_finetune(ctx: typer.Context, run: str, data: str | None, split: str, checkpoint: str | None, device: str,
                  **_semantic) -> None:
    _refuse_options(ctx, _SEMANTIC_VAL, instance=True, kind="a fine-tuning (SAM)")
    from ..finetune.evaluate import evaluate_run, print_table

    try:
        results = evaluate_run(run, split=split, data=data, weights=checkpoint or "best", device=device)
    except ImsegError as exc:
        fail(str(exc))
    print_table(run, split, results)


def _val_instance(ctx: typer.Context, run: str, data: str | None, split: str, checkpoint: str | None, device: str,
                  **_semantic) -> None:
    _refuse_options(ctx, _SEMANTIC_VAL, instance=True)
    from ..instance.evaluate import evaluation_set, print_tables
    from ..instance.infer import load_instance_run

    try:
        weights = checkpoint or "best"
        segmenter = load_instance_run(run if weights in ("best", "last") else weights,
                                      weights=weights if weights in ("best", "last") else "best", device=device)
        dataset = evaluation_set(run, data, split)
        metrics = segmenter.evaluate(dataset)
    except ImsegError as exc:
        fail(str(exc))
    where = "--data" if data is not None else split
    print_tables(f"{run} on {where} ({len(dataset)} images)", metrics, segmenter.class_names)


def _val_semantic(ctx: typer.Context, run: str, data: str | None, split: str, checkpoint: str | None, device: str,
                  tta: bool | None, scales: str | None, resize: bool | None) -> None:
    from pathlib import Path

    import yaml

    from ..semantic.data import build_datasets, load_data_config
    from ..semantic.infer import load_run, parse_scales
    from ..semantic.train import plot_confusion_matrix

    try:
        segmenter = load_run(run, checkpoint=checkpoint, device=device, tta=tta, resize=resize,
                             scales=None if scales is None else parse_scales(scales))
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


def _predict_instance(ctx: typer.Context, run: str, checkpoint: str | None, device: str, fmt: str,
                      conf: float | None, refine: str | None, sam_checkpoint: str | None, sam_model: str, **_semantic):
    """The batch job of an instance run (its options checked first)."""
    _refuse_options(ctx, _SEMANTIC_PREDICT, instance=True)
    from ..jobs import build_instance_predict_job

    return build_instance_predict_job(run, checkpoint=checkpoint, device=device, fmt=fmt, score_threshold=conf,
                                      refine=refine, sam_checkpoint=sam_checkpoint, sam_model=sam_model)


def _predict_semantic(ctx: typer.Context, run: str, checkpoint: str | None, device: str, tta: bool | None,
                      scales: str | None, overlap: float, resize: bool | None, **_instance):
    """The batch job of a semantic run (its options checked first)."""
    _refuse_options(ctx, _INSTANCE_PREDICT, instance=False)
    from ..jobs import build_predict_job

    return build_predict_job(run, checkpoint=checkpoint, device=device, tta=tta, overlap=overlap, resize=resize,
                             scales=scales)


@dataclass(frozen=True)
class _Handlers:
    """What `imseg val` and `imseg predict` do with one kind of run."""

    val: Callable[..., None]  #: checks the options, evaluates, prints
    predict: Callable[..., Any]  #: checks the options, returns the batch job
    resume_outputs: bool = False  #: predict's outputs resume from done markers, as `imseg segment`'s do


_HANDLERS = {
    "semantic": _Handlers(_val_semantic, _predict_semantic),
    # instance outputs resume like `imseg segment` (coco.json is built from the done markers)
    "instance": _Handlers(_val_instance, _predict_instance, resume_outputs=True),
    # no predict of its own: the semantic loader answers for a fine-tuning run
    "finetune": _Handlers(_val_finetune, _predict_semantic),
}


@app.command("val")
def val_cmd(
    ctx: typer.Context,
    run: str = typer.Option(..., "--run", help="Run directory from imseg train (runs/train/exp)."),
    data: str = typer.Option(None, "--data", help="Dataset YAML/dir; default: the run's own dataset."),
    split: str = typer.Option("val", "--split", help="val or test (or train)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="best, last or a .pt path (default best)."),
    device: str = typer.Option("auto", "--device"),
    tta: bool = typer.Option(
        None, "--tta/--no-tta", show_default=False,
        help="Flip test-time augmentation (the flips the run trained with); default: the run's own choice (a run "
             "trained with --time chose it on its validation split), else off."),
    scales: str = typer.Option(
        None, "--scales", show_default=False,
        help="Multi-scale test-time augmentation: comma-separated factors of the inference size, e.g. 1,1.2,1.4 "
             "(predictions at each size, scaled back and averaged); default: the run's own choice, else 1."),
    resize: bool = typer.Option(
        None, "--resize/--native",
        help="--resize: scale each image's longer side to the run's imgsz, as training validated (the default); "
             "--native: keep native resolution, sliding imgsz tiles (runs trained on native-size crops).",
        show_default=False),
) -> None:
    """Evaluate a run at full resolution: per-class IoU/Dice table and confusion_matrix.png in the run dir;
    for an instance run, COCO box/mask AP (AP50, AP75, per class) and the DSB 2018 score with F1 at IoU 0.5;
    for a fine-tuning run, box-prompt mIoU, mIoU after 1/3/5 clicks and NoC@85/90, before and after."""
    _HANDLERS[_run_kind(run)].val(ctx, run=run, data=data, split=split, checkpoint=checkpoint, device=device,
                                  tta=tta, scales=scales, resize=resize)


@app.command("predict")
def predict_cmd(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Image file, directory, glob or a .txt list of image paths."),
    run: str = typer.Option(..., "--run", help="Run directory from imseg train."),
    out: str = typer.Option("runs/predict", "--out", help="Output directory: NAME.png label maps + NAME_overlay.png."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="best, last or a .pt path (default best)."),
    device: str = typer.Option("auto", "--device"),
    tta: bool = typer.Option(
        None, "--tta/--no-tta", show_default=False,
        help="Flip test-time augmentation (the flips the run trained with); default: the run's own choice (a run "
             "trained with --time chose it on its validation split), else off."),
    scales: str = typer.Option(
        None, "--scales", show_default=False,
        help="Multi-scale test-time augmentation: comma-separated factors of the inference size, e.g. 1,1.2,1.4 "
             "(predictions at each size, scaled back and averaged); default: the run's own choice, else 1."),
    overlap: float = typer.Option(0.25, "--overlap", help="Tile overlap for images larger than imgsz."),
    resize: bool = typer.Option(
        None, "--resize/--native",
        help="--resize: scale each image's longer side to the run's imgsz, as training validated (the default); "
             "--native: keep native resolution, sliding imgsz tiles (runs trained on native-size crops).",
        show_default=False),
    fmt: str = typer.Option("coco", "--format", help="Instance runs: masks as coco (one coco.json), png, rle, "
                            "polygons or npz."),
    conf: float = typer.Option(None, "--conf", help="Instance runs: lowest detection score kept (default: the run's)."),
    refine: str = typer.Option(None, "--refine", help="Instance runs: sam re-segments each detected box with SAM."),
    sam_checkpoint: str = typer.Option(None, "--sam-checkpoint", help="--refine sam: SAM weights file."),
    sam_model: str = typer.Option("mobile-sam", "--sam-model", help="--refine sam: mobile-sam or sam-vit-b."),
    engine: str = ENGINE,
    address: str = ADDRESS,
    workers: int = WORKERS,
    cpus_per_worker: float = CPUS_PER_WORKER,
    gpus_per_worker: float = GPUS_PER_WORKER,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Predict label maps (PNG, pixel = class id) and colour overlays for images; for an instance run, masks with
    labels, class names and scores (masks/, overlays/, coco.json).

    A bad file is reported and the others go on; the exit code is 1 when any image failed.
    """
    from ..batch import list_sources

    executor = make_executor(engine, address, workers, cpus_per_worker, gpus_per_worker, batch_size)
    root = out_dir(out)
    handlers = _HANDLERS[_run_kind(run)]
    try:
        job = handlers.predict(ctx, run=run, checkpoint=checkpoint, device=device, tta=tta, scales=scales,
                               overlap=overlap, resize=resize, fmt=fmt, conf=conf, refine=refine,
                               sam_checkpoint=sam_checkpoint, sam_model=sam_model)
        paths = list_sources(source)
    except ImsegError as exc:
        fail(str(exc))
    run_and_exit(paths, job, root, resume=handlers.resume_outputs, executor=executor)
