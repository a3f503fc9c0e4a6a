"""`imseg export`: SAM or a training run to ONNX / TorchScript, optionally int8."""

from __future__ import annotations

import typer

from ..errors import ImsegError
from .common import app, fail


@app.command("export")
def export_cmd(
    model: str = typer.Option(None, "--model", "-m", help="sam-vit-b/l/h, mobile-sam, sam2.1-hiera-t/s/b+/l."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="SAM checkpoint (.pth/.pt); default: the cached weights."),
    run: str = typer.Option(None, "--run", help="Training run directory to export (runs/train/exp)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript (torchscript: runs only)."),
    out: str = typer.Option(None, "--out", "-o", help="Output directory (default: RUN/export or runs/export/MODEL)."),
    int8: bool = typer.Option(False, "--int8", help="Also quantize to int8 (dynamic) and report size/accuracy change."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or int8 (same as --int8); bf16 is chosen when "
                                  "loading (imseg.load(DIR, backend='openvino', precision='bf16'))."),
    calibration: str = typer.Option(None, "--calibration", help="Image folder for static int8 quantization."),
    raw_input: bool = typer.Option(False, "--raw-input", help="SAM encoder takes a uint8 HxWx3 image (preprocessing in graph)."),
    single_mask: bool = typer.Option(False, "--single-mask", help="SAM decoder returns only the best mask (official option)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (>= 17)."),
    simplify: bool = typer.Option(False, "--simplify", help="Run onnxsim when installed."),
    memory_attention: bool = typer.Option(False, "--memory-attention",
                                          help="SAM 2.1: also export the video memory attention (real RoPE)."),
) -> None:
    """Export SAM (encoder.onnx + decoder.onnx) or a training run (ONNX / TorchScript), optionally int8."""
    import json
    from pathlib import Path

    from ..export import export_model

    if precision.lower() not in ("fp32", "int8"):
        fail(f"--precision for export is fp32 or int8, got {precision!r}; bf16 is a load-time choice "
             f"(--backend openvino --precision bf16 on imseg segment/serve).")
    int8 = int8 or precision.lower() == "int8"
    if out is None:
        out = str(Path(run) / "export") if run else str(Path("runs") / "export" / (model or "model"))
    try:
        manifest = export_model(model, run=run, checkpoint=checkpoint, out=out, format=format, int8=int8,
                                calibration=calibration, raw_input=raw_input, single_mask=single_mask, opset=opset,
                                simplify=simplify, memory_attention=memory_attention)
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
