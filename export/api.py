"""`export_model`: write a model in each requested format, verify every file against PyTorch
on real samples, and publish it with a JSON sidecar only once it passed."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune import __version__
from edgeprune.checkpoint import sha256_file
from edgeprune.console import info
from edgeprune.errors import EdgepruneError
from edgeprune.export.base import Exporter, export_step
from edgeprune.export.registry import select_exporters
from edgeprune.export.staging import staged
from edgeprune.export.validate import Metrics, validate_outputs
from edgeprune.spec import InputSpec

LAYOUT = "NCHW"  # both exporters keep PyTorch's input layout


@dataclass
class ExportResult:
    """One published model file, its sidecar and how closely it reproduces PyTorch."""

    format: str
    precision: str
    path: Path
    sidecar: Path
    size_bytes: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    wall_s: float
    details: dict[str, Any]


def export_model(model: torch.nn.Module, spec: InputSpec, out_dir: Path, samples: torch.Tensor,
                 formats: Sequence[str] = ("onnx", "tflite"), stem: str = "model",
                 verify: bool = True) -> list[ExportResult]:
    """Export `model` to `out_dir/<stem><suffix>` for each format, with a `.json` sidecar.

    `samples` are preprocessed inputs (N, C, H, W) matching `spec`; every file runs on all of
    them and is compared with PyTorch. A file that fails a check raises ExportError and is not
    written (with `verify=False` the numbers are still measured and logged, but do not fail).
    `model` itself is left untouched: a CPU copy in eval mode is exported.
    """
    exporters = select_exporters(formats)
    if not stem or Path(stem).name != stem:
        raise EdgepruneError(f"export stem {stem!r} must be a plain file name, e.g. 'model'")
    inputs = check_samples(samples, spec)
    net = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    reference = reference_logits(net, inputs, spec)
    return [export_one(e, net, spec, Path(out_dir), stem, inputs, reference, verify)
            for e in exporters]


def check_samples(samples: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """The samples as a contiguous float32 CPU tensor, or EdgepruneError naming both shapes."""
    expected = f"(N, {', '.join(map(str, spec.shape))}) with N >= 1"
    if not isinstance(samples, torch.Tensor):
        raise EdgepruneError(f"export samples must be a tensor {expected}, not "
                             f"{type(samples).__name__}")
    if samples.ndim != 4 or tuple(samples.shape[1:]) != spec.shape or len(samples) == 0:
        raise EdgepruneError(f"export samples have shape {tuple(samples.shape)} but the input "
                             f"spec expects {expected}; pass preprocessed images of that size")
    if not samples.is_floating_point():
        raise EdgepruneError(f"export samples are {samples.dtype}; pass normalized float images")
    return samples.detach().to("cpu", torch.float32).contiguous()


def reference_logits(net: torch.nn.Module, inputs: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """PyTorch's (N, K) logits for `inputs`, the reference every exported file must match."""
    with torch.no_grad():
        out = net(inputs)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EdgepruneError(f"the model must return one (N, classes) tensor of logits to be "
                             f"exported; it returned {got}")
    if spec.labels and out.shape[1] != spec.num_classes:
        raise EdgepruneError(f"the input spec has {spec.num_classes} labels but the model "
                             f"outputs {out.shape[1]} logits")
    return out.numpy()


def export_one(exporter: Exporter, net: torch.nn.Module, spec: InputSpec, out_dir: Path,
               stem: str, inputs: torch.Tensor, reference: np.ndarray,
               verify: bool) -> ExportResult:
    """Export, verify and publish one format; nothing reaches `out_dir` unless all passed."""
    start = time.perf_counter()
    path = out_dir / f"{stem}{exporter.suffix}"
    sidecar = sidecar_path(path)
    with staged(out_dir) as stage:
        temp = stage.temp_for(path)
        with export_step(exporter.label, "export"):
            details = exporter.export(net, inputs[:1], temp)
        metrics, io_names = verify_file(exporter, temp, inputs, reference, verify)
        size = temp.stat().st_size
        stage.write_text(sidecar, sidecar_json(exporter, spec, temp, path.name, io_names,
                                               reference.shape[1], metrics, details))
    result = ExportResult(exporter.name, exporter.precision, path, sidecar, size,
                          metrics.max_abs_diff, metrics.max_rel_diff, metrics.top1_agreement,
                          time.perf_counter() - start, details)
    info(summary_line(result, exporter, metrics))
    return result


def sidecar_path(model_file: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`: the full name, because both formats of one model
    share a stem in the same folder and each needs its own sidecar."""
    return model_file.with_name(model_file.name + ".json")


def verify_file(exporter: Exporter, path: Path, inputs: torch.Tensor, reference: np.ndarray,
                strict: bool) -> tuple[Metrics, tuple[str, str]]:
    """Load `path` in its runtime and compare it with PyTorch on every sample; return the
    metrics and the file's (input, output) tensor names. The runtime is released on return,
    before the file is renamed."""
    with export_step(exporter.label, "load"):
        runner = exporter.runner(path)
    with export_step(exporter.label, "run"):
        metrics = validate_outputs(reference, runner, inputs.numpy(), exporter.atol,
                                   exporter.rtol, label=exporter.label, strict=strict)
    return metrics, (runner.input_name, runner.output_name)


def sidecar_json(exporter: Exporter, spec: InputSpec, file: Path, name: str,
                 io_names: tuple[str, str], num_outputs: int, metrics: Metrics,
                 details: dict[str, Any]) -> str:
    """The sidecar: what the file expects and returns (read by the device runner) and how it
    was made and verified."""
    payload = {
        "format": exporter.name, "precision": exporter.precision, "file": name,
        "sha256": sha256_file(file), "input_spec": spec.to_dict(),
        "input_name": io_names[0], "output_name": io_names[1], "layout": LAYOUT,
        "input_shape": [1, *spec.shape], "output_shape": [1, num_outputs],
        "verification": {
            "samples": metrics.num_samples, "atol": exporter.atol, "rtol": exporter.rtol,
            "max_abs_diff": metrics.max_abs_diff, "max_rel_diff": metrics.max_rel_diff,
            "top1_agreement": metrics.top1_agreement, "passed": metrics.passed,
            "failures": list(metrics.failures)},
        "details": details, "edgeprune": __version__, "torch": torch.__version__,
    }
    return json.dumps(payload, indent=2) + "\n"


def summary_line(result: ExportResult, exporter: Exporter, metrics: Metrics) -> str:
    """One line per export: file, size, format facts, max difference, agreement, time."""
    facts = exporter.describe(result.details)
    warning = "" if metrics.passed else f", NOT VERIFIED: {'; '.join(metrics.failures)}"
    return (f"{exporter.label}: {shown(result.path)} {result.size_bytes / 1e6:.2f} MB"
            f"{', ' + facts if facts else ''}, max|diff| {result.max_abs_diff:.1e}, "
            f"top-1 agree {result.top1_agreement:.0%}, {result.wall_s:.1f} s{warning}")


def shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it (shorter log lines)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path
