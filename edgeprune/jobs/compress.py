"""`compress`: score -> prune -> fine-tune -> export -> bench -> report, one run folder per call.

Every stage is a public function of its own package; this module only chains them, writes
their outputs into the run folder and records them in the manifest.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeprune.console import info, progress_bar
from edgeprune.data import DataBundle
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_text
from edgeprune.jobs.config import CompressConfig, dump_config, merge
from edgeprune.jobs.loading import check_outputs, load_model_and_data, reference_batches, take
from edgeprune.jobs.runs import RunFolder
from edgeprune.models import LoadedModel, parameter_shapes, save_checkpoint
from edgeprune.pruning.search import count
from edgeprune.spec import InputSpec
from edgeprune.training import TrainConfig, TrainResult, evaluate, train

FINETUNE_SAMPLES = 120_000  # images fine-tuning sees by default: 2 Fashion-MNIST epochs
EVAL_SAMPLES = 100  # shipped beside each export for the on-device runner's --eval


@dataclass
class ModelFigures:
    """What the summary compares between the dense and the pruned model."""

    accuracy: float
    params: int
    macs: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CompressResult:
    """The outcome of a compress run: where it is and the before/after figures."""

    run_dir: Path
    target: str
    dense: ModelFigures
    pruned: ModelFigures
    wall_s: float
    stages: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def _auto_epochs(cfg: CompressConfig, data: DataBundle) -> float:
    """Enough epochs for fine-tuning to see about FINETUNE_SAMPLES images, at most 10.

    On the demo model at -50% FLOPs, 1 epoch of Fashion-MNIST left a 1.28-point drop."""
    if cfg.epochs is not None:
        return cfg.epochs
    return float(min(10, max(1, math.ceil(FINETUNE_SAMPLES / len(data.train)))))


def _score_and_prune(cfg: CompressConfig, model: torch.nn.Module, spec: InputSpec,
                     data: DataBundle, round_to: int,
                     scores: dict[str, torch.Tensor] | None = None):
    from edgeprune.criteria import get_criterion
    from edgeprune.pruning import prune

    t0 = time.perf_counter()
    seen = 0
    if scores is None:
        criterion = get_criterion(cfg.criterion)
        batches = reference_batches(data, cfg.data_dir, cfg.score_samples,
                                    cfg.samples_per_class, cfg.seed)
        scores = criterion.score(copy.deepcopy(model), batches if criterion.needs_data else None)
        seen = sum(len(b[1]) for b in batches) if criterion.needs_data else 0
        info(f"score: {cfg.criterion} on {seen} samples, {len(scores)} layers, "
             f"{time.perf_counter() - t0:.1f} s")
    else:
        info(f"score: reusing the {cfg.criterion} scores given for {len(scores)} layers")
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = prune(model, torch.zeros(1, *spec.shape), scores=scores,
                   flops_reduction=cfg.flops_reduction, round_to=round_to,
                   global_ranking=cfg.global_ranking)
    prune_s = time.perf_counter() - t0
    info(f"prune: MACs {result.macs_before / 1e6:.1f}M -> {result.macs_after / 1e6:.1f}M "
         f"(-{result.flops_reduction * 100:.1f}%), params {result.params_before / 1e3:.0f}k -> "
         f"{result.params_after / 1e3:.0f}k, channels rounded to {round_to}, {prune_s:.1f} s")
    return scores, result, score_s, prune_s, seen


def _export(cfg: CompressConfig, run: RunFolder, tag: str, model: torch.nn.Module,
            spec: InputSpec, samples: tuple[torch.Tensor, torch.Tensor]) -> dict[str, dict]:
    """Export one model to every requested format, verified on the first 32 samples, and
    record the files; all samples are saved for the on-device runner's --eval."""
    from edgeprune.devices.samples import default_samples_path, write_eval_samples
    from edgeprune.export import export_model

    files: dict[str, dict] = {}
    x, y = samples
    for r in export_model(model, spec, run.path("models"), x[:32], formats=cfg.formats,
                          stem=tag, verify=cfg.verify):
        run.record(r.path, r.format, "export", model=tag, precision=r.precision)
        run.record(r.sidecar, "sidecar", "export", model=tag)
        eval_path = default_samples_path(r.path)
        if not eval_path.exists():  # the runner's --eval batch, shared by a model's formats
            write_eval_samples(eval_path, x.numpy(), y.numpy())
            run.record(eval_path, "eval-samples", "export", model=tag, count=len(y))
        files[r.format] = {
            "path": r.path.relative_to(run.work).as_posix(), "precision": r.precision,
            "size_bytes": r.size_bytes, "max_abs_diff": r.max_abs_diff,
            "top1_agreement": r.top1_agreement, "export_s": r.wall_s}
    return files


def _bench(cfg: CompressConfig, run: RunFolder, models: dict[str, dict[str, dict]],
           threads: int) -> None:
    """Measure every exported file on this machine (labelled host) and add the figures."""
    from edgeprune.devices.bench import bench_local

    jobs = [(tag, fmt, f) for tag, files in models.items() for fmt, f in files.items()]
    with progress_bar(len(jobs), "benchmarking") as advance:
        for tag, fmt, f in jobs:
            b = bench_local(run.work / f["path"], threads=threads, runs=cfg.bench_runs,
                            min_seconds=cfg.bench_seconds)
            f["latency_ms"] = {"p50": b.p50_ms, "p90": b.p90_ms, "mean": b.latency_ms["mean"]}
            f["latency_label"] = f"host, {threads} thread{'s' if threads > 1 else ''}"
            f["runtime"] = f"{b.runtime} {b.runtime_version}"
            advance()
            info(f"bench: {tag}.{fmt} p50 {b.p50_ms:.3f} ms, p90 {b.p90_ms:.3f} ms "
                 f"(host, {threads} threads, {b.runs} runs)")


def compress(config: CompressConfig | None = None, overwrite: bool = False,
             scores: dict[str, torch.Tensor] | None = None, **options: Any) -> CompressResult:
    """Run the whole pipeline and publish a complete run folder.

    `options` override fields of `config` (same names as the CLI flags). The input model
    file is only read. An interrupted run resumes fine-tuning when the same command is run
    again; a finished run is replaced only with `overwrite`. `scores` ({layer: per-channel
    tensor} of `config.criterion`, as in scores.pt) skips scoring, e.g. when a sweep prunes one
    model to several FLOPs levels."""
    from edgeprune.devices.targets import load_target

    cfg = merge({}, options, base=config, override_source="compress option")
    t_start = time.perf_counter()
    from edgeprune.criteria import get_criterion

    target = load_target(cfg.target)
    get_criterion(cfg.criterion)  # an unknown name fails before any data is read
    md = load_model_and_data(cfg.model, cfg.weights, cfg.dataset, cfg.data_dir, cfg.input_size,
                             cfg.mean, cfg.std, cfg.skip_bad_images, cfg.workers, cfg.seed)
    loaded, data, spec = md.loaded, md.data, md.spec
    check_outputs(loaded.model, spec, data.spec.num_classes)
    run = RunFolder.open(cfg.run_dir(), _config_dict(cfg), overwrite,
                         protect=tuple(Path(p) for p in (cfg.model, cfg.weights) if p))
    info(f"run folder {run.final} (target {target.name}: {target.cpu}); data {data.name} "
         f"({len(data.train)} train / {len(data.test)} test)")
    atomic_write_text(run.path("config.toml"), dump_config(cfg))
    run.record(run.work / "config.toml", "config", "compress")
    atomic_write_text(run.path("dataset.json"), json.dumps(data.describe(), indent=1))
    run.record(run.work / "dataset.json", "dataset", "compress")
    try:
        result = _run_stages(cfg, run, loaded, spec, data, target, scores)
    except EdgepruneError:
        run.discard()
        raise
    result.wall_s = time.perf_counter() - t_start
    run.stage_done("total", wall_s=result.wall_s)
    atomic_write_text(run.path("summary.json"), json.dumps(result.to_dict(), indent=2,
                                                           default=str))
    _report(run)
    result.run_dir = run.publish()
    return result


def _report(run: RunFolder) -> None:
    """report.html and report.json from the finished run folder, recorded like every file."""
    from edgeprune.report import build_report

    t0 = time.perf_counter()
    html, data = build_report(run.work)
    run.record(html, "report", "report")
    run.record(data, "report-data", "report")
    info(f"report: {html.name} ({html.stat().st_size / 1e3:.0f} kB) and {data.name}, "
         f"{time.perf_counter() - t0:.1f} s")


def _config_dict(cfg: CompressConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["formats"] = list(cfg.formats)
    return d


def _run_stages(cfg: CompressConfig, run: RunFolder, loaded: LoadedModel, spec: InputSpec,
                data: DataBundle, target,
                scores: dict[str, torch.Tensor] | None = None) -> CompressResult:
    dense = loaded.model.eval()
    t0 = time.perf_counter()
    dense_acc = evaluate(dense, data, limit=cfg.eval_limit, description="evaluating dense")
    dense_macs, dense_params = count(dense, torch.zeros(1, *spec.shape))
    info(f"dense: top-1 {dense_acc * 100:.2f}% on {len(data.test)} test images, "
         f"{dense_macs / 1e6:.1f}M MACs, {dense_params / 1e3:.0f}k params")
    run.stage_done("evaluate", wall_s=time.perf_counter() - t0)

    reused = scores is not None
    scores, pruned, score_s, prune_s, seen = _score_and_prune(cfg, dense, spec, data,
                                                              target.simd_width, scores)
    run.stage_done("score", wall_s=score_s, criterion=cfg.criterion, reused=reused,
                   samples=seen)
    run.stage_done("prune", wall_s=prune_s, flops_reduction=pruned.flops_reduction,
                   channels={k: list(v) for k, v in pruned.channels.items()},
                   kept=pruned.kept, protected=pruned.protected)
    torch.save({k: v.cpu() for k, v in scores.items()}, run.path("scores.pt"))
    run.record(run.work / "scores.pt", "scores", "score")

    if cfg.bn_recalibration > 0:
        from edgeprune.pruning.bn_recalibration import recalibrate_bn

        t0 = time.perf_counter()
        recalibrate_bn(pruned.model, data.reference(cfg.bn_recalibration, seed=cfg.seed + 1,
                                                    batch_size=256))
        run.stage_done("bn-recalibration", wall_s=time.perf_counter() - t0,
                       samples=cfg.bn_recalibration)
        info(f"bn-recalibration: BatchNorm statistics re-estimated on {cfg.bn_recalibration} "
             f"training images, {time.perf_counter() - t0:.1f} s")

    epochs = _auto_epochs(cfg, data)
    ft = TrainResult()
    if epochs > 0:
        tcfg = TrainConfig(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
        ft = train(pruned.model, data, tcfg, teacher=dense,
                   state_path=run.path("finetune.state"), description="fine-tuning")
    model = pruned.model.cpu().eval()
    pruned_acc = evaluate(model, data, limit=cfg.eval_limit, description="evaluating pruned")
    run.stage_done("finetune", wall_s=ft.wall_s, epochs=epochs, history=ft.history)
    done = f"{epochs:g} epochs with distillation" if epochs > 0 else "none (--epochs 0)"
    info(f"fine-tune: {done}, top-1 {pruned_acc * 100:.2f}% "
         f"({(pruned_acc - dense_acc) * 100:+.2f} points), {ft.wall_s:.0f} s")

    meta = {"pruned_from": loaded.arch.ref, "criterion": cfg.criterion,
            "flops_reduction": pruned.flops_reduction, "test_acc": pruned_acc}
    save_checkpoint(run.path("model.pt"), model, loaded.arch, spec, meta)
    run.record(run.work / "model.pt", "checkpoint", "finetune")
    atomic_write_text(run.path("architecture.json"),
                      json.dumps(parameter_shapes(model), indent=1))
    run.record(run.work / "architecture.json", "architecture", "finetune")

    t0 = time.perf_counter()
    samples = take(data, "test", EVAL_SAMPLES, cfg.seed)
    threads = max(1, min(target.threads, os.cpu_count() or 1))
    dense_files = _export(cfg, run, "dense", dense, spec, samples)
    pruned_files = _export(cfg, run, "pruned", model, spec, samples)
    _bench(cfg, run, {"dense": dense_files, "pruned": pruned_files}, threads)
    run.stage_done("export+bench", wall_s=time.perf_counter() - t0, threads=threads)
    return CompressResult(
        run_dir=run.final, target=target.name,
        dense=ModelFigures(dense_acc, dense_params, dense_macs, dense_files),
        pruned=ModelFigures(pruned_acc, pruned.params_after, pruned.macs_after, pruned_files),
        wall_s=0.0, stages=run.manifest["stages"])
