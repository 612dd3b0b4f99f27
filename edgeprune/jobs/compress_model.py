"""The model half of `compress`: score the dense model, prune it to the goal, recover it
(BatchNorm re-calibration, fine-tuning) and save the result as an edgeprune checkpoint. Each
function records its stage in the run folder."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgeprune import accelerator, distributed
from edgeprune.console import info
from edgeprune.files import atomic_write_text
from edgeprune.jobs.compress_types import Inputs
from edgeprune.jobs.loading import reference_batches, score_batch_size
from edgeprune.jobs.policy import choose_schedule, fine_tune_between, finetune_epochs, teacher
from edgeprune.jobs.runs import RunFolder
from edgeprune.models import parameter_shapes, save_checkpoint
from edgeprune.models.copying import clone
from edgeprune.pruning import Goal, prune
from edgeprune.training import TrainConfig, TrainResult, evaluate, train


def score_and_prune(inputs: Inputs, run: RunFolder, model: torch.nn.Module, goal: Goal,
                     scores: dict[str, torch.Tensor] | None):
    """Score `model` with the run's criterion (or reuse `scores`), prune it to `goal` with the
    run's schedule, and record both stages; returns the scores and the PruneResult."""
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
        scores = criterion.score(clone(model).to(accelerator.device()),
                                 batches if criterion.needs_data else None)
        scores = {name: values.cpu() for name, values in scores.items()}
        seen = sum(len(b[1]) for b in batches) if criterion.needs_data else 0
        on = (f"on {seen} samples in batches of {batch_size}" if criterion.needs_data else
              "from the weights alone (it reads no data)")
        info(f"score: {cfg.criterion} {on}, {len(scores)} layers, "
             f"{time.perf_counter() - t0:.1f} s")
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


def recover(inputs: Inputs, run: RunFolder, model: torch.nn.Module, dense: torch.nn.Module,
             state_path: Path, epochs: float | None = None
             ) -> tuple[torch.nn.Module, float | None, TrainResult]:
    """BatchNorm re-calibration (if asked) and fine-tuning for `epochs` (default:
    `policy.finetune_epochs`), resumable from `state_path`: distillation from `dense`
    (`--finetune distill`) or cross-entropy on the labels (`ce`, as the papers do); under
    torchrun every process fine-tunes its share of each batch and only rank 0 evaluates (the
    others get accuracy None)."""
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
    epochs = finetune_epochs(cfg, len(data.train)) if epochs is None else epochs
    ft = TrainResult()
    if epochs > 0:
        tcfg = TrainConfig(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
        ft = train(model, data, tcfg, teacher=teacher(cfg, dense), state_path=state_path,
                   description="fine-tuning", across_processes=True)
    model = model.cpu().eval()
    if not distributed.is_main():
        return model, None, ft
    accuracy = evaluate(model, data, limit=cfg.eval_limit, description="evaluating pruned")
    run.stage_done("finetune", wall_s=ft.wall_s, epochs=epochs, loss=cfg.finetune,
                   history=ft.history, images_per_s=ft.images_per_s,
                   processes=distributed.world_size())
    how = "with distillation" if cfg.finetune == "distill" else "with cross-entropy"
    done = f"{epochs:g} epochs {how}" if epochs > 0 else (
        "none (--epochs 0)" if cfg.epochs == 0 else "none (the level search's winner is "
        "fine-tuned already)")
    info(f"fine-tune: {done}, top-1 {accuracy * 100:.2f}%, {ft.wall_s:.0f} s")
    return model, accuracy, ft


def save_model(inputs: Inputs, run: RunFolder, model: torch.nn.Module, pruned: Any,
          accuracy: float) -> None:
    """model.pt (the pruned, fine-tuned model) and architecture.json, recorded."""
    meta = {"pruned_from": inputs.loaded.arch.ref, "criterion": inputs.cfg.criterion,
            "flops_reduction": pruned.flops_reduction, "test_acc": accuracy}
    save_checkpoint(run.path("model.pt"), model, inputs.loaded.arch, inputs.spec, meta)
    run.record(run.work / "model.pt", "checkpoint", "finetune")
    atomic_write_text(run.path("architecture.json"),
                      json.dumps(parameter_shapes(model), indent=1))
    run.record(run.work / "architecture.json", "architecture", "finetune")
