"""The file half of `compress`: export a model into the candidate files (the target's format
at every precision tried, the other formats at fp32), recover int8 by quantization-aware
training when post-training quantization alone falls short, measure the candidates
interleaved (on the devices when given), and write RUN/ship/ for the one chosen."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune.console import info
from edgeprune.devices.estimate import estimate_model
from edgeprune.devices.formats import format_named
from edgeprune.devices.results import BenchOptions
from edgeprune.devices.samples import default_samples_path, write_eval_samples
from edgeprune.devices.targets import inference_threads
from edgeprune.errors import EdgepruneError
from edgeprune.export import EvalSet, ExportOptions, ExportResult, export_model
from edgeprune.export.api import file_predictions
from edgeprune.jobs.candidates import (
    Candidate,
    Choice,
    latency_fields,
    measure_files,
    on_each_device,
    speedup,
)
from edgeprune.jobs.compress_types import VERIFY_SAMPLES, Failure, Inputs, Samples
from edgeprune.jobs.policy import qat_epochs, qat_lr, qat_wanted, teacher, tolerance_verdict
from edgeprune.jobs.runs import RunFolder
from edgeprune.jobs.ship import write_ship
from edgeprune.stats import paired_drop
from edgeprune.training import TrainConfig
from edgeprune.training.qat import train_qat


def guarded(failures: list[Failure], name: str, stage: str,
            make: Callable[[], list[ExportResult]]) -> list[ExportResult]:
    """`make()`, or, when it raises, nothing, with the failure recorded in `failures` and said
    in one line: one candidate's failure (a converter that cannot lower an op, a file that
    fails verification) leaves the run to ship the best of the others."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - any failure of this one candidate is recorded
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if not isinstance(e, EdgepruneError):
            reason = f"{type(e).__name__}: {reason}"
        failures.append(Failure(name, stage, reason))
        info(f"candidate: {name} failed at {stage}: {reason}; the run goes on with the others")
        return []


def export_files(inputs: Inputs, run: RunFolder, tag: str, model: torch.nn.Module,
                 samples: Samples, summary: dict[str, Any] | None,
                 failures: list[Failure]) -> list[ExportResult]:
    """Export one model: in the target's format at fp32 and every precision tried, each file's
    top-1 measured on the test images (fp32 must reproduce PyTorch; the others are judged
    later, against the tolerance); in every other requested format at fp32. The runner's
    --eval batch is written once per model. Each file is made in its own guard (`guarded`),
    except dense fp32 in the target's format, the reference every candidate is judged
    against, whose failure ends the run."""
    cfg, spec, ship = inputs.cfg, inputs.spec, inputs.target.ship_format
    verify_x = samples.x[:VERIFY_SAMPLES]
    models = run.path("models")

    def ship_file(precision: str) -> list[ExportResult]:
        return export_model(model, spec, models, verify_x, formats=[ship], stem=tag,
                            verify={"fp32"} if cfg.verify else False, precisions=[precision],
                            calibration=samples.calibration,
                            eval_samples=(samples.x, samples.y), summary=summary)

    results: list[ExportResult] = []
    for precision in dict.fromkeys(["fp32", *inputs.precisions]):
        if (tag, precision) == ("dense", "fp32"):
            results += ship_file(precision)
        else:
            results += guarded(failures, f"{tag} {precision} {ship}", "export",
                               lambda p=precision: ship_file(p))
    for fmt in (f for f in cfg.formats if f != ship):
        results += guarded(failures, f"{tag} fp32 {fmt}", "export", lambda f=fmt: export_model(
            model, spec, models, verify_x, formats=[f], stem=tag, verify=cfg.verify,
            summary=summary))
    if not results:
        return results
    for r in results:
        run.record(r.path, r.format, "export", model=tag, precision=r.precision)
        run.record(r.sidecar, "sidecar", "export", model=tag)
    eval_path = default_samples_path(results[0].path)
    n = samples.shipped
    write_eval_samples(eval_path, samples.x[:n].numpy(), samples.y[:n].numpy())
    run.record(eval_path, "eval-samples", "export", model=tag, count=n)
    return results


def qat_file(inputs: Inputs, run: RunFolder, model: torch.nn.Module,
             dense: torch.nn.Module, dense_files: list[ExportResult],
             pruned_files: list[ExportResult], samples: Samples,
             summary: dict[str, Any], failures: list[Failure]) -> list[ExportResult]:
    """When the pruned int8 file (post-training quantization) is outside the tolerance while
    the pruned fp32 file is within it, recover int8 by quantization-aware training and export
    the result (TFLite targets, --qat-epochs > 0); returns the new file, if any."""
    cfg, ship = inputs.cfg, inputs.target.ship_format
    mine = {r.precision: r for r in pruned_files if r.format == ship}
    dense_fp32 = next(r for r in dense_files if r.format == ship and r.precision == "fp32")
    epochs = qat_epochs(cfg, len(inputs.data.train))
    if epochs <= 0 or not format_named(ship).qat or "int8" not in mine or \
            "fp32" not in mine or dense_fp32.accuracy is None:
        return []
    x, y = validation_images(inputs)
    reference, fp32, int8 = (file_predictions(r.path, x) == y.numpy()
                             for r in (dense_fp32, mine["fp32"], mine["int8"]))
    fp32_verdict, int8_verdict = (tolerance_verdict(reference, right, cfg.max_drop)
                                  for right in (fp32, int8))
    if not qat_wanted(int8_verdict, fp32_verdict):
        return []
    info(f"qat: pruned int8 loses {int8_verdict.drop.points:.2f} points on validation (95% "
         f"bound {int8_verdict.drop.high:.2f}; fp32: {fp32_verdict.drop.points:.2f}, bound "
         f"{fp32_verdict.drop.high:.2f}), outside --max-drop {cfg.max_drop:g}: "
         f"quantization-aware training for {epochs:g} epochs")
    t0 = time.perf_counter()
    tcfg = TrainConfig(epochs=epochs, lr=qat_lr(cfg), batch_size=cfg.batch_size,
                       seed=cfg.seed)
    trained: list[Any] = []

    def make() -> list[ExportResult]:
        trained.append(train_qat(model, inputs.data, tcfg, teacher=teacher(cfg, dense),
                                 evaluate=False))  # its file is evaluated by the export
        return export_model(trained[0].model, inputs.spec, run.path("models"),
                            samples.x[:VERIFY_SAMPLES], formats=[ship], stem="pruned",
                            verify=False, precisions=["int8-qat"],
                            eval_samples=(samples.x, samples.y), summary=summary,
                            options=ExportOptions(quantizer=trained[0].quantizer))

    results = guarded(failures, f"pruned int8 (QAT) {ship}", "qat", make)
    if not results:
        return []
    qat = trained[0]
    for r in results:
        run.record(r.path, r.format, "qat", model="pruned", precision=r.precision)
        run.record(r.sidecar, "sidecar", "qat", model="pruned")
    run.stage_done("qat", wall_s=time.perf_counter() - t0, epochs=epochs,
                   images_per_s=qat.images_per_s, ptq_drop=int8_verdict.drop.points,
                   qat_accuracy=results[0].accuracy)
    return results


def candidates_of(inputs: Inputs, dense: list[ExportResult],
                pruned: list[ExportResult]) -> list[Candidate]:
    """Every file in the target's format, dense fp32 (the reference) first."""
    ship = inputs.target.ship_format
    out = []
    for tag, results in (("dense", dense), ("pruned", pruned)):
        for r in results:
            if r.format == ship:
                qat = r.precision == "int8-qat"
                out.append(Candidate(
                    tag, "int8" if qat else r.precision, r.format, str(r.path), r.size_bytes,
                    r.accuracy, quantization="qat" if qat else
                    "none" if r.precision == "fp32" else "ptq"))
    return out


def paired_figures(inputs: Inputs, run: RunFolder, candidates: list[Candidate],
                   samples: Samples) -> None:
    """Each candidate's test drop with its 95% interval from the paired test predictions
    (against dense fp32, the first candidate) and, when the data has a validation split, its
    validation top-1 and tolerance verdict there (`policy.tolerance_verdict`)."""
    val = validation_images(inputs) if inputs.data.val is not None else None
    test, valid = {}, {}
    for c in candidates:
        path = run.work / c.path
        test[c.name] = file_predictions(path, samples.x) == samples.y.numpy()
        if val is not None:
            valid[c.name] = file_predictions(path, val[0]) == val[1].numpy()
            c.validation_accuracy = float(np.mean(valid[c.name]))
    reference = candidates[0].name
    for c in candidates:
        c.test_drop = paired_drop(test[reference], test[c.name]).to_dict()
        if val is not None:
            c.validation_drop = tolerance_verdict(valid[reference], valid[c.name],
                                                  inputs.cfg.max_drop).to_dict()


def validation_images(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split as one (images, labels) pair."""
    x, y = zip(*inputs.data.loader("val", batch_size=512), strict=True)
    return torch.cat(x), torch.cat([torch.as_tensor(v) for v in y])


def bench_options(inputs: Inputs, on_device: bool) -> BenchOptions:
    cfg = inputs.cfg
    threads = inference_threads(inputs.target, inputs.threads, "device" if on_device else "host")
    return BenchOptions(threads=threads, runs=cfg.bench_runs, min_seconds=cfg.bench_seconds,
                        rounds=cfg.bench_rounds)


def bench_candidates(inputs: Inputs, run: RunFolder, candidates: list[Candidate],
           dense: list[ExportResult], pruned: list[ExportResult]) -> None:
    """Measure the candidates interleaved in one runner process (on every device at once when
    devices are given; the first one's figures are the candidates' own) and the other
    formats' fp32 files on this machine; add the target's estimates."""
    cfg, target = inputs.cfg, inputs.target
    paths = [Path(c.path) for c in candidates]
    others = [r.path for r in dense + pruned if r.format != target.ship_format]
    if cfg.device:
        fleet = on_each_device(list(dict.fromkeys(cfg.device)), lambda device: measure_files(
            paths, device, bench_options(inputs, True), cfg.ssh_options()))
        results = dict(fleet[cfg.primary_device])
        if others:
            results |= measure_files(others, None, bench_options(inputs, False))
        if len(fleet) > 1:
            _record_fleet(candidates, paths, fleet)
    else:
        results = measure_files(paths + others, None, bench_options(inputs, False))
    reference = results[paths[0]]
    for c, path in zip(candidates, paths, strict=True):
        measured = latency_fields(results[path])
        c.latency_ms, c.latency_label = measured["latency_ms"], measured["latency_label"]
        c.speedup = speedup(reference, results[path])
        c.size_ratio = candidates[0].size_bytes / c.size_bytes
        c.estimate_ms = estimate_model(path, target, inputs.threads)[1].latency_ms
        c.estimate_speedup = candidates[0].estimate_ms / c.estimate_ms
        c.estimate_label = f"{target.name} estimate"
        c.path = path.relative_to(run.work).as_posix()
    for r in dense + pruned:
        r.details["bench"] = latency_fields(results[r.path])
    for c in candidates:
        info(f"bench: {c.name} p50 {c.p50:.3f} ms ({c.latency_label}), "
             f"{c.speedup['value']:.2f}x dense fp32 ({c.speedup['low']:.2f}-"
             f"{c.speedup['high']:.2f} over {c.speedup['rounds']} rounds), estimate "
             f"{c.estimate_ms:.3f} ms on {target.name} ({c.estimate_speedup:.2f}x)")
    run.stage_done("measurements", files={c.path: c.latency_ms for c in candidates})


def _record_fleet(candidates: list[Candidate], paths: list[Path],
                  fleet: dict[str, dict[Path, Any]]) -> None:
    """Every device's p50 and speedup over dense fp32 on each candidate, and one line each."""
    for device, results in fleet.items():
        for c, path in zip(candidates, paths, strict=True):
            c.fleet = (c.fleet or {}) | {device: {
                **latency_fields(results[path]), "speedup": speedup(results[paths[0]],
                                                                    results[path])}}
        info(f"bench on {device}: " + ", ".join(
            f"{c.name} {results[p].p50_ms:.3f} ms" for c, p in zip(candidates, paths,
                                                                   strict=True)))


def ship_choice(inputs: Inputs, run: RunFolder, choice: Choice, samples: Samples) -> None:
    """Write RUN/ship/ for the shipped candidate and record its files."""
    t0 = time.perf_counter()
    shipped = choice.shipped.to_dict()
    eval_set = EvalSet(samples.x.numpy(), samples.y.numpy(), choice.shipped.accuracy or 0.0)
    files = write_ship(run.work, run.final, inputs.target, inputs.cfg.model, shipped,
                       choice.reason, inputs.threads, samples.x[:VERIFY_SAMPLES].numpy(),
                       eval_set)
    for path in files:
        run.record(path, "ship", "ship")
    for path in run.work.joinpath("models").glob("*.ort*"):
        run.record(path, "ort" if path.suffix == ".ort" else "sidecar", "ship")
    run.stage_done("ship", wall_s=time.perf_counter() - t0, file=shipped["path"],
                   files=len(files))
    info(f"ship: {run.final / 'ship'} ({len(files)} files: the model, runner.py, predict.py, "
         "requirements.txt, SHA256SUMS, README.md)")


def by_format(results: list[ExportResult]) -> dict[str, dict[str, Any]]:
    """The fp32 file of each format with its measurement (the dense/pruned comparison)."""
    out = {}
    for r in results:
        if r.precision == "fp32":
            run_root = r.path.parent.parent
            out[r.format] = {"path": r.path.relative_to(run_root).as_posix(),
                             "precision": r.precision, "size_bytes": r.size_bytes,
                             "max_abs_diff": r.max_abs_diff, "top1_agreement": r.top1_agreement,
                             "accuracy": r.accuracy, "export_s": r.wall_s,
                             **r.details.get("bench", {})}
    return out


def say_choice(choice: Choice, candidates: list[Candidate]) -> None:
    for c in candidates:
        mark = "shipped" if c is choice.shipped else (
            "within tolerance" if c.within_tolerance else "outside tolerance")
        info(f"candidate: {c.name}: top-1 {c.accuracy * 100:.2f}% "
             f"({0.0 - c.drop_points:+.2f} points), {c.size_bytes / 1e6:.2f} MB, p50 {c.p50:.3f} ms"
             f" ({c.latency_label}), {mark}")
    info(f"ship: {choice.shipped.name if choice.shipped else 'nothing'}: {choice.reason}")
