"""One-shot pruning to a FLOPs target: criterion scores in, a smaller copy of the model out.

Surgery and ranking policy are Torch-Pruning's (dependency graph, `BasePruner` with global or
per-layer ranking and `round_to`); edgeprune adds the scores (through `PrecomputedImportance`),
a per-layer channel floor, and a bisection on the channel pruning ratio until the MACs target
is met.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
import torch_pruning as tp
from torch import Tensor, nn

from edgeprune.console import info, progress_bar
from edgeprune.criteria import Criterion, get_criterion
from edgeprune.criteria.base import prunable_layers
from edgeprune.errors import EdgepruneError
from edgeprune.pruning.importance import PrecomputedImportance
from edgeprune.pruning.protect import (
    build_graph,
    classifier_names,
    forward_ok,
    group_roots,
    names_within,
    output_shape,
    unprunable_names,
    untraced_names,
)


@dataclass
class PruneResult:
    """The pruned copy and what changed; MACs and parameters as Torch-Pruning counts them."""

    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: dict[str, tuple[int, int]]
    protected: list[str]
    pruning_ratio: float = 0.0
    search_steps: int = 0

    @property
    def flops_reduction(self) -> float:
        """Fraction of MACs removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0


@dataclass(frozen=True)
class Policy:
    """How channels are chosen: Torch-Pruning's ranking and rounding, plus a floor per layer
    (a multiple of `round_to`) below which no layer is cut."""

    round_to: int
    floor: int
    global_ranking: bool


@dataclass
class _Trial:
    model: nn.Module
    macs: int
    reduction: float


class GraphFailure(Exception):
    """The surgery produced a model that fails or changes its output shape."""


def count(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass, counted by Torch-Pruning."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def _above_floor(pruner: tp.pruner.BasePruner, importance: PrecomputedImportance,
                 group: tp.dependency.Group, floor: int) -> tp.dependency.Group | None:
    """The group Torch-Pruning chose, trimmed so its root keeps at least `floor` channels
    (dropping the highest-scored of the chosen channels); None when nothing may go."""
    graph, (dep, idxs) = pruner.DG, group[0]
    module, fn = dep.target.module, dep.handler
    current = graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(fn) \
        else graph.get_in_channels(module)
    allowed = current - floor
    if len(idxs) <= allowed or pruner._get_channel_groups(group) > 1:
        return group  # grouped channels (GroupNorm, grouped convs) keep Torch-Pruning's choice
    if allowed <= 0:
        return None
    imp = importance(graph.get_pruning_group(module, fn, list(range(current))))
    lowest = sorted(idxs, key=lambda i: float(imp[i]))[:allowed]
    return graph.get_pruning_group(module, fn, sorted(lowest))


def prune_at_ratio(base: nn.Module, example_inputs: Tensor, scores: dict[str, Tensor],
                   ratio: float, policy: Policy, protected: list[str]) -> nn.Module:
    """A copy of `base` pruned by Torch-Pruning at channel ratio `ratio` (one step)."""
    work = copy.deepcopy(base)
    importance = PrecomputedImportance(scores, {m: n for n, m in work.named_modules()})
    pruner = tp.pruner.BasePruner(
        work, example_inputs, importance=importance, pruning_ratio=ratio,
        global_pruning=policy.global_ranking, round_to=policy.round_to,
        ignored_layers=[work.get_submodule(n) for n in protected])
    # Torch-Pruning drops a group outright when the ranking takes all its channels; let every
    # group through instead, trim it to the floor, then apply Torch-Pruning's check.
    check = pruner.DG.check_pruning_group
    pruner.DG.check_pruning_group = lambda group: True
    for group in pruner.step(interactive=True):
        trimmed = _above_floor(pruner, importance, group, policy.floor)
        if trimmed is not None and check(trimmed):
            trimmed.prune()
    return work


def _bisect(evaluate: Callable[[float], _Trial], target: float,
            resolution: float) -> tuple[float, _Trial, int]:
    """Smallest ratio (to within `resolution`) whose MACs reduction reaches `target`;
    reduction grows monotonically with the ratio. Returns (ratio, trial, trials run)."""
    steps = math.ceil(math.log2(1.0 / resolution)) + 1
    with progress_bar(steps, "pruning (searching the ratio)") as advance:
        hi, best = 1.0, evaluate(1.0)
        advance(status=f"-{best.reduction:.1%} at ratio 1")
        if best.reduction < target:
            raise EdgepruneError(f"at most {best.reduction:.1%} of the MACs can be removed with "
                                 "these protected layers and channel floor; lower the target "
                                 "or min_channels")
        lo, runs = 0.0, 1
        while hi - lo > resolution:
            mid = (lo + hi) / 2
            trial, runs = evaluate(mid), runs + 1
            advance(status=f"-{trial.reduction:.1%} at ratio {mid:.4f}")
            if trial.reduction >= target:
                hi, best = mid, trial
            else:
                lo = mid
    return hi, best, runs


def _resolve_scores(model: nn.Module, scores: dict[str, Tensor] | None,
                    criterion: Criterion | str | None,
                    batches: Iterable[tuple[Tensor, Tensor]] | None) -> dict[str, Tensor]:
    """The given scores, or the criterion's scores of `model`."""
    if scores is not None:
        return scores
    if criterion is None:
        raise EdgepruneError("prune needs scores or a criterion")
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    if crit.needs_data and batches is None:
        raise EdgepruneError(f"criterion {crit.name!r} needs reference batches")
    return crit.score(model, batches if crit.needs_data else None)


def _check_scores(model: nn.Module, scores: dict[str, Tensor]) -> None:
    layers = prunable_layers(model)
    for name, values in scores.items():
        if name not in layers:
            raise EdgepruneError(f"scores name layer {name!r}, which is not a Conv2d or Linear "
                                 "of the model")
        if values.numel() != layers[name].weight.shape[0]:
            raise EdgepruneError(f"scores for {name!r} have {values.numel()} entries but the "
                                 f"layer has {layers[name].weight.shape[0]} output channels")


def _check_options(flops_reduction: float, round_to: int, min_channels: int | None) -> None:
    if not 0.0 <= flops_reduction < 1.0:
        raise EdgepruneError(f"flops_reduction {flops_reduction} must be in [0, 1)")
    if round_to < 1 or (min_channels is not None and min_channels < 1):
        raise EdgepruneError("round_to and min_channels must be positive")


def _protected(base: nn.Module, expected: torch.Size, graph: tp.DependencyGraph,
               scores: dict[str, Tensor], ignored: list[str]) -> list[str]:
    """Classifier, caller-ignored, untraced and unscored layers, in that order, no repeats."""
    unscored = [n for n in prunable_layers(base) if n not in scores]
    found = classifier_names(base, expected) + ignored + untraced_names(base, graph) + unscored
    return list(dict.fromkeys(found))


def _resolution(base: nn.Module, graph: tp.DependencyGraph, protected: list[str],
                global_ranking: bool) -> float:
    """Ratio step below which Torch-Pruning's channel counts cannot change."""
    widths = [base.get_submodule(n).weight.shape[0] for n in group_roots(base, graph, protected)]
    if not widths:
        raise EdgepruneError("no layer of the model can be pruned (all are protected)")
    return 1.0 / (sum(widths) if global_ranking else max(widths))


@dataclass
class _Problem:
    """What every trial shares: the unpruned copy, its inputs, scores and reference figures."""

    base: nn.Module
    example_inputs: Tensor
    scores: dict[str, Tensor]
    policy: Policy
    expected: torch.Size
    macs_before: int

    def evaluate(self, ratio: float, protected: list[str]) -> _Trial:
        """Prune a copy at `ratio`; GraphFailure when the result does not run."""
        try:
            model = prune_at_ratio(self.base, self.example_inputs, self.scores, ratio,
                                   self.policy, protected)
        except Exception as e:  # noqa: BLE001 - Torch-Pruning surgery failures
            raise GraphFailure(str(e)) from e
        if not forward_ok(model, self.example_inputs, self.expected):
            raise GraphFailure("the pruned model fails or changes its output shape")
        macs = count(model, self.example_inputs)[0]
        return _Trial(model, macs, 1.0 - macs / self.macs_before)

    def search(self, protected: list[str], target: float) -> tuple[float, nn.Module, int]:
        """Bisection over the ratio: (ratio, pruned model, trials run)."""
        graph = build_graph(self.base, self.example_inputs)
        resolution = _resolution(self.base, graph, protected, self.policy.global_ranking)
        ratio, trial, steps = _bisect(partial(self.evaluate, protected=protected), target,
                                      resolution)
        return ratio, trial.model, steps

    def search_protecting(self, protected: list[str],
                          target: float) -> tuple[float, nn.Module, int, list[str]]:
        """`search`; when a pruned copy breaks, find and protect the layers the graph cannot
        prune and search again. Also returns the final protected list."""
        try:
            return (*self.search(protected, target), protected)
        except GraphFailure:
            broken = unprunable_names(self.base, self.example_inputs, self.expected, protected)
            info(f"prune: the dependency graph cannot prune {', '.join(broken) or 'some layers'};"
                 " they stay unpruned")
            protected = protected + [n for n in broken if n not in protected]
        try:
            return (*self.search(protected, target), protected)
        except GraphFailure as e:
            raise EdgepruneError(f"Torch-Pruning cannot prune this model ({e}); pass the "
                                 "offending layers as ignored_layers") from None


def prune(model: nn.Module, example_inputs: Tensor, *, scores: dict[str, Tensor] | None = None,
          criterion: Criterion | str | None = "l1",
          batches: Iterable[tuple[Tensor, Tensor]] | None = None,
          flops_reduction: float = 0.5, round_to: int = 8, min_channels: int | None = None,
          global_ranking: bool = True,
          ignored_layers: list[nn.Module] | None = None) -> PruneResult:
    """Prune a copy of `model` until at least `flops_reduction` of its MACs are gone.

    Scores come from `scores` or else from `criterion` (with `batches` when it needs data).
    Channel counts are multiples of `round_to` and never below `min_channels` (default
    `round_to`); the classifier, `ignored_layers` and layers the dependency graph cannot
    prune are protected. The input model is not modified and no backward pass is needed.
    """
    _check_options(flops_reduction, round_to, min_channels)
    base = copy.deepcopy(model).eval()
    scores = _resolve_scores(base, scores, criterion, batches)
    _check_scores(base, scores)
    floor = math.ceil((min_channels or round_to) / round_to) * round_to
    expected = output_shape(base, example_inputs)
    macs_before, params_before = count(base, example_inputs)
    problem = _Problem(base, example_inputs, scores, Policy(round_to, floor, global_ranking),
                       expected, macs_before)
    protected = _protected(base, expected, build_graph(base, example_inputs), scores,
                           names_within(model, ignored_layers or []))
    ratio, pruned, steps = 0.0, copy.deepcopy(base), 0
    if flops_reduction > 0:
        ratio, pruned, steps, protected = problem.search_protecting(protected, flops_reduction)
    macs_after, params_after = count(pruned, example_inputs)
    channels = {n: (m.weight.shape[0], pruned.get_submodule(n).weight.shape[0])
                for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    return PruneResult(pruned.train(model.training), macs_before, macs_after, params_before,
                       params_after, channels, protected, ratio, steps)
