"""`compress`: score -> prune -> fine-tune -> export -> bench -> choose -> report, one run
folder per call.

Every stage is a public function of its own package; this module only chains them, writes
their outputs into the run folder and records them in the manifest. The target is a contract:
its profile gives the channel rounding, the threads, the runtime (so the format shipped) and
the precisions tried; compress exports each candidate (dense and pruned, at each precision),
measures their accuracy on the test images and their latency side by side, and ships the
fastest within the accuracy tolerance (see `candidates`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeprune import accelerator, distributed
from edgeprune.console import info, set_quiet
from edgeprune.data import DataBundle
from edgeprune.devices.bench import get_backend
from edgeprune.devices.estimate import estimate_model
from edgeprune.devices.results import BenchOptions
from edgeprune.devices.samples import default_samples_path, write_eval_samples
from edgeprune.devices.ssh import SshOptions
from edgeprune.devices.targets import TargetProfile, load_target
from edgeprune.errors import EdgepruneError
from edgeprune.export import EvalSet, ExportOptions, ExportResult, export_model
from edgeprune.export.precision import MIN_CALIBRATION_SAMPLES
from edgeprune.files import atomic_write_text
from edgeprune.jobs.candidates import (
    Candidate,
    Choice,
    candidate_precisions,
    choose,
    judge,
    latency_fields,
    measure,
    on_each_device,
    speedup,
)
from edgeprune.jobs.config import CompressConfig, dump_config, merge
from edgeprune.jobs.loading import (
    check_outputs,
    load_model_and_data,
    reference_batches,
    score_batch_size,
    take,
)
from edgeprune.jobs.prune import choose_schedule, fine_tune_between
from edgeprune.jobs.runs import RunFolder
from edgeprune.jobs.ship import write_ship
from edgeprune.models import LoadedModel, parameter_shapes, save_checkpoint
from edgeprune.pruning import FlopsReduction, Goal, LatencyBudget, prune
from edgeprune.pruning.search import count
from edgeprune.spec import InputSpec
from edgeprune.training import TrainConfig, TrainResult, evaluate, train
from edgeprune.training.qat import train_qat

FINETUNE_SAMPLES = 120_000  # images fine-tuning sees by default: 2 Fashion-MNIST epochs
MAX_AUTO_EPOCHS = 60  # ... but no more epochs than this on a small dataset
QAT_SAMPLES = 15_000  # images quantization-aware training sees by default ...
MAX_QAT_EPOCHS = 10  # ... in at most this many epochs
EVAL_SAMPLES = 100  # shipped beside each model for the on-device runner's --eval ...
EVAL_SAMPLES_BYTES = 8_000_000  # ... fewer when 100 would make the batch larger than this
CALIBRATION_SAMPLES = 512  # training images int8 activation ranges are calibrated on
VERIFY_SAMPLES = 32  # test images every file's logits are compared with PyTorch's on


@dataclass
class ModelFigures:
    """What the summary compares between the dense and the pruned model: PyTorch's figures
    and, per format, the fp32 file."""

    accuracy: float
    params: int
    macs: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CompressResult:
    """The outcome of a compress run: where it is, the before/after figures, every candidate
    file and the one shipped (None when none was within the tolerance) with the reason."""

    run_dir: Path
    target: str
    dense: ModelFigures
    pruned: ModelFigures
    wall_s: float
    stages: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    shipped: dict[str, Any] | None = None
    reason: str = ""
    max_drop: float = 1.0
    latency_budget_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


@dataclass
class Inputs:
    """Everything a run works on, resolved and checked before any work starts."""

    cfg: CompressConfig
    target: TargetProfile
    loaded: LoadedModel
    data: DataBundle
    spec: InputSpec
    precisions: list[str]
    threads: int
    """The target's threads (or --threads): for the device and the estimates; this machine
    runs at most as many threads as it has cores."""


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
        run.discard()
        raise
    finally:
        run.release()  # a kill or Ctrl-C keeps the .partial folder to resume, never the lock


def _check_distributable(cfg: CompressConfig) -> None:
    """What several processes cannot do alike, refused before any work."""
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
    goal = distributed.broadcast(None)
    with tempfile.TemporaryDirectory(prefix="edgeprune-rank") as scratch:
        run = RunFolder.open(Path(scratch) / "run", _config_dict(inputs.cfg))
        try:
            _, pruned = _score_and_prune(inputs, run, inputs.loaded.model.eval(), goal, scores)
            _recover(inputs, run, pruned.model, inputs.loaded.model.eval(), state_path)
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
        backend = get_backend(device, _ssh(cfg))  # a malformed URL fails here
        check = getattr(backend, "check", None)
        if check is not None:  # reachable, with Python, numpy and the runtime, before work
            info(f"device: {check(['.' + target.ship_format])}")
    md = load_model_and_data(cfg.model, cfg.weights, cfg.dataset, cfg.data_dir, cfg.input_size,
                             cfg.mean, cfg.std, cfg.skip_bad_images, cfg.workers, cfg.seed,
                             trust_code=trust_code)
    check_outputs(md.loaded.model, md.spec, md.data.spec.num_classes)
    threads = cfg.threads or target.threads
    return Inputs(cfg, target, md.loaded, md.data, md.spec,
                  _precisions(cfg, target, len(md.data.train)), threads)


def _precisions(cfg: CompressConfig, target: TargetProfile, train_images: int) -> list[str]:
    """The precisions tried; int8 needs MIN_CALIBRATION_SAMPLES training images to calibrate
    on (auto leaves it out with a note when there are fewer, an explicit int8 is an error)."""
    precisions = candidate_precisions(cfg.precision, target.precisions)
    if "int8" in precisions and train_images < MIN_CALIBRATION_SAMPLES:
        why = (f"int8 needs at least {MIN_CALIBRATION_SAMPLES} training images to calibrate "
               f"its activation ranges; the data has {train_images}")
        if cfg.precision == "int8":
            raise EdgepruneError(f"--precision int8: {why}")
        info(f"precision: {why}, so int8 is not tried")
        precisions = [p for p in precisions if p != "int8"] or ["fp32"]
    return precisions


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


def _auto_epochs(cfg: CompressConfig, data: DataBundle) -> float:
    """Enough epochs for fine-tuning to see about FINETUNE_SAMPLES images, at most
    MAX_AUTO_EPOCHS.

    On the demo model at -50% FLOPs, 1 epoch of Fashion-MNIST left a 1.28-point drop; on the
    2,000-image embedded subset 10 epochs left 2.30 points, 30 left 1.00 and 60 left 0.90."""
    if cfg.epochs is not None:
        return cfg.epochs
    return float(min(MAX_AUTO_EPOCHS, max(1, math.ceil(FINETUNE_SAMPLES / len(data.train)))))


@dataclass
class Samples:
    """The images a run's files are checked on: labelled test images (accuracy, and the
    first VERIFY_SAMPLES for parity), training images for int8 calibration, and the small
    batch shipped for the runner's --eval."""

    x: torch.Tensor
    y: torch.Tensor
    calibration: torch.Tensor | None
    shipped: int

    @classmethod
    def draw(cls, inputs: Inputs) -> Samples:
        cfg, data = inputs.cfg, inputs.data
        x, y = take(data, "test", cfg.eval_limit or len(data.test), cfg.seed)
        calibration = None
        if {"int8"} & set(inputs.precisions):
            calibration = take(data, "train", CALIBRATION_SAMPLES, cfg.seed)[0]
        per_image = x[0].numel() * 4
        shipped = max(8, min(EVAL_SAMPLES, len(y), EVAL_SAMPLES_BYTES // per_image))
        return cls(x, y, calibration, shipped)


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
    t0 = time.perf_counter()
    dense_files = _export(inputs, run, "dense", dense, samples, None)
    run.stage_done("export-dense", wall_s=time.perf_counter() - t0)

    goal = distributed.broadcast(_goal(inputs, run, dense_files))
    scores, pruned = _score_and_prune(inputs, run, dense, goal, scores)
    model, pruned_acc, ft = _recover(inputs, run, pruned.model, dense,
                                     run.path("finetune.state"))
    _save(inputs, run, model, pruned, pruned_acc)

    t0 = time.perf_counter()
    summary = {"pruned_from": inputs.loaded.arch.ref, "criterion": cfg.criterion,
               "flops_reduction": pruned.flops_reduction, "test_acc": pruned_acc}
    pruned_files = _export(inputs, run, "pruned", model, samples, summary)
    run.stage_done("export-pruned", wall_s=time.perf_counter() - t0)

    pruned_files += _qat_if_needed(inputs, run, model, dense, dense_files, pruned_files,
                                   samples, summary)
    t0 = time.perf_counter()
    candidates = _candidates(inputs, dense_files, pruned_files)
    _bench(inputs, run, candidates, dense_files, pruned_files)
    reference = next(c for c in candidates if (c.model, c.precision) == ("dense", "fp32"))
    judge(candidates, reference.accuracy, cfg.max_drop, cfg.latency_ms, bool(cfg.device))
    offered = [c for c in candidates if c.precision in inputs.precisions]
    choice = choose(offered, cfg.max_drop, cfg.latency_ms,
                    "measured on the device" if cfg.device else "roofline estimate")
    run.stage_done("bench", wall_s=time.perf_counter() - t0, threads=inputs.threads,
                   device=cfg.primary_device or "local", devices=list(cfg.device or ()),
                   rounds=cfg.bench_rounds)
    _say_choice(choice, offered)
    if choice.shipped is not None:
        _ship(inputs, run, choice, samples)
    return CompressResult(
        run_dir=run.final, target=target.name,
        dense=ModelFigures(dense_acc, dense_params, dense_macs, _by_format(dense_files)),
        pruned=ModelFigures(pruned_acc, pruned.params_after, pruned.macs_after,
                            _by_format(pruned_files)),
        wall_s=0.0, stages=run.manifest["stages"],
        candidates=[c.to_dict() for c in offered],
        shipped=choice.shipped.to_dict() if choice.shipped else None, reason=choice.reason,
        max_drop=cfg.max_drop, latency_budget_ms=cfg.latency_ms)


def _goal(inputs: Inputs, run: RunFolder, dense_files: list[ExportResult]) -> Goal:
    """--flops-reduction, or with --latency-ms the budget for the first precision tried,
    calibrated by measuring the dense file of that precision on the device when one is
    given (else the target's roofline alone)."""
    cfg, target = inputs.cfg, inputs.target
    if cfg.latency_ms is None:
        return FlopsReduction(cfg.flops_reduction)
    precision = inputs.precisions[0]
    measured = None
    if cfg.device:
        dense = next(r for r in dense_files
                     if r.format == target.ship_format and r.precision == precision)
        result = measure([dense.path], cfg.primary_device, _bench_options(inputs, True),
                         _ssh(cfg))[dense.path]
        measured = result.p50_ms
        info(f"budget: dense {precision} measures {measured:.3f} ms on {cfg.primary_device}; "
             "the roofline is scaled to it")
    run.stage_done("budget", ms=cfg.latency_ms, precision=precision,
                   measured_dense_ms=measured, on=cfg.primary_device or "estimate")
    return LatencyBudget(cfg.latency_ms, target, inputs.threads, measured, precision)


def _score_and_prune(inputs: Inputs, run: RunFolder, model: torch.nn.Module, goal: Goal,
                     scores: dict[str, torch.Tensor] | None):
    from edgeprune.criteria import across_processes, get_criterion

    cfg, spec = inputs.cfg, inputs.spec
    reused = scores is not None
    t0 = time.perf_counter()
    seen = 0
    criterion = across_processes(get_criterion(cfg.criterion))
    rescored = cfg.schedule != "one-shot" and not reused  # the papers re-score every step
    batches = None
    keep_counts = criterion.with_keep_counts({}) is not None  # fmcluster: scored again in prune
    batch_size = score_batch_size(model, inputs.spec, cfg.score_batch)
    if not reused or rescored or cfg.reestimate or keep_counts:
        batches = reference_batches(inputs.data, cfg.data_dir, cfg.score_samples,
                                    cfg.samples_per_class, cfg.seed, batch_size)
    if scores is None:
        scores = criterion.score(copy.deepcopy(model).to(accelerator.device()),
                                 batches if criterion.needs_data else None)
        scores = {name: values.cpu() for name, values in scores.items()}
        seen = sum(len(b[1]) for b in batches) if criterion.needs_data else 0
        info(f"score: {cfg.criterion} on {seen} samples in batches of {batch_size}, "
             f"{len(scores)} layers, {time.perf_counter() - t0:.1f} s")
    else:
        info(f"score: reusing the {cfg.criterion} scores given for {len(scores)} layers")
    wall = time.perf_counter() - t0
    run.stage_done("score", wall_s=wall, criterion=cfg.criterion, reused=reused, samples=seen,
                   score_batch=batch_size, images_per_s=seen / wall if seen and wall else None)
    torch.save({k: v.cpu() for k, v in scores.items()}, run.path("scores.pt"))
    run.record(run.work / "scores.pt", "scores", "score")
    t0 = time.perf_counter()
    round_to = inputs.target.simd_width
    between = fine_tune_between(model, inputs.data, cfg.step_epochs, cfg.lr,
                                cfg.seed, distill=cfg.finetune == "distill")
    result = prune(model, torch.zeros(1, *spec.shape), scores=None if rescored else scores,
                   criterion=criterion, batches=batches, round_to=round_to,
                   global_ranking=cfg.global_ranking, goal=goal,
                   schedule=choose_schedule(cfg.schedule, cfg.step, between),
                   reestimate=cfg.reestimate, residual_stream=cfg.residual_stream)
    prune_s = time.perf_counter() - t0
    info(f"prune: {goal.describe()}: MACs {result.macs_before / 1e6:.1f}M -> "
         f"{result.macs_after / 1e6:.1f}M (-{result.flops_reduction * 100:.1f}%), params "
         f"{result.params_before / 1e3:.0f}k -> {result.params_after / 1e3:.0f}k, channels "
         f"rounded to {round_to}, {prune_s:.1f} s")
    run.stage_done("prune", wall_s=prune_s, goal=goal.describe(), schedule=cfg.schedule,
                   residual_stream=cfg.residual_stream,
                   steps=len(result.steps), rescored=rescored, reestimated=cfg.reestimate,
                   flops_reduction=result.flops_reduction,
                   channels={k: list(v) for k, v in result.channels.items()},
                   kept=result.kept, protected=result.protected,
                   latency=asdict(result.latency) if result.latency else None)
    return scores, result


def _teacher(cfg: CompressConfig, dense: torch.nn.Module) -> torch.nn.Module | None:
    """The model fine-tuning distills from: `dense` with `--finetune distill`, none (plain
    cross-entropy) with `ce`."""
    return dense if cfg.finetune == "distill" else None


def _recover(inputs: Inputs, run: RunFolder, model: torch.nn.Module, dense: torch.nn.Module,
             state_path: Path) -> tuple[torch.nn.Module, float | None, TrainResult]:
    """BatchNorm re-calibration (if asked) and fine-tuning, resumable from `state_path`:
    distillation from `dense` (`--finetune distill`) or cross-entropy on the labels (`ce`, as
    the papers do); under torchrun every process fine-tunes its share of each batch and only
    rank 0 evaluates (the others get accuracy None)."""
    cfg, data = inputs.cfg, inputs.data
    if cfg.bn_recalibration > 0:
        from edgeprune.pruning.bn_recalibration import recalibrate_bn

        t0 = time.perf_counter()
        recalibrate_bn(model, data.reference(cfg.bn_recalibration, seed=cfg.seed + 1,
                                             batch_size=256))
        run.stage_done("bn-recalibration", wall_s=time.perf_counter() - t0,
                       samples=cfg.bn_recalibration)
        info(f"bn-recalibration: BatchNorm statistics re-estimated on {cfg.bn_recalibration} "
             f"training images, {time.perf_counter() - t0:.1f} s")
    epochs = _auto_epochs(cfg, data)
    ft = TrainResult()
    if epochs > 0:
        tcfg = TrainConfig(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
        ft = train(model, data, tcfg, teacher=_teacher(cfg, dense), state_path=state_path,
                   description="fine-tuning", across_processes=True)
    model = model.cpu().eval()
    if not distributed.is_main():
        return model, None, ft
    accuracy = evaluate(model, data, limit=cfg.eval_limit, description="evaluating pruned")
    run.stage_done("finetune", wall_s=ft.wall_s, epochs=epochs, loss=cfg.finetune,
                   history=ft.history, images_per_s=ft.images_per_s,
                   processes=distributed.world_size())
    how = "with distillation" if cfg.finetune == "distill" else "with cross-entropy"
    done = f"{epochs:g} epochs {how}" if epochs > 0 else "none (--epochs 0)"
    info(f"fine-tune: {done}, top-1 {accuracy * 100:.2f}%, {ft.wall_s:.0f} s")
    return model, accuracy, ft


def _save(inputs: Inputs, run: RunFolder, model: torch.nn.Module, pruned: Any,
          accuracy: float) -> None:
    meta = {"pruned_from": inputs.loaded.arch.ref, "criterion": inputs.cfg.criterion,
            "flops_reduction": pruned.flops_reduction, "test_acc": accuracy}
    save_checkpoint(run.path("model.pt"), model, inputs.loaded.arch, inputs.spec, meta)
    run.record(run.work / "model.pt", "checkpoint", "finetune")
    atomic_write_text(run.path("architecture.json"),
                      json.dumps(parameter_shapes(model), indent=1))
    run.record(run.work / "architecture.json", "architecture", "finetune")


def _export(inputs: Inputs, run: RunFolder, tag: str, model: torch.nn.Module,
            samples: Samples, summary: dict[str, Any] | None) -> list[ExportResult]:
    """Export one model: in the target's format at fp32 and every precision tried, each file's
    top-1 measured on the test images (fp32 must reproduce PyTorch; the others are judged
    later, against the tolerance); in every other requested format at fp32. The runner's
    --eval batch is written once per model."""
    cfg, spec, ship = inputs.cfg, inputs.spec, inputs.target.ship_format
    verify_x = samples.x[:VERIFY_SAMPLES]
    precisions = list(dict.fromkeys(["fp32", *inputs.precisions]))
    results = export_model(model, spec, run.path("models"), verify_x, formats=[ship], stem=tag,
                           verify={"fp32"} if cfg.verify else False, precisions=precisions,
                           calibration=samples.calibration,
                           eval_samples=(samples.x, samples.y), summary=summary)
    others = [f for f in cfg.formats if f != ship]
    if others:
        results += export_model(model, spec, run.path("models"), verify_x, formats=others,
                                stem=tag, verify=cfg.verify, summary=summary)
    for r in results:
        run.record(r.path, r.format, "export", model=tag, precision=r.precision)
        run.record(r.sidecar, "sidecar", "export", model=tag)
    eval_path = default_samples_path(results[0].path)
    n = samples.shipped
    write_eval_samples(eval_path, samples.x[:n].numpy(), samples.y[:n].numpy())
    run.record(eval_path, "eval-samples", "export", model=tag, count=n)
    return results


def _qat_epochs(cfg: CompressConfig, data: DataBundle) -> float:
    """--qat-epochs, else enough to see QAT_SAMPLES images, at most MAX_QAT_EPOCHS.

    On the 2,000-image embedded subset, 0.25 epochs of QAT left the int8 file 1.2 points
    below dense fp32; 7.5 epochs (15k images) brought it to 0.8."""
    if cfg.qat_epochs is not None:
        return cfg.qat_epochs
    return min(MAX_QAT_EPOCHS, QAT_SAMPLES / len(data.train))


def _qat_if_needed(inputs: Inputs, run: RunFolder, model: torch.nn.Module,
                   dense: torch.nn.Module, dense_files: list[ExportResult],
                   pruned_files: list[ExportResult], samples: Samples,
                   summary: dict[str, Any]) -> list[ExportResult]:
    """When the pruned int8 file (post-training quantization) is outside the tolerance while
    the pruned fp32 file is within it, recover int8 by quantization-aware training and export
    the result (TFLite targets, --qat-epochs > 0); returns the new file, if any."""
    cfg, ship = inputs.cfg, inputs.target.ship_format
    mine = {r.precision: r for r in pruned_files if r.format == ship}
    reference = next(r.accuracy for r in dense_files
                     if r.format == ship and r.precision == "fp32")
    epochs = _qat_epochs(cfg, inputs.data)
    if epochs <= 0 or ship != "tflite" or "int8" not in mine or reference is None:
        return []
    drop = {p: (reference - (mine[p].accuracy or 0.0)) * 100 for p in ("fp32", "int8")}
    if drop["int8"] <= cfg.max_drop or drop["fp32"] > cfg.max_drop:
        return []
    info(f"qat: pruned int8 loses {drop['int8']:.2f} points (fp32: {drop['fp32']:.2f}), more "
         f"than --max-drop {cfg.max_drop:g}: quantization-aware training for {epochs:g} "
         "epochs")
    t0 = time.perf_counter()
    tcfg = TrainConfig(epochs=epochs, lr=cfg.lr * 0.1, batch_size=cfg.batch_size,
                       seed=cfg.seed)
    qat = train_qat(model, inputs.data, tcfg, teacher=_teacher(cfg, dense),
                    eval_limit=cfg.eval_limit)
    results = export_model(qat.model, inputs.spec, run.path("models"),
                           samples.x[:VERIFY_SAMPLES], formats=[ship], stem="pruned",
                           verify=False, precisions=["int8-qat"],
                           eval_samples=(samples.x, samples.y), summary=summary,
                           options=ExportOptions(quantizer=qat.quantizer))
    for r in results:
        run.record(r.path, r.format, "qat", model="pruned", precision=r.precision)
        run.record(r.sidecar, "sidecar", "qat", model="pruned")
    run.stage_done("qat", wall_s=time.perf_counter() - t0, epochs=epochs,
                   images_per_s=qat.images_per_s, ptq_drop=drop["int8"],
                   qat_accuracy=results[0].accuracy)
    return results


def _candidates(inputs: Inputs, dense: list[ExportResult],
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


def _ssh(cfg: CompressConfig) -> SshOptions:
    return SshOptions(options=tuple(cfg.ssh_option or ()), remote_python=cfg.remote_python)


def _bench_options(inputs: Inputs, on_device: bool) -> BenchOptions:
    cfg = inputs.cfg
    threads = inputs.threads if on_device else max(1, min(inputs.threads, os.cpu_count() or 1))
    return BenchOptions(threads=threads, runs=cfg.bench_runs, min_seconds=cfg.bench_seconds,
                        rounds=cfg.bench_rounds)


def _bench(inputs: Inputs, run: RunFolder, candidates: list[Candidate],
           dense: list[ExportResult], pruned: list[ExportResult]) -> None:
    """Measure the candidates interleaved in one runner process (on every device at once when
    devices are given; the first one's figures are the candidates' own) and the other
    formats' fp32 files on this machine; add the target's estimates."""
    cfg, target = inputs.cfg, inputs.target
    paths = [Path(c.path) for c in candidates]
    others = [r.path for r in dense + pruned if r.format != target.ship_format]
    if cfg.device:
        fleet = on_each_device(list(dict.fromkeys(cfg.device)), lambda device: measure(
            paths, device, _bench_options(inputs, True), _ssh(cfg)))
        results = dict(fleet[cfg.primary_device])
        if others:
            results |= measure(others, None, _bench_options(inputs, False))
        if len(fleet) > 1:
            _record_fleet(candidates, paths, fleet)
    else:
        results = measure(paths + others, None, _bench_options(inputs, False))
    reference = results[paths[0]]
    for c, path in zip(candidates, paths, strict=True):
        measured = latency_fields(results[path])
        c.latency_ms, c.latency_label = measured["latency_ms"], measured["latency_label"]
        c.speedup = speedup(reference, results[path])
        c.size_ratio = candidates[0].size_bytes / c.size_bytes
        c.estimate_ms = estimate_model(path, target, inputs.threads)[1].latency_ms
        c.path = path.relative_to(run.work).as_posix()
    for r in dense + pruned:
        r.details["bench"] = latency_fields(results[r.path])
    for c in candidates:
        info(f"bench: {c.name} p50 {c.p50:.3f} ms ({c.latency_label}), "
             f"{c.speedup['value']:.2f}x dense fp32 ({c.speedup['low']:.2f}-"
             f"{c.speedup['high']:.2f} over {c.speedup['rounds']} rounds), estimate "
             f"{c.estimate_ms:.3f} ms on {target.name}")
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


def _ship(inputs: Inputs, run: RunFolder, choice: Choice, samples: Samples) -> None:
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


def _by_format(results: list[ExportResult]) -> dict[str, dict[str, Any]]:
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


def _say_choice(choice: Choice, candidates: list[Candidate]) -> None:
    for c in candidates:
        mark = "shipped" if c is choice.shipped else (
            "within tolerance" if c.within_tolerance else "outside tolerance")
        info(f"candidate: {c.name}: top-1 {c.accuracy * 100:.2f}% "
             f"({0.0 - c.drop_points:+.2f} points), {c.size_bytes / 1e6:.2f} MB, p50 {c.p50:.3f} ms"
             f" ({c.latency_label}), {mark}")
    info(f"ship: {choice.shipped.name if choice.shipped else 'nothing'}: {choice.reason}")
