"""`imseg finetune`: fine-tune SAM on an instance-style data set."""

from __future__ import annotations

import typer

from ..errors import ImsegError
from .common import app, fail


@app.command("finetune")
def finetune_cmd(
    ctx: typer.Context,
    data: str = typer.Option(None, "--data", help="COCO/labelme/YOLO-seg/VOC/DSB data set, a folder of images + "
                             "masks, or a dataset YAML as for imseg train."),
    model: str = typer.Option("mobile-sam", "--model", help="sam-vit-b, sam-vit-l, sam-vit-h, mobile-sam, "
                              "or SAM 2.1: sam2.1-t, sam2.1-s, sam2.1-b+, sam2.1-l."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Starting weights (default: the weights cache)."),
    random_init: bool = typer.Option(False, "--random-init", help="Start from random weights when no checkpoint "
                                     "is given or cached."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 10; with --resume: the run's own)."),
    imgsz: int = typer.Option(1024, "--imgsz", help="Input size (mobile-sam: any multiple of 16; ViT: 1024; "
                             "SAM 2.1: any multiple of 32)."),
    train: str = typer.Option("decoder+prompt", "--train", help="decoder, decoder+prompt (frozen encoder, "
                              "cached embeddings), lora (adapters on the encoder) or all."),
    lora_rank: int = typer.Option(8, "--lora-rank"),
    prompts: str = typer.Option("box,point,mask", "--prompts", help="Prompt kinds sampled from the ground truth; "
                                "mask feeds the previous round's mask back."),
    clicks: int = typer.Option(2, "--clicks", help="Correction-click rounds per step."),
    objects: str = typer.Option("ids", "--objects", help="Mask folders: ids (a value per object; a binary mask is "
                                "one object), components (each connected region) or whole."),
    batch: int = typer.Option(4, "--batch", help="Images per step."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default 1e-4 from a checkpoint, with the "
                             "encoder's earlier layers lower; 5e-4 for every layer of a whole model from random "
                             "weights)."),
    loss: str = typer.Option("bce+dice", "--loss", help="bce+dice or official (focal x20 + dice + IoU)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where supported), bf16 or 32."),
    time_budget: float = typer.Option(None, "--time", help="Wall-clock budget in minutes: stop then (saved and "
                                     "validated); without --epochs, plan the run for it (see above)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Cache frozen-encoder embeddings on disk."),
    cache_dir: str = typer.Option(None, "--cache-dir", help="Embedding cache (default $IMSEG_HOME/embeddings)."),
    seed: int = typer.Option(0, "--seed"),
    project: str = typer.Option("runs/finetune", "--project"),
    name: str = typer.Option("exp", "--name"),
    resume: str = typer.Option(None, "--resume", help="Run directory to continue (--epochs / --time may be given)."),
    logger: str = typer.Option("csv", "--logger", help="csv (metrics.csv, always written) and/or tensorboard "
                               "(RUN/tensorboard events: step loss, lr, validation box mIoU, box-prompt overlays), "
                               "e.g. csv,tensorboard."),
    plan: bool = typer.Option(False, "--plan", help="With --time and no --epochs: print the plan and stop."),
    devices: str = typer.Option("1", "--devices", help="Devices per node (an int, -1 or auto for all, or ids such "
                                "as 0,1); several train with DDP."),
    nodes: int = typer.Option(1, "--nodes"),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto, cpu or gpu."),
) -> None:
    """Fine-tune SAM or SAM 2.1; writes runs/finetune/NAME[N]/ (official-layout weights, metrics.csv, results.png).

    `imseg finetune --data DATA --time MINUTES` without --epochs plans --epochs, --imgsz, --batch and the warm-up \
for the budget from the data and a timing probe on this machine (the first epoch of a frozen encoder also encodes \
every image once); --imgsz and --batch given explicitly win. The plan and its reasons are printed first and \
recorded in the run's config.yaml.
    """
    from ..finetune.train import finetune
    from ..semantic.ddp import parse_devices

    planned = time_budget is not None and epochs is None and not resume
    if plan and not planned:
        fail("--plan prints the plan of a time budget: give --time MINUTES, and neither --epochs nor --resume.")
    try:
        if planned:
            if data is None:
                fail("--time plans from the data set: give --data DATA.")
            _finetune_planned(ctx, plan)
            return
        if resume:
            given = sorted(f"--{key.replace('_', '-')}" for key in ctx.params
                           if key not in ("resume", "epochs", "time_budget")
                           and getattr(ctx.get_parameter_source(key), "name", "") == "COMMANDLINE")
            if given:
                fail(f"--resume continues {resume} with its config.yaml; {', '.join(given)} would be ignored.")
            overrides = {k: v for k, v in (("epochs", epochs), ("time", time_budget)) if v is not None}
            result = finetune(resume=resume, **overrides)
        else:
            if data is None:
                fail("--data is required (a data set folder, COCO/labelme JSON or dataset YAML).")
            result = finetune(
                data=data, model=model, checkpoint=checkpoint, random_init=random_init,
                epochs=10 if epochs is None else epochs, imgsz=imgsz, train=train, lora_rank=lora_rank,
                prompts=prompts, clicks=clicks, objects=objects, batch=batch, lr=lr, loss=loss, precision=precision,
                time=time_budget, cache=cache, cache_dir=cache_dir, seed=seed, project=project, name=name,
                logger=logger, devices=parse_devices(devices), nodes=nodes, accelerator=accelerator,
            )
    except ImsegError as exc:
        fail(str(exc))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
    stop = " (stopped at the --time budget)" if result.stopped_by_time else ""
    typer.echo(f"best: {metrics}{stop}\nresults saved to {result.run_dir}")


#: finetune_cmd parameters the planner chooses unless given on the command line
_PLANNED = ("imgsz", "batch")
#: finetune_cmd parameters passed to the run as they are
_PASSED = ("data", "model", "checkpoint", "random_init", "train", "lora_rank", "prompts", "clicks", "objects", "lr",
           "loss", "precision", "cache", "cache_dir", "seed", "project", "name", "logger", "devices", "nodes",
           "accelerator")


def _finetune_planned(ctx: typer.Context, plan_only: bool) -> None:
    from ..finetune.planned import plan_and_finetune
    from ..semantic.ddp import parse_devices

    params = ctx.params
    options = {k: params[k] for k in _PASSED}
    options["devices"] = parse_devices(options["devices"])
    options.update({k: params[k] for k in _PLANNED
                    if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"})
    _, result = plan_and_finetune(params["time_budget"], plan_only=plan_only, echo=typer.echo, **options)
    if result is not None:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
        stop = " (stopped at the --time budget)" if result.stopped_by_time else ""
        typer.echo(f"best: {metrics}{stop}\nresults saved to {result.run_dir}")
