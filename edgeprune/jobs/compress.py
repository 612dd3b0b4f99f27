"""`compress`: score -> prune -> fine-tune -> export -> bench -> choose -> report, one run
folder per call.

This module keeps the order of the stages and little else: the model stages are in
`compress_model`, the file stages (export, QAT, measurements, ship/) in `compress_files`, the
decisions (epochs, precisions, QAT, goals) in `policy`, the choice between candidate files in
`candidates`. The target is a contract, resolved once in `_resolve`: its profile gives the
channel rounding, the threads, the runtime (so the format shipped) and the precisions tried;
compress exports each candidate (dense and pruned, at each precision), measures their
accuracy on the test images and their latency side by side, and ships the fastest within the
accuracy tolerance.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgeprune import accelerator, distributed
from edgeprune.console import info, set_quiet
from edgeprune.data.bundle import held_out_size
from edgeprune.devices.bench import get_backend
from edgeprune.devices.formats import format_named
from edgeprune.devices.targets import inference_threads, load_target
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_text
from edgeprune.jobs.candidates import choose, decided_on_device, judge
from edgeprune.jobs.compress_files import (
    bench_candidates,
    by_format,
    candidates_of,
    export_files,
    paired_figures,
    qat_file,
    say_choice,
    ship_choice,
)
from edgeprune.jobs.compress_model import recover, save_model, score_and_prune
from edgeprune.jobs.compress_types import (
    CompressResult,
    Failure,
    Inputs,
    ModelFigures,
    PrunedModel,
    Samples,
)
from edgeprune.jobs.config import CompressConfig, dump_config, merge
from edgeprune.jobs.deepest_cut import search_deepest_cut
from edgeprune.jobs.loading import load_model_and_data
from edgeprune.jobs.policy import precisions_to_try
from edgeprune.jobs.runs import RunFolder
from edgeprune.pruning import FlopsReduction
from edgeprune.pruning.search import count
from edgeprune.training import evaluate

__all__ = ["CompressResult", "ModelFigures", "compress"]


def compress(config: CompressConfig | None = None, overwrite: bool = False,
             scores: dict[str, torch.Tensor] | None = None, trust_code: bool = False,
             **options: Any) -> CompressResult | None:
    """Run the whole pipeline and publish a complete run folder.

    Under `torchrun --nproc-per-node N -m edgeprune compress ...` every process scores its
    share of the reference images and fine-tunes under DistributedDataParallel; rank 0 alone
    writes the run folder and returns the result, the others return None (see `_follow`).

    `options` override fields of `config` (same names as the CLI flags). The input model
    file is only read. An interrupted run resumes fine-tuning when the same command is run
    again; a finished run is replaced only with `overwrite`. `scores` ({layer: per-channel
    tensor} of `config.criterion`, as in scores.pt) skips scoring, e.g. when a sweep prunes one
    model to several FLOPs levels. When no candidate is within `max_drop`, the run is still
    published, with `shipped` None and the reason. `trust_code`: see
    `edgeprune.models.load_model`."""
    cfg = merge({}, options, base=config, override_source="compress option")
    t_start = time.perf_counter()
    if distributed.init_from_env():
        _check_distributable(cfg)
    accelerator.use(cfg.accelerator)
    inputs = _resolve(cfg, trust_code)
    if not distributed.is_main():
        return _follow(inputs, scores)
    run = RunFolder.open(cfg.run_dir(), _config_dict(cfg), overwrite,
                         protect=tuple(Path(p) for p in (cfg.model, cfg.weights) if p))
    distributed.broadcast(str(run.path("finetune.state")))
    try:
        return _complete(run, inputs, scores, t_start)
    except OSError as e:  # a full or read-only disk: one line, and no half-written run
        run.discard()
        raise EdgepruneError(f"cannot write run {run.final}: {e.strerror or e} "
                             f"({e.filename or run.work})") from None
    except Exception:
        if not run.manifest["stages"]:  # nothing finished: nothing worth resuming
            run.discard()
            raise
        info(f"compress failed after its {', '.join(run.manifest['stages'])} stages: "
             f"{run.work} keeps their files; run the same command again to resume there")
        raise
    finally:
        run.release()  # a kill or Ctrl-C keeps the .partial folder to resume, never the lock


def _check_distributable(cfg: CompressConfig) -> None:
    """What several processes cannot do alike, refused before any work."""
    if cfg.searches:
        raise EdgepruneError("the level search runs in one process; under torchrun pin the "
                             "level with --flops-reduction (e.g. 0.5)")
    if cfg.step_epochs > 0:
        raise EdgepruneError("--step-epochs fine-tunes between pruning steps in each process "
                             "on its own, which torchrun's processes would not do alike; "
                             "run it in one process, or use --step-epochs 0")


def _follow(inputs: Inputs, scores: dict[str, torch.Tensor] | None) -> None:
    """Ranks > 0 of a torchrun group: score their share of the reference images, prune as
    rank 0 does (the same scores give the same model), fine-tune under
    DistributedDataParallel with it, and leave; rank 0 alone writes the run folder, exports,
    measures and reports. Their own stage records go to a scratch folder, deleted after."""
    set_quiet(True)  # rank 0 tells the story
    state_path = Path(distributed.broadcast(None))
    goal = FlopsReduction(inputs.cfg.flops_reduction)  # pinned: torchrun refuses the search
    with tempfile.TemporaryDirectory(prefix="edgeprune-rank") as scratch:
        run = RunFolder.open(Path(scratch) / "run", _config_dict(inputs.cfg))
        try:
            _, pruned = score_and_prune(inputs, run, inputs.loaded.model.eval(), goal, scores)
            recover(inputs, run, pruned.model, inputs.loaded.model.eval(), state_path)
        finally:
            run.discard()
            run.release()


def _complete(run: RunFolder, inputs: Inputs, scores: dict[str, torch.Tensor] | None,
              t_start: float) -> CompressResult:
    """Every stage of a run opened by `compress`, then its summary, report and publishing."""
    cfg, data, target = inputs.cfg, inputs.data, inputs.target
    info(f"run folder {run.final} (target {target.name}: {target.cpu}, {target.ship_format} "
         f"{'/'.join(inputs.precisions)}); data {data.name} ({len(data.train)} train / "
         f"{len(data.test)} test)")
    atomic_write_text(run.path("config.toml"), dump_config(cfg))
    run.record(run.work / "config.toml", "config", "compress")
    atomic_write_text(run.path("dataset.json"), json.dumps(data.describe(), indent=1))
    run.record(run.work / "dataset.json", "dataset", "compress")
    result = _run_stages(inputs, run, scores)
    result.wall_s = time.perf_counter() - t_start
    run.stage_done("total", wall_s=result.wall_s)
    atomic_write_text(run.path("summary.json"), json.dumps(result.to_dict(), indent=2,
                                                           default=str))
    run.record(run.work / "summary.json", "summary", "compress")
    _report(run)
    result.run_dir = run.publish()
    return result


def _resolve(cfg: CompressConfig, trust_code: bool = False) -> Inputs:
    """Load and check every input named by the options, before any work."""
    from edgeprune.criteria import get_criterion

    target = load_target(cfg.target)
    get_criterion(cfg.criterion)  # an unknown name fails before any data is read
    if target.ship_format not in cfg.formats:
        raise EdgepruneError(f"--formats {','.join(cfg.formats)} lacks {target.ship_format}, "
                             f"the format target {target.name}'s runtime ({target.runtime}) "
                             "loads; add it")
    for device in (cfg.device or ()) if distributed.is_main() else ():
        backend = get_backend(device, cfg.ssh_options())  # a malformed URL fails here
        check = getattr(backend, "check", None)
        if check is not None:  # reachable, with Python, numpy and the runtime, before work
            info(f"device: {check([format_named(target.ship_format).extension])}")
    md = load_model_and_data(cfg.model, cfg.weights, cfg.dataset, cfg.data_dir, cfg.input_size,
                             cfg.mean, cfg.std, cfg.skip_bad_images, cfg.workers, cfg.seed,
                             trust_code=trust_code)
    # every decision (level, QAT, the file to ship) is made on images the report never uses
    md.data = md.data.with_validation(held_out_size(len(md.data.test)), cfg.seed, "test")
    return Inputs(cfg, target, md.loaded, md.data, md.spec,
                  precisions_to_try(cfg, target, len(md.data.train)),
                  inference_threads(target, cfg.threads))


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


def _searched(inputs: Inputs, run: RunFolder, dense: torch.nn.Module, samples: Samples,
              scores: dict[str, torch.Tensor] | None) -> PrunedModel:
    """The level search's winner (see `search_deepest_cut`) with its figures."""
    outcome = search_deepest_cut(inputs, run, dense, samples, scores)
    params = count(outcome.model, torch.zeros(1, *inputs.spec.shape))[1]
    search = {"trials": [t.to_dict() for t in outcome.state.trials],
              "stopped": outcome.state.stopped, "found": outcome.found,
              "shipped_level": outcome.trial.level, "decided_on": "validation"}
    return PrunedModel(outcome.model, outcome.trial.achieved, outcome.trial.macs, params,
                       search)


def _run_stages(inputs: Inputs, run: RunFolder,
                scores: dict[str, torch.Tensor] | None) -> CompressResult:
    cfg, data, spec, target = inputs.cfg, inputs.data, inputs.spec, inputs.target
    dense = inputs.loaded.model.eval()
    t0 = time.perf_counter()
    dense_acc = evaluate(dense, data, limit=cfg.eval_limit, description="evaluating dense")
    dense_macs, dense_params = count(dense, torch.zeros(1, *spec.shape))
    shown = min(cfg.eval_limit or len(data.test), len(data.test))
    info(f"dense: top-1 {dense_acc * 100:.2f}% on {shown} test images, "
         f"{dense_macs / 1e6:.1f}M MACs, {dense_params / 1e3:.0f}k params")
    run.stage_done("evaluate", wall_s=time.perf_counter() - t0)

    samples = Samples.draw(inputs)
    failures: list[Failure] = []
    t0 = time.perf_counter()
    dense_files = export_files(inputs, run, "dense", dense, samples, None, failures)
    run.stage_done("export-dense", wall_s=time.perf_counter() - t0)

    if cfg.searches:
        pruned = _searched(inputs, run, dense, samples, scores)
    else:
        _, pruned = score_and_prune(inputs, run, dense, FlopsReduction(cfg.flops_reduction),
                                    scores)
    model, pruned_acc, ft = recover(inputs, run, pruned.model, dense,
                                    run.path("finetune.state"),
                                    epochs=0 if cfg.searches else None)
    save_model(inputs, run, model, pruned, pruned_acc)

    t0 = time.perf_counter()
    summary = {"pruned_from": inputs.loaded.arch.ref, "criterion": cfg.criterion,
               "flops_reduction": pruned.flops_reduction, "test_acc": pruned_acc}
    pruned_files = export_files(inputs, run, "pruned", model, samples, summary, failures)
    run.stage_done("export-pruned", wall_s=time.perf_counter() - t0)

    pruned_files += qat_file(inputs, run, model, dense, dense_files, pruned_files, samples,
                             summary, failures)
    t0 = time.perf_counter()
    candidates = candidates_of(inputs, dense_files, pruned_files)
    bench_candidates(inputs, run, candidates, dense_files, pruned_files)
    reference = next(c for c in candidates if (c.model, c.precision) == ("dense", "fp32"))
    paired_figures(inputs, run, candidates, samples)
    on_device, decided_by = decided_on_device(candidates, cfg.primary_device, target.name)
    judge(candidates, reference.accuracy, cfg.max_drop, cfg.latency_ms, on_device)
    offered = [c for c in candidates if c.precision in inputs.precisions]
    choice = choose(offered, cfg.max_drop, cfg.latency_ms,
                    "measured on the device" if on_device else "roofline estimate",
                    by_estimate=not on_device)
    run.stage_done("bench", wall_s=time.perf_counter() - t0, threads=inputs.threads,
                   device=cfg.primary_device or "local", devices=list(cfg.device or ()),
                   rounds=cfg.bench_rounds, decided_by=decided_by)
    say_choice(choice, offered)
    if choice.shipped is not None:
        ship_choice(inputs, run, choice, samples)
    return CompressResult(
        run_dir=run.final, target=target.name,
        dense=ModelFigures(dense_acc, dense_params, dense_macs, by_format(dense_files)),
        pruned=ModelFigures(pruned_acc, pruned.params_after, pruned.macs_after,
                            by_format(pruned_files)),
        wall_s=0.0, stages=run.manifest["stages"],
        candidates=[c.to_dict() for c in offered],
        shipped=choice.shipped.to_dict() if choice.shipped else None, reason=choice.reason,
        max_drop=cfg.max_drop, latency_budget_ms=cfg.latency_ms, decided_by=decided_by,
        failed=[asdict(f) for f in failures],
        search=pruned.search if isinstance(pruned, PrunedModel) else None)
