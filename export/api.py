"""`export_model`: write a model in each requested format and precision, verify every file
against PyTorch on real samples, and publish the files with their JSON sidecars only once all
of them passed (nothing of a failed call is left in the output folder)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune.console import info
from edgeprune.errors import EdgepruneError
from edgeprune.export.base import Converted, Exporter, ExportError, ExportOptions, export_step
from edgeprune.export.metadata import as_strings, file_metadata
from edgeprune.export.precision import (
    CALIBRATED,
    MIN_CALIBRATION_SAMPLES,
    PREQUANTIZED,
    file_tag,
    parse_precisions,
)
from edgeprune.export.registry import select_exporters
from edgeprune.export.trace import locate_op, trace
from edgeprune.export.validate import EvalSet, Metrics, compare, validate_outputs
from edgeprune.files import Staging, sha256_file, staged
from edgeprune.models.copying import clone
from edgeprune.spec import InputSpec


@dataclass
class ExportResult:
    """One published model file, its sidecar and how closely it reproduces PyTorch.

    `accuracy`/`reference_accuracy` are the file's and PyTorch's top-1 on `eval_samples`
    labelled samples (None without labels); `wall_s` includes the shared conversion."""

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
    accuracy: float | None = None
    reference_accuracy: float | None = None
    eval_samples: int = 0
    verified: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["sidecar"] = str(self.path), str(self.sidecar)
        return d


@dataclass
class Job:
    """Everything one `export_model` call shares between its files."""

    net: torch.nn.Module
    spec: InputSpec
    out_dir: Path
    stem: str
    precisions: list[str]
    inputs: torch.Tensor
    reference: np.ndarray
    calibration: np.ndarray | None
    eval_set: EvalSet | None
    summary: dict[str, Any] | None
    options: ExportOptions
    verify: bool | frozenset[str]
    program: torch.export.ExportedProgram | None = None
    results: list[ExportResult] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def strict(self, precision: str) -> bool:
        """Whether a file of `precision` that misses its thresholds fails the call."""
        return self.verify if isinstance(self.verify, bool) else precision in self.verify


def export_model(model: torch.nn.Module, spec: InputSpec, out_dir: Path, samples: torch.Tensor,
                 formats: Sequence[str] = ("onnx", "tflite"), stem: str = "model",
                 verify: bool | Collection[str] = True, precisions: Sequence[str] = ("fp32",),
                 calibration: torch.Tensor | None = None,
                 eval_samples: tuple[torch.Tensor, torch.Tensor] | None = None,
                 summary: dict[str, Any] | None = None,
                 options: ExportOptions | None = None) -> list[ExportResult]:
    """Export `model` to `out_dir/<stem>[.<precision>]<suffix>` for each format and precision,
    each with a `<file>.json` sidecar.

    `samples` are preprocessed inputs (N, C, H, W) matching `spec`; every file runs on all of
    them and is compared with PyTorch. `calibration` (default: `samples`) are the real images
    int8 activation ranges come from, at least MIN_CALIBRATION_SAMPLES. `eval_samples` =
    (images, labels) gives every file a top-1 accuracy next to PyTorch's, which is what fp16
    and int8 files are judged by. `summary` (the compression summary) goes into each file's
    metadata. A file that fails a check raises ExportError with the numbers and nothing of the
    call is published (with `verify=False` the numbers are still measured and logged, but do
    not fail; `verify` may also name the precisions that must pass, e.g. {"fp32"}, when a
    caller judges the others itself). `model` itself is left untouched: a CPU copy in eval
    mode is exported.
    """
    exporters = select_exporters(formats)
    job = prepare(model, spec, Path(out_dir), samples, stem, verify, precisions, calibration,
                  eval_samples, summary, options or ExportOptions(), exporters)
    with staged(job.out_dir) as stage:
        for exporter in exporters:
            export_format(exporter, job, stage)
    for line in job.lines:
        info(line)
    return job.results


def prepare(model: torch.nn.Module, spec: InputSpec, out_dir: Path, samples: torch.Tensor,
            stem: str, verify: bool | Collection[str], precisions: Sequence[str],
            calibration: torch.Tensor | None,
            eval_samples: tuple[torch.Tensor, torch.Tensor] | None,
            summary: dict[str, Any] | None, options: ExportOptions,
            exporters: list[Exporter]) -> Job:
    """Check every input before any work, compute PyTorch's reference outputs, trace."""
    if not isinstance(spec, InputSpec):
        raise EdgepruneError(f"export_model needs the model's InputSpec (input shape, mean/std, "
                             f"labels), not {type(spec).__name__}; e.g. InputSpec(3, 32, 32, "
                             "mean, std, labels)")
    if not isinstance(model, torch.nn.Module):
        raise EdgepruneError(f"export_model takes a torch.nn.Module, not a "
                             f"{type(model).__name__}")
    precs = parse_precisions(precisions)
    for e in exporters:
        missing = [p for p in precs if p not in e.precisions]
        if missing:
            raise EdgepruneError(f"{e.name} cannot be exported at {', '.join(missing)}; it "
                                 f"supports {', '.join(e.precisions)}")
    if not stem or Path(stem).name != stem:
        raise EdgepruneError(f"export stem {stem!r} must be a plain file name, e.g. 'model'")
    inputs = check_samples(samples, spec)
    calib = None
    if CALIBRATED.intersection(precs):
        calib = check_calibration(inputs if calibration is None else calibration, spec)
    if PREQUANTIZED.intersection(precs) and len(precs) > 1:
        raise EdgepruneError(f"{', '.join(sorted(PREQUANTIZED.intersection(precs)))} files "
                             "come from an already quantized model: export them on their own")
    net = inference_copy(model)
    reference = reference_logits(net, inputs, spec)
    eval_set = None if eval_samples is None else make_eval_set(net, eval_samples, spec)
    strict = verify if isinstance(verify, bool) else frozenset(verify)
    job = Job(net, spec, out_dir, stem, precs, inputs, reference, calib, eval_set, summary,
              options, strict)
    job.program = trace(net, inputs[:1])
    return job


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of `model` in eval mode with frozen parameters (a converted PT2E graph is
    already fixed in inference mode and refuses `eval()`)."""
    net = clone(model).cpu().requires_grad_(False)
    try:
        net.eval()
    except NotImplementedError:
        net.training = False
    return net


def check_samples(samples: torch.Tensor, spec: InputSpec, what: str = "export samples",
                  minimum: int = 1) -> torch.Tensor:
    """The samples as a contiguous float32 CPU tensor, or EdgepruneError naming both shapes."""
    expected = f"(N, {', '.join(map(str, spec.shape))}) with N >= {minimum}"
    if not isinstance(samples, torch.Tensor):
        raise EdgepruneError(f"{what} must be a tensor {expected}, not "
                             f"{type(samples).__name__}")
    if samples.ndim != 4 or tuple(samples.shape[1:]) != spec.shape or len(samples) == 0:
        raise EdgepruneError(f"{what} have shape {tuple(samples.shape)} but the model's input "
                             f"spec expects {expected}; pass preprocessed images of that size")
    if not samples.is_floating_point():
        raise EdgepruneError(f"{what} are {samples.dtype}; pass normalized float images")
    return samples.detach().to("cpu", torch.float32).contiguous()


def check_calibration(calibration: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """Calibration images as float32 NCHW numpy; too few or the wrong shape is refused."""
    x = check_samples(calibration, spec, "calibration samples", MIN_CALIBRATION_SAMPLES)
    if len(x) < MIN_CALIBRATION_SAMPLES:
        raise EdgepruneError(f"int8 calibration needs at least {MIN_CALIBRATION_SAMPLES} real "
                             f"samples, got {len(x)}; pass more (--calibration-samples)")
    return x.numpy()


def make_eval_set(net: torch.nn.Module, eval_samples: tuple[torch.Tensor, torch.Tensor],
                  spec: InputSpec) -> EvalSet:
    """Labelled evaluation samples and PyTorch's top-1 accuracy on them."""
    try:
        images, labels = eval_samples
    except (TypeError, ValueError):
        raise EdgepruneError("eval_samples must be a pair (images, labels)") from None
    x = check_samples(images, spec, "evaluation samples")
    y = torch.as_tensor(labels).detach().cpu().reshape(-1).long()
    if len(y) != len(x):
        raise EdgepruneError(f"evaluation samples: {len(x)} images but {len(y)} labels")
    logits = np.concatenate([reference_logits(net, x[i : i + 256], spec)
                             for i in range(0, len(x), 256)])
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise EdgepruneError(f"evaluation labels span {int(y.min())}..{int(y.max())} but the "
                             f"model has {logits.shape[1]} classes")
    correct = logits.argmax(1) == y.numpy()
    return EvalSet(x.numpy(), y.numpy(), float(np.mean(correct)), correct)


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


@contextmanager
def naming_layer(program: torch.export.ExportedProgram | None) -> Iterator[None]:
    """Add the layer of the op a converter rejected to its ExportError."""
    try:
        yield
    except ExportError as exc:
        text, cause = str(exc), exc.__cause__
        while cause is not None:
            text, cause = text + "\n" + str(cause), cause.__cause__
        where = locate_op(program, text) if program is not None else None
        if where is None or where in str(exc):
            raise
        raise ExportError(f"{exc} ({where})") from exc


def export_format(exporter: Exporter, job: Job, stage: Staging) -> None:
    """Convert once to fp32, derive each other precision from it, verify and stage each (a
    prequantized model is converted as it is)."""
    start = time.perf_counter()
    with naming_layer(job.program):
        if PREQUANTIZED.intersection(job.precisions):
            base = exporter.convert_quantized(job.net, job.inputs[:1], job.options)
        else:
            base = exporter.convert(job.net, job.inputs[:1], job.options)
    convert_s = time.perf_counter() - start
    for precision in job.precisions:
        t0 = time.perf_counter()
        converted = base
        if precision != "fp32" and precision not in PREQUANTIZED:
            with naming_layer(job.program):
                converted = exporter.derive(base, precision, job.calibration, job.options)
        result, metrics = stage_file(exporter, precision, converted, job, stage)
        result.wall_s = convert_s + time.perf_counter() - t0
        job.results.append(result)
        job.lines.append(summary_line(result, exporter.describe(result.details), metrics))


def stage_file(exporter: Exporter, precision: str, converted: Converted, job: Job,
               stage: Staging) -> tuple[ExportResult, Metrics]:
    """Write one file with its metadata under a temporary name, verify it, stage its
    sidecar; the caller's staging publishes both once every file passed."""
    path = job.out_dir / f"{job.stem}{file_tag(precision)}{exporter.suffix}"
    layout = exporter.layout(job.options)
    meta = file_metadata(job.spec, precision, layout,
                         bool(converted.details.get("dynamic_batch")), job.summary)
    temp = stage.temp_for(path)
    temp.write_bytes(exporter.finish(converted.data, as_strings(meta)))
    metrics, io_names = verify_file(exporter, precision, temp, layout, converted.details, job)
    sidecar = sidecar_path(path)
    stage.write_text(sidecar, sidecar_json(exporter, precision, temp, path.name, io_names,
                                           job.reference.shape[1], meta, metrics,
                                           converted.details))
    result = ExportResult(exporter.name, precision, path, sidecar, temp.stat().st_size,
                          metrics.max_abs_diff, metrics.max_rel_diff, metrics.top1_agreement,
                          0.0, converted.details, metrics.accuracy,
                          metrics.reference_accuracy, metrics.eval_samples, metrics.passed)
    return result, metrics


def sidecar_path(model_file: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`: the full name, because both formats of one model
    share a stem in the same folder and each needs its own sidecar."""
    return model_file.with_name(model_file.name + ".json")


def verify_file(exporter: Exporter, precision: str, path: Path, layout: str,
                details: dict[str, Any], job: Job) -> tuple[Metrics, tuple[str, str]]:
    """Load `path` in its runtime and compare it with PyTorch on every sample (and on the
    labelled samples); a file with a dynamic batch also runs all samples as one batch.
    Returns the metrics and the file's (input, output) tensor names; the runtime is released
    on return, before the file is renamed."""
    label = exporter.label(precision)
    check = exporter.checks[precision]
    with export_step(label, "load"):
        runner = exporter.runner(path, layout)
    x = job.inputs.numpy()
    with export_step(label, "run"):
        metrics = validate_outputs(job.reference, runner, x, check, label=label,
                                   strict=job.strict(precision), eval_set=job.eval_set)
        if details.get("dynamic_batch") and len(x) > 1:
            batched = compare(job.reference, np.asarray(runner(x)), check)
            if batched.failures:
                failures = tuple(f"as one batch of {len(x)}: {f}" for f in batched.failures)
                metrics = Metrics(**{**asdict(metrics),
                                     "failures": metrics.failures + failures})
                if job.strict(precision):
                    raise ExportError(f"{label} failed verification: {'; '.join(failures)}")
    return metrics, (runner.input_name, runner.output_name)


def sidecar_json(exporter: Exporter, precision: str, file: Path, name: str,
                 io_names: tuple[str, str], num_outputs: int, meta: dict[str, Any],
                 metrics: Metrics, details: dict[str, Any]) -> str:
    """The sidecar: what the file expects and returns (read by the device runner), its
    metadata, and how it was made and verified."""
    check = exporter.checks[precision]
    payload = {
        "format": exporter.name, "file": name, "sha256": sha256_file(file),
        "size_bytes": file.stat().st_size, **meta,
        "input_name": io_names[0], "output_name": io_names[1],
        "output_shape": [meta["input_shape"][0], num_outputs],
        "verification": {
            "samples": metrics.num_samples, "atol": check.atol, "rtol": check.rtol,
            "min_agreement": check.min_agreement,
            "max_accuracy_drop": check.max_accuracy_drop,
            "max_abs_diff": metrics.max_abs_diff, "max_rel_diff": metrics.max_rel_diff,
            "top1_agreement": metrics.top1_agreement, "eval_samples": metrics.eval_samples,
            "accuracy": metrics.accuracy, "reference_accuracy": metrics.reference_accuracy,
            "drop_interval": (None if metrics.drop_interval is None
                              else list(metrics.drop_interval)),
            "passed": metrics.passed, "failures": list(metrics.failures)},
        "details": details, "torch": torch.__version__,
    }
    return json.dumps(payload, indent=2, default=str) + "\n"


def summary_line(result: ExportResult, facts: str, metrics: Metrics) -> str:
    """One line per export: file, size, format facts, max difference, agreement, accuracy,
    time, and the failed checks when it was not verified."""
    accuracy = ("" if result.accuracy is None else
                f", top-1 {result.accuracy:.2%} (PyTorch {result.reference_accuracy:.2%})")
    warning = "" if metrics.passed else f", NOT VERIFIED: {'; '.join(metrics.failures)}"
    return (f"{result.format} {result.precision}: {shown(result.path)} "
            f"{result.size_bytes / 1e6:.2f} MB{', ' + facts if facts else ''}, "
            f"max|diff| {result.max_abs_diff:.1e}, top-1 agree {result.top1_agreement:.0%}"
            f"{accuracy}, {result.wall_s:.1f} s{warning}")


def shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it (shorter log lines)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def file_predictions(path: Path, x: torch.Tensor) -> np.ndarray:
    """Top-1 class of every image in `x` (preprocessed NCHW) from the exported file at `path`,
    run in its runtime with the input layout its sidecar records."""
    from edgeprune.devices.formats import format_of
    from edgeprune.export.registry import EXPORTERS
    from edgeprune.export.validate import run_each, top1

    sidecar = Path(str(path) + ".json")
    layout = json.loads(sidecar.read_text()).get("layout", "NCHW") if sidecar.is_file() \
        else "NCHW"
    runner = EXPORTERS[format_of(path).name].runner(Path(path), layout)
    return top1(run_each(runner, x.numpy().astype(np.float32)))
