"""`imseg track`: SAM 2.1 video object tracking to per-frame masks and an overlay video."""

from __future__ import annotations

import typer

from ..errors import ImsegError
from .common import app, fail, out_dir


@app.command("track")
def track_cmd(
    video: str = typer.Argument(..., help="Video file (mp4, mov, ...) or a folder of JPEG frames."),
    model: str = typer.Option("sam2.1-hiera-t", "--model", "-m", help="sam2.1-hiera-t, -s, -b+ or -l."),
    checkpoint: str = typer.Option(None, "--checkpoint", "-c", help="Official SAM 2.1 .pt (default: weights cache)."),
    frame: list[int] = typer.Option([], "--frame", help="Frame of the prompt (once for all, or per prompt; default 0)."),
    points: list[str] = typer.Option([], "--points", "-p", help="x,y or x,y;x,y (repeat per prompt; '-' none)."),
    labels: list[str] = typer.Option([], "--labels", help="1 or 1,0: one per point (default all 1)."),
    box: list[str] = typer.Option([], "--box", help="x0,y0,x1,y1 (repeat per prompt; '-' for none)."),
    obj_id: list[str] = typer.Option([], "--obj-id", help="Object id of each prompt (default 1, 2, ...)."),
    out: str = typer.Option("runs/track", "--out", "-o", help="Output directory (re-running continues it)."),
    format: str = typer.Option("png", "--format", "-f", help="png (one per frame and object) | coco | rle."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write overlay.mp4 (masks over the frames)."),
    reverse: bool = typer.Option(False, "--reverse", help="Also track backwards from the first prompted frame."),
    max_frames: int = typer.Option(None, "--max-frames", help="Track at most this many frames per direction."),
    fps: float = typer.Option(None, "--fps", help="Overlay video frame rate (default 24)."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda, mps."),
    precision: str = typer.Option(None, "--precision", help="fp32 (exact; the default), bf16, or auto (bf16 where "
                                  "the CPU has native bf16): the image encoder's precision, and the memory "
                                  "attention's on a GPU or a CPU with AMX."),
) -> None:
    """Track objects through a video with SAM 2.1: prompts on any frame, masks for every frame.

    Prompt i is the i-th --points, --box and --obj-id ('-' for none), with the i-th (or the one) --labels/--frame.

    Two objects on frame 0: imseg track frames/ -c sam2.1_hiera_tiny.pt --points 210,350 --box - --obj-id 1
    --points - --box 300,0,500,400 --obj-id 2 --overlay
    """
    from ..track import parse_prompts, run_track

    root = out_dir(out)
    try:
        prompts = parse_prompts(frame, points, labels, box, obj_id)
        summary = run_track(video, model, checkpoint, prompts, root, format, overlay=overlay, reverse=reverse,
                            max_frames=max_frames, device=device, fps=fps, precision=precision)
    except ImsegError as exc:
        done = len(list((root / "frames").glob("*.json"))) if (root / "frames").is_dir() else 0
        kept = f" ({done} finished frames are kept in {root}; re-run to continue)" if done else ""
        fail(f"{exc}{kept}", code=1)
    typer.echo(f"tracked {summary['frames']} frames ({summary['written']} written, {summary['kept']} kept) -> {root}"
               f" [{summary['precision']}]")
    for key in ("annotations", "overlay"):
        if key in summary:
            typer.echo(f"{key}: {summary[key]}")
