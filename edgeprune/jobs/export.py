"""`export_files`: what `edgeprune export` does, as a function. Loads any model the loader
accepts and real data for it, then calls `export_model` with verification samples, labelled
evaluation samples and calibration images drawn from that data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune.export import ExportOptions, ExportResult, export_model, select_exporters
from edgeprune.export.precision import CALIBRATED, parse_precisions
from edgeprune.export.validate import VERIFY_SAMPLES
from edgeprune.jobs.checks import check_options, check_output_folder
from edgeprune.jobs.loading import load_model_and_data, take
from edgeprune.models import LoadedModel

SUMMARY_KEYS = ("pruned_from", "criterion", "flops_reduction", "params", "macs", "test_acc")
"""Checkpoint metadata that describes how a model was compressed (edgeprune compress)."""


def export_files(model: str = "demo", weights: Path | None = None,
                 formats: str = "onnx,tflite", precisions: str = "fp32",
                 out: Path = Path("exported"), stem: str | None = None,
                 calibration_samples: int = 512, eval_samples: int = 2000, verify: bool = True,
                 nhwc: bool = False, int8_io: bool = False, opset: int | None = None,
                 dynamic_batch: bool = False, seed: int = 0, **data: Any) -> list[ExportResult]:
    """Export `model` (a --model reference) in each format and precision into `out`.

    Files are named `<stem>[.<precision>].<format>` (stem: the model's name). Verification uses
    the first VERIFY_SAMPLES of `eval_samples` test images, accuracy all of them (0: no
    accuracy check), int8 calibration `calibration_samples` training images; all seeded.
    `data`: the data options of `jobs.loading.load_data` (dataset, data_dir, ...).
    """
    select_exporters(formats)
    precs = parse_precisions(precisions)
    check_output_folder(Path(out))
    check_options(("--calibration-samples", calibration_samples, calibration_samples >= 1,
                   "at least 1"),
                  ("--eval-samples", eval_samples, eval_samples >= 0, "0 (no accuracy check) "
                   "or more"))
    md = load_model_and_data(model, weights, seed=seed, **data)
    loaded, spec = md.loaded, md.spec
    x, y = take(md.data, "test", max(eval_samples, VERIFY_SAMPLES), seed)
    calibration = None
    if CALIBRATED.intersection(precs):
        calibration = take(md.data, "train", calibration_samples, seed)[0]
    options = ExportOptions(opset=opset, dynamic_batch=dynamic_batch, nhwc=nhwc,
                            int8_io=int8_io)
    return export_model(
        loaded.model, spec, Path(out), x[:VERIFY_SAMPLES], formats=formats,
        stem=stem or default_stem(model), verify=verify, precisions=precs,
        calibration=calibration, eval_samples=(x, y) if eval_samples > 0 else None,
        summary=compression_summary(loaded), options=options)


def default_stem(model: str | None) -> str:
    """A file stem from a --model reference: 'demo', 'resnet20', 'resnet18' for
    'torchvision:resnet18', 'factory' for 'pkg.mod:factory', the file stem for a path."""
    ref = model or "demo"
    if ref.endswith((".pt", ".pth")) or Path(ref).is_file():
        return Path(ref).stem
    return ref.rsplit(":", 1)[-1] or "model"


def compression_summary(loaded: LoadedModel) -> dict[str, Any] | None:
    """How the model was compressed, from its checkpoint metadata; None for a plain model."""
    summary = {k: loaded.meta[k] for k in SUMMARY_KEYS if k in loaded.meta}
    return summary if "pruned_from" in summary else None
