"""Pruning schedules: one-shot; iterative (a small share of the filters per step, a callback
such as a brief fine-tune between steps, then re-scoring — the LRP paper's 5% steps); and
layer-by-layer (each layer pruned on top of the already pruned earlier ones — the actmax paper).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from torch import Tensor, nn

from edgeprune.console import info
from edgeprune.errors import EdgepruneError
from edgeprune.pruning.goals import Figures, SearchedGoal
from edgeprune.pruning.protect import build_graph, forward_order, group_roots
from edgeprune.pruning.search import Candidates, FilterCount, Trial, Unreachable, with_policy
from edgeprune.pruning.surgery import compose


@dataclass(frozen=True)
class StepInfo:
    """What the between-steps callback is told: which step just ended and where it stands."""

    index: int
    schedule: str
    figures: Figures
    layer: str | None = None


StepCallback = Callable[[nn.Module, StepInfo], None]
"""Called with the pruned model (to fine-tune in place) after every step but the last."""

Rescorer = Callable[[nn.Module, dict[str, list[int]]], dict[str, Tensor]]
"""(current model, kept channels so far) -> scores of the current model."""


@dataclass(frozen=True)
class OneShot:
    """Prune to the goal in one pass."""


@dataclass(frozen=True)
class Iterative:
    """Remove `step` of the prunable conv filters per step (the LRP paper: 5%), calling
    `between` after each step and re-scoring, until the goal is met; the last step prunes
    exactly to the goal."""

    step: float = 0.05
    between: StepCallback | None = None
    max_steps: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.step < 1.0:
            raise EdgepruneError(f"iterative step {self.step} must be in (0, 1)")


@dataclass(frozen=True)
class LayerByLayer:
    """Prune one layer group at a time in forward order, each on top of the already pruned
    earlier ones, re-scoring and calling `between` after each; every layer gets the uniform
    ratio that meets the goal in one shot (the actmax paper's same share of every layer)."""

    between: StepCallback | None = None


Schedule = OneShot | Iterative | LayerByLayer


@dataclass
class Progress:
    """The model so far, its channels kept (in the original numbering) and the step log."""

    model: nn.Module
    protected: list[str]
    kept: dict[str, list[int]] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    ratio: float = 0.0

    def advance(self, trial: Trial, protected: list[str], entry: dict) -> None:
        self.model, self.protected, self.ratio = trial.cut.model, protected, trial.ratio
        self.kept = compose(self.kept, trial.cut.kept)
        f = trial.figures
        self.log.append(entry | {"macs": f.macs, "params": f.params, "filters": f.filters,
                                 "latency_ms": f.latency_ms, "ratio": trial.ratio})


def run_oneshot(start: Candidates, goal: SearchedGoal, reference: Figures,
                protected: list[str]) -> Progress:
    trial, protected = start.search_checked(goal, reference, protected)
    progress = Progress(start.base, protected)
    progress.advance(trial, protected, {"step": 1, "schedule": "one-shot"})
    return progress


def run_iterative(start: Candidates, goal: SearchedGoal, reference: Figures,
                  protected: list[str], schedule: Iterative, rescore: Rescorer) -> Progress:
    """Steps of `schedule.step` x the prunable filters until one more step would pass the
    goal; that last step is searched against the goal itself."""
    progress, candidates = Progress(start.base, protected), start
    per_step = _prunable_filters(start, protected) * schedule.step
    for k in range(1, schedule.max_steps + 1):
        limit = reference.filters - math.ceil(k * per_step)
        step = _try_step(candidates, FilterCount(limit), reference, progress.protected)
        if step is None or goal.met(reference, step[0].figures):
            trial, protected = candidates.search_checked(goal, reference, progress.protected)
            progress.advance(trial, protected, {"step": k, "schedule": "iterative",
                                                "final": True})
            return progress
        progress.advance(step[0], step[1], {"step": k, "schedule": "iterative"})
        _between(schedule.between, progress, StepInfo(k, "iterative", step[0].figures))
        candidates = _next(candidates, progress, rescore)
    raise EdgepruneError(f"the goal was not met in {schedule.max_steps} iterative steps; "
                         "raise the step or max_steps")


def run_layer_by_layer(start: Candidates, goal: SearchedGoal, reference: Figures,
                       protected: list[str], schedule: LayerByLayer,
                       rescore: Rescorer) -> Progress:
    """Find the uniform ratio that meets the goal in one shot, then apply it one layer group
    at a time in forward order; a final one-shot top-up closes any gap left by re-scoring."""
    local = with_policy(start, global_ranking=False)
    uniform, protected = local.search_checked(goal, reference, protected)
    graph = build_graph(start.base, start.example_inputs)
    roots = forward_order(start.base, group_roots(start.base, graph, protected),
                          start.example_inputs)
    progress, candidates = Progress(start.base, protected), local
    info(f"prune: layer by layer, {len(roots)} layer groups at ratio {uniform.ratio:.3f}")
    for k, root in enumerate(roots, 1):
        trial, kept = candidates.checked(
            partial(candidates.evaluate, 0.0, layer_ratios={root: uniform.ratio}),
            progress.protected)
        progress.advance(trial, kept, {"step": k, "schedule": "layer-by-layer",
                                       "layer": root})
        if k < len(roots):
            _between(schedule.between, progress,
                     StepInfo(k, "layer-by-layer", trial.figures, root))
            candidates = _next(candidates, progress, rescore)
    if not goal.met(reference, candidates.figures(progress.model)):
        candidates = _next(candidates, progress, rescore)
        trial, kept = candidates.search_checked(goal, reference, progress.protected)
        progress.advance(trial, kept, {"step": len(roots) + 1, "schedule": "layer-by-layer",
                                       "final": True})
    return progress


def _prunable_filters(start: Candidates, protected: list[str]) -> int:
    return sum(m.out_channels for n, m in start.base.named_modules()
               if isinstance(m, nn.Conv2d) and n not in protected)


def _try_step(candidates: Candidates, goal: FilterCount, reference: Figures,
              protected: list[str]) -> tuple[Trial, list[str]] | None:
    """The step's candidate, or None when no more filters can be removed."""
    try:
        return candidates.search_checked(goal, reference, protected)
    except Unreachable:
        return None


def _between(callback: StepCallback | None, progress: Progress, step: StepInfo) -> None:
    if callback is not None:
        callback(progress.model, step)
        progress.model.eval()


def _next(candidates: Candidates, progress: Progress, rescore: Rescorer) -> Candidates:
    """Candidates for the next step: the current model, re-scored."""
    return Candidates(progress.model, candidates.example_inputs,
                      rescore(progress.model, progress.kept), candidates.policy,
                      candidates.expected, candidates.latency, candidates.reasons,
                      candidates.tally)
