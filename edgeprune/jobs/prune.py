"""`prune_file`: what `edgeprune prune` does, as a library function with the same argument
names: load a model and data, score, prune to one goal with one schedule, optionally measure
dense and pruned on this machine, and save the pruned model as an edgeprune checkpoint."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.console import info
from edgeprune.criteria import get_criterion
from edgeprune.devices.bench import BenchOptions, get_backend
from edgeprune.devices.targets import inference_threads, load_target
from edgeprune.export import export_model
from edgeprune.jobs.checks import check_options, check_output_file
from edgeprune.jobs.config import CompressConfig
from edgeprune.jobs.loading import load_model_and_data, reference_batches, score_batch_size
from edgeprune.jobs.policy import choose_goal, choose_schedule, fine_tune_between
from edgeprune.models import save_checkpoint
from edgeprune.models.copying import clone
from edgeprune.pruning.api import RESIDUAL_STREAM_CHOICES, PruneResult, prune
from edgeprune.spec import InputSpec


def export_and_measure(model: nn.Module, spec: InputSpec, fmt: str, threads: int,
                       samples: torch.Tensor, device: str = "local") -> float:
    """p50 latency (ms) of `model` exported to `fmt` and run on `device` (`local`: this
    machine; `ssh://user@host`: the device, through the device harness)."""
    with tempfile.TemporaryDirectory() as tmp:
        results = export_model(clone(model).eval(), spec, Path(tmp), samples[:8],
                               formats=(fmt,), stem="model")
        return get_backend(device).bench([results[0].path],
                                         BenchOptions(threads=threads))[0].p50_ms


DEFAULTS = CompressConfig()


def prune_file(model: str = DEFAULTS.model, weights: Path | None = None,
               criterion: str = DEFAULTS.criterion, score_samples: int = DEFAULTS.score_samples,
               score_batch: int | None = None, samples_per_class: int | None = None,
               target: str = DEFAULTS.target,
               flops_reduction: float | None = None, params_reduction: float | None = None,
               latency_ms: float | None = None, layer_ratios: str | None = None,
               threads: int | None = None, round_to: int | None = None,
               min_channels: int | None = None, uniform: bool = False,
               schedule: str = DEFAULTS.schedule, step: float = DEFAULTS.step,
               step_epochs: float = DEFAULTS.step_epochs, lr: float = DEFAULTS.lr,
               reestimate: bool = DEFAULTS.reestimate,
               residual_stream: str = DEFAULTS.residual_stream,
               measure_on: str | None = None,
               out: Path = Path("pruned.pt"), overwrite: bool = False,
               seed: int = DEFAULTS.seed, **data: Any) -> dict[str, Any]:
    """Prune a model file for a target and save it; returns the summary the CLI prints.
    `data`: the data options of `jobs.loading.load_data` (dataset, data_dir, ...)."""
    out = Path(out)
    check_output_file(out, overwrite)
    check_options(("--score-samples", score_samples, score_samples >= 1, "at least 1"),
                  ("--score-batch", score_batch, score_batch is None or score_batch >= 1,
                   "at least 1, e.g. 16"),
                  ("--samples-per-class", samples_per_class,
                   samples_per_class is None or samples_per_class >= 1, "at least 1"),
                  ("--step", step, 0 < step < 1, "between 0 and 1, e.g. 0.05"),
                  ("--step-epochs", step_epochs, step_epochs >= 0, "0 (none) or more"),
                  ("--lr", lr, lr > 0, "a positive learning rate, e.g. 0.01"),
                  ("--residual-stream", residual_stream,
                   residual_stream in RESIDUAL_STREAM_CHOICES, "prune or keep"),
                  ("--threads", threads, threads is None or threads >= 1, "at least 1"))
    profile = load_target(target)
    crit = get_criterion(criterion)
    md = load_model_and_data(model, weights, seed=seed, **data)
    loaded, spec = md.loaded, md.spec
    x = torch.zeros(1, *spec.shape)
    threads = inference_threads(profile, threads)
    fmt = profile.formats[0]
    samples = reference_batches(md.data, data.get("data_dir"), max(score_samples, 64),
                                samples_per_class, seed,
                                score_batch_size(loaded.model, spec, score_batch))
    measured_dense = None
    if measure_on:
        measured_dense = export_and_measure(loaded.model, spec, fmt, threads, samples[0][0],
                                            measure_on)
        info(f"measure: dense {fmt} p50 {measured_dense:.3f} ms on {measure_on}, "
             f"{threads} threads")
    goal = choose_goal(flops_reduction, params_reduction, latency_ms, layer_ratios, profile,
                       threads, measured_dense)
    between = fine_tune_between(loaded.model, md.data, step_epochs, lr, seed)
    plan = choose_schedule(schedule, step, between)
    t0 = time.perf_counter()
    result = prune(loaded.model, x, criterion=crit, batches=samples if crit.needs_data or
                   reestimate else None, round_to=round_to or profile.simd_width,
                   min_channels=min_channels, global_ranking=not uniform, goal=goal,
                   schedule=plan, reestimate=reestimate, residual_stream=residual_stream)
    wall = time.perf_counter() - t0
    if measure_on:
        pruned_ms = export_and_measure(result.model, spec, fmt, threads, samples[0][0], measure_on)
        info(f"measure: pruned {fmt} p50 {pruned_ms:.3f} ms on {measure_on}, {threads} threads")
        if result.latency is not None:
            result.latency.measured_after_ms = pruned_ms
    summary = _summary(result, target, criterion)
    if measure_on:
        summary["measured"] = {"on": measure_on, "format": fmt, "threads": threads,
                               "dense_ms": measured_dense, "pruned_ms": pruned_ms}
    save_checkpoint(out, result.model.cpu(), loaded.arch, spec, {"pruned": summary})
    info(f"prune: saved {out}: MACs {result.macs_before / 1e6:.1f}M -> "
         f"{result.macs_after / 1e6:.1f}M (-{result.flops_reduction:.1%}), params "
         f"{result.params_before / 1e3:.0f}k -> {result.params_after / 1e3:.0f}k, {wall:.1f} s")
    return summary | {"out": str(out), "wall_s": wall}


def _summary(result: PruneResult, target: str, criterion: str) -> dict[str, Any]:
    return {"target": target, "criterion": criterion} | result.to_dict()
