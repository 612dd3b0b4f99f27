"""`edgeprune export`: a thin Typer shell over `edgeprune.jobs.export.export_files` (same
argument names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeprune import console
from edgeprune.cli.bounds import bounded
from edgeprune.cli.options import (
    D,
    ModelArg,
    model_data_options,
    output_options,
    start,
    with_options,
)


@with_options(model_data_options, output_options)
def export(
    model: ModelArg = D.model,
    formats: Annotated[str, typer.Option(
        "--format", "-f", help="formats, comma-separated: onnx, tflite")] = "onnx,tflite",
    precisions: Annotated[str, typer.Option(
        "--precision", "-p", help="precisions, comma-separated: fp32, fp16, int8 (static, "
        "calibrated), int8-dynamic")] = "fp32",
    out: Annotated[Path, typer.Option(help="folder for the files and sidecars")] = Path(
        "exported"),
    stem: Annotated[str | None, typer.Option(
        help="file name stem (default: the model's name)")] = None,
    calibration_samples: Annotated[int, bounded(
        "calibration_samples", "training images int8 activation ranges are calibrated on "
        "(at least 64)")] = 512,
    eval_samples: Annotated[int, bounded(
        "eval_samples", "test images each file's top-1 accuracy is measured on (0: none)")] = 2000,
    verify: Annotated[bool, typer.Option(
        help="fail when a file misses its thresholds (numbers are measured either way)")] = True,
    nhwc: Annotated[bool, typer.Option(
        help="TFLite input in NHWC (channels-last) layout: no input transpose on devices")] = False,
    int8_io: Annotated[bool, typer.Option(
        help="int8 TFLite files take and return int8 tensors instead of float")] = False,
    opset: Annotated[int | None, bounded(
        "opset", "ONNX opset (default 18, for onnxruntime >= 1.14; 17 for 1.13, 15 for "
        "1.10-1.12)")] = None,
    dynamic_batch: Annotated[bool, typer.Option(
        help="ONNX files accept any batch size")] = False,
    **options: Any,
) -> None:
    """Export a model to ONNX and/or TFLite in fp32, fp16 and int8, each file verified."""
    json_out = start(options)
    from edgeprune.jobs.export import export_files

    results = export_files(
        model=model, formats=formats, precisions=precisions, out=out, stem=stem,
        calibration_samples=calibration_samples, eval_samples=eval_samples, verify=verify,
        nhwc=nhwc, int8_io=int8_io, opset=opset, dynamic_batch=dynamic_batch, **options)
    if json_out:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
        return
    console.stdout.print(results_table(results))


def results_table(results):
    """One row per file: size, parity, accuracy and time; PyTorch's accuracy in the title."""
    from rich.table import Table

    folder = results[0].path.parent if results else ""
    reference = next((r for r in results if r.reference_accuracy is not None), None)
    title = f"exported to {folder}"
    if reference is not None:
        title += (f" (PyTorch top-1 {reference.reference_accuracy:.2%} on "
                  f"{reference.eval_samples} test images)")
    table = Table(title=title)
    table.add_column("file", no_wrap=True)
    for name in ("size", "max |diff|", "agree", "top-1", "time"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in results:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
        table.add_row(r.path.name, f"{r.size_bytes / 1e6:.2f} MB", f"{r.max_abs_diff:.1e}",
                      f"{r.top1_agreement:.0%}", acc, f"{r.wall_s:.1f} s")
    return table
