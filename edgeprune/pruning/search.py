"""One pruning pass aimed at a goal: a bisection on Torch-Pruning's channel ratio until the
candidate's figures (MACs, parameters or predicted latency) meet it, with layers the graph
cannot prune found, protected and reported instead of failing or breaking the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import Tensor, nn

from edgeprune.console import info, progress_bar
from edgeprune.errors import EdgepruneError
from edgeprune.models.copying import forget_forward_caches
from edgeprune.pruning.goals import Figures, SearchedGoal
from edgeprune.pruning.latency import LatencyModel
from edgeprune.pruning.protect import (
    build_graph,
    forward_ok,
    group_roots,
    is_exact,
    unprunable_names,
)
from edgeprune.pruning.surgery import Cut, Policy, cut


class Unreachable(EdgepruneError):
    """Even the most pruned candidate the policy allows misses the goal; `reference` and
    `most` are the figures of the unpruned model and of that candidate (what can be
    reached at most)."""

    def __init__(self, message: str, reference: Figures | None = None,
                 most: Figures | None = None) -> None:
        super().__init__(message)
        self.reference, self.most = reference, most


class GraphFailure(Exception):
    """The surgery produced a model that fails or changes its output shape."""


def count(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass, counted by Torch-Pruning."""
    macs, params = tp.utils.count_ops_and_params(forget_forward_caches(model), example_inputs)
    return int(macs), int(params)


def conv_filters(model: nn.Module) -> int:
    """Output channels of all Conv2d layers together (the 'filters' of the LRP paper's steps)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


@dataclass(frozen=True)
class FilterCount:
    """Internal goal of one iterative step: at most `limit` conv filters left."""

    limit: int

    def met(self, before: Figures, after: Figures) -> bool:
        return after.filters <= self.limit

    def shortfall(self, before: Figures, best: Figures) -> str:
        return f"no more than {before.filters - best.filters} filters can be removed"


@dataclass(frozen=True)
class Trial:
    """One candidate: the cut, its figures and the ratio that produced it."""

    cut: Cut
    figures: Figures
    ratio: float


@dataclass
class Candidates:
    """Everything the trials of one pass share: the model the pass starts from, its inputs,
    scores and policy, the output shape and how candidates are measured."""

    base: nn.Module
    example_inputs: Tensor
    scores: dict[str, Tensor]
    policy: Policy
    expected: torch.Size
    latency: LatencyModel | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    tally: dict[str, int] = field(default_factory=lambda: {"trials": 0})

    def figures(self, model: nn.Module) -> Figures:
        macs, params = count(model, self.example_inputs)
        ms = self.latency.predict_ms(model, self.example_inputs) if self.latency else None
        return Figures(macs, params, ms, conv_filters(model))

    def evaluate(self, ratio: float, protected: list[str],
                 layer_ratios: dict[str, float] | None = None) -> Trial:
        """Prune a copy at `ratio` (or `layer_ratios`); GraphFailure when it does not run."""
        self.tally["trials"] += 1
        try:
            result = cut(self.base, self.example_inputs, self.scores, self.policy, protected,
                         ratio, layer_ratios)
        except Exception as e:  # noqa: BLE001 - Torch-Pruning surgery failures
            raise GraphFailure(f"{type(e).__name__}: {e}") from e
        if not forward_ok(result.model, self.example_inputs, self.expected):
            raise GraphFailure("the pruned model fails or changes its output shape")
        return Trial(result, self.figures(result.model),
                     max(layer_ratios.values()) if layer_ratios else ratio)

    def unpruned(self) -> Trial:
        return Trial(Cut(self.base), self.figures(self.base), 0.0)

    def search(self, goal: SearchedGoal | FilterCount, reference: Figures,
               protected: list[str]) -> Trial:
        """The smallest ratio (to the resolution at which channel counts change) whose
        candidate meets `goal`; `reference` are the figures the goal is relative to."""
        dense = self.unpruned()
        if goal.met(reference, dense.figures):
            return dense
        graph = build_graph(self.base, self.example_inputs)
        widths = [self.base.get_submodule(n).weight.shape[0]
                  for n in group_roots(self.base, graph, protected)]
        if not widths:
            raise EdgepruneError("no layer of the model can be pruned (all are protected)")
        resolution = 1.0 / (sum(widths) if self.policy.global_ranking else max(widths))
        return _bisect(lambda r: self.evaluate(r, protected), goal, reference, resolution)

    def protect_broken(self, protected: list[str]) -> list[str]:
        """`protected` plus the layers whose groups cannot be pruned (each probed alone),
        their reasons recorded."""
        broken = {n: why for n, why in unprunable_names(
            self.base, self.example_inputs, self.expected, protected).items()
            if n not in protected}
        info(f"prune: the dependency graph cannot prune {', '.join(broken) or 'some layers'}"
             " exactly; they stay unpruned")
        self.reasons.update(broken)
        return protected + list(broken)

    def checked(self, run: Callable[[list[str]], Trial],
                protected: list[str]) -> tuple[Trial, list[str]]:
        """`run(protected)`, verified: when the candidate fails or is not exact (`is_exact`),
        the layers responsible are protected (reasons recorded) and it runs once more."""
        try:
            trial = run(protected)
            if is_exact(self.base, trial.cut, self.example_inputs):
                return trial, protected
        except GraphFailure:
            pass
        extended = self.protect_broken(protected)
        try:
            trial = run(extended)
        except GraphFailure as e:
            raise EdgepruneError(f"Torch-Pruning cannot prune this model ({e}); pass the "
                                 "offending layers as ignored_layers") from None
        if not is_exact(self.base, trial.cut, self.example_inputs):
            raise EdgepruneError("Torch-Pruning prunes this model inexactly and no single "
                                 "layer group is to blame; pass ignored_layers")
        return trial, extended

    def search_checked(self, goal: SearchedGoal | FilterCount, reference: Figures,
                       protected: list[str]) -> tuple[Trial, list[str]]:
        """`search`, verified as in `checked`."""
        return self.checked(lambda p: self.search(goal, reference, p), protected)


def _bisect(evaluate: Callable[[float], Trial], goal: SearchedGoal | FilterCount,
            reference: Figures, resolution: float) -> Trial:
    """Smallest ratio (to within `resolution`) whose candidate meets `goal`; the figures
    shrink monotonically as the ratio grows."""
    steps = math.ceil(math.log2(1.0 / resolution)) + 1
    with progress_bar(steps, "pruning (searching the ratio)") as advance:
        best = evaluate(1.0)
        advance(status=f"{_status(best)} at ratio 1")
        if not goal.met(reference, best.figures):
            raise Unreachable(f"{goal.shortfall(reference, best.figures)} with these "
                              "protected layers and channel floor; lower the target or "
                              "min_channels", reference, best.figures)
        lo, hi = 0.0, 1.0
        while hi - lo > resolution:
            mid = (lo + hi) / 2
            trial = evaluate(mid)
            advance(status=f"{_status(trial)} at ratio {mid:.4f}")
            if goal.met(reference, trial.figures):
                hi, best = mid, trial
            else:
                lo = mid
    return best


def _status(trial: Trial) -> str:
    f = trial.figures
    ms = f" {f.latency_ms:.2f} ms" if f.latency_ms is not None else ""
    return f"{f.macs / 1e6:.1f}M MACs{ms}"


def with_policy(candidates: Candidates, **changes: object) -> Candidates:
    """A copy of `candidates` with its policy changed (e.g. global_ranking=False)."""
    return replace(candidates, policy=replace(candidates.policy, **changes))
