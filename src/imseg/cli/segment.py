"""`imseg demo` and `imseg segment` (promptable and everything-mode segmenters over images)."""

from __future__ import annotations

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


@app.command("demo")
def demo_cmd(
    model: str = typer.Option("mobile-sam", "--model", help="SAM model: mobile-sam (40 MB) or sam-vit-b/l/h."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Official checkpoint file; default: the weights cache."),
    out: str = typer.Option("runs/demo", "--out", help="Output directory for overlays and masks."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Segment scikit-image's astronaut and coffee with a point and a box prompt (downloads the weights once when online)."""
    from ..sam.demo import run_demo

    try:
        run_demo(model=model, checkpoint=checkpoint, out=out, device=device, echo=typer.echo)
    except ImsegError as exc:
        fail(str(exc))


def parse_xy_list(values: list[str] | None, what: str, size: int) -> list[list[float]] | None:
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


def parse_prompts(points: list[str] | None, labels: list[str] | None, box: str | None) -> dict:
    """The prompt flags as segment() keywords, checked once for what needs no image (counts, label values,
    inverted boxes, NaN); {} without prompts."""
    from ..prompts import validate_box, validate_points

    point_list = parse_xy_list(points, "--points", 2)
    box_list = parse_xy_list([box] if box else None, "--box", 4)
    label_list = None
    if labels:
        try:
            label_list = [int(v) for item in labels for v in item.replace(",", " ").split()]
        except ValueError:
            fail(f"--labels must be integers (1 foreground, 0 background), got {' '.join(labels)!r}.")
    if label_list is not None and point_list is None:
        fail("--labels needs --points.")
    if point_list is None and box_list is None:
        return {}
    for flags, check in (("--points/--labels", lambda: validate_points(point_list, label_list, None, allowed_labels=(0, 1))),
                         ("--box", lambda: validate_box(None if box_list is None else box_list[0]))):
        try:
            check()
        except ImsegError as exc:
            fail(f"{flags}: {exc}")
    return {"points": point_list, "labels": label_list, "box": None if box_list is None else box_list[0]}


@app.command("segment")
def segment_cmd(
    src: str = typer.Argument(
        ..., help="An image, a directory of images, a glob pattern (quote it) or a .txt list of image paths."
    ),
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
    fmt: str = typer.Option(
        "png", "--format", help="Mask format: png, coco, rle, polygons, npz, or jsonl (COCO RLE rows in shards/)."
    ),
    shards: int = typer.Option(1, "--shards", help="Format jsonl: number of shards/part-*.jsonl files."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write overlays/<image>.png."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    half: bool = typer.Option(False, "--half", help="float16 weights (CUDA only)."),
    backend: str = typer.Option("torch", "--backend", help="torch, onnxruntime, openvino (SAM: exported once to "
                                "the cache; an export dir as --model runs its ONNX files) or auto (SAM, SAM 2.1 and "
                                "semantic runs: the fastest on this CPU within mask IoU 0.99 of fp32, measured once "
                                "and cached)."),
    precision: str = typer.Option(None, "--precision", help="Encoder precision: fp32 (exact; the default), bf16, "
                                  "int8 (onnxruntime/openvino) or auto (bf16 on CPUs with AMX/AVX512-BF16, else fp32)."),
    post: str = typer.Option(None, "--post", help="Post-processing, e.g. 'remove_small=64,fill_holes=64,crf'."),
    allow_random_weights: bool = typer.Option(
        False, "--allow-random-weights", help="Build random weights when no checkpoint is found (testing only)."
    ),
    text: str = typer.Option(None, "--text", help="Text prompt: phrases separated by '.' or ',' (e.g. 'horse. rider')."),
    detector: str = typer.Option("grounding-dino-tiny", "--detector", help="--text: open-vocabulary detector "
                                 "(grounding-dino-tiny/base, owlv2-base/large, or grounding-dino:DIR)."),
    classify: str = typer.Option(None, "--classify", help="Everything mode: name each mask with CLIP from these "
                                 "comma-separated names (e.g. 'horse,grass,sky')."),
    clip: str = typer.Option("clip-vit-b-32", "--clip", help="--classify: the CLIP model (clip-vit-b-32, clip-vit-b-16)."),
    engine: str = ENGINE,
    address: str = ADDRESS,
    workers: int = WORKERS,
    cpus_per_worker: float = CPUS_PER_WORKER,
    gpus_per_worker: float = GPUS_PER_WORKER,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Segment images; writes masks/, overlays/, coco.json (format coco) and done/ markers under --out.

    Images already done in --out with the same settings are skipped, so an interrupted run resumes; an
    image done again replaces its earlier outputs. Unreadable images and failed writes are reported and
    the run goes on; the exit code is 1 when anything failed, 2 for a bad option.
    """
    from ..batch import list_sources
    from ..jobs import build_segment_job
    from ..masks import SAVE_FORMATS

    fmt = fmt.lower()
    if fmt not in (*SAVE_FORMATS, "jsonl"):
        fail(f"--format must be one of {', '.join(SAVE_FORMATS)}, jsonl, got {fmt!r}.")
    if shards < 1:
        fail(f"--shards must be at least 1, got {shards}.")
    if everything and (points or box):
        fail("--everything cannot be combined with --points/--box; drop one of them.")
    prompts = parse_prompts(points, labels, box)
    if text is not None and (prompts or everything or classify):
        fail("--text finds its own boxes: drop --points/--box/--everything/--classify, or drop --text.")
    if classify is not None and prompts:
        fail("--classify names everything-mode masks: drop --points/--box, or drop --classify.")
    amg_options = {
        key: value
        for key, value in (("points_per_side", points_per_side), ("pred_iou_thresh", pred_iou_thresh),
                           ("stability_score_thresh", stability_thresh))
        if value is not None
    }
    if amg_options and prompts:
        fail("--points-per-side / --pred-iou-thresh / --stability-score-thresh apply to everything mode only.")
    executor = make_executor(engine, address, workers, cpus_per_worker, gpus_per_worker, batch_size)
    root = out_dir(out)
    try:
        images = list_sources(src)
        job = build_segment_job(model, checkpoint=checkpoint, device=device, backend=backend, half=half,
                                allow_random=allow_random_weights, prompts=prompts or amg_options, post=post,
                                fmt=fmt, overlay=overlay, shards=shards,
                                text=text, detector=detector, classify=classify, clip=clip,
                                precision=precision)
    except ImsegError as exc:
        fail(str(exc))
    if backend == "auto":
        from ..engines_auto import choice_line

        typer.echo(choice_line(job.segmenter))
    run_and_exit(images, job, root, executor=executor)


@app.command("merge-shards")
def merge_shards_cmd(
    shards: list[str] = typer.Argument(..., help="Shard files or a shards/ folder of an 'imseg segment --format jsonl' run."),
    out: str = typer.Option(..., "--out", help="The COCO JSON file to write."),
) -> None:
    """Merge JSON-lines shards (one COCO RLE row per image) into one COCO JSON."""
    from ..batch import merge_shards

    try:
        path = merge_shards(shards, out)
    except ImsegError as exc:
        fail(str(exc))
    typer.echo(f"wrote {path}")
