"""`prune`: criterion scores plus a goal and a schedule in, a smaller copy of the model out.

Surgery and ranking policy are Torch-Pruning's (dependency graph, `BasePruner` with global or
per-layer ranking and `round_to`); edgeprune adds the scores (through `PrecomputedImportance`),
a per-layer channel floor, the search for the goal, the schedules, protection of what the graph
cannot prune (checked for exactness, not only for running) and kernel re-estimation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from torch import Tensor, nn

from edgeprune.console import info
from edgeprune.criteria import Criterion, get_criterion
from edgeprune.criteria.base import prunable_layers
from edgeprune.errors import EdgepruneError
from edgeprune.models.copying import clone
from edgeprune.pruning.compat import torch_pruning_compat
from edgeprune.pruning.goals import (
    Figures,
    FlopsReduction,
    Goal,
    LatencyBudget,
    LayerRatios,
    SearchedGoal,
)
from edgeprune.pruning.latency import LatencyModel
from edgeprune.pruning.protect import (
    build_graph,
    classifier_names,
    names_within,
    output_shape,
    residual_stream_names,
    terminal_names,
    unresolved_names,
    untraced_names,
)
from edgeprune.pruning.reestimate import Reestimate, Refit, reestimate_kernels
from edgeprune.pruning.schedule import (
    Iterative,
    LayerByLayer,
    OneShot,
    Progress,
    Rescorer,
    Schedule,
    run_iterative,
    run_layer_by_layer,
    run_oneshot,
)
from edgeprune.pruning.search import Candidates, with_policy
from edgeprune.pruning.surgery import Policy

Batches = Iterable[tuple[Tensor, Tensor]]
RESIDUAL_STREAM_CHOICES = ("prune", "keep")


@dataclass
class LatencyReport:
    """Predicted latency on the goal's target before and after pruning, the calibration
    scale applied, and measurements where the caller has them (never mixed with predictions)."""

    target: str
    threads: int
    budget_ms: float
    predicted_before_ms: float
    predicted_after_ms: float
    scale: float
    measured_before_ms: float | None = None
    measured_after_ms: float | None = None


@dataclass
class PruneResult:
    """The pruned copy and what changed; MACs and parameters as Torch-Pruning counts them on
    the pruned model. `kept` gives, per layer that lost output channels, the indices of the
    original channels it kept; `protected_reasons` says why each protected layer was left."""

    model: nn.Module
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: dict[str, tuple[int, int]]
    protected: list[str]
    pruning_ratio: float = 0.0
    search_steps: int = 0
    goal: str = ""
    schedule: str = "one-shot"
    kept: dict[str, list[int]] = field(default_factory=dict)
    protected_reasons: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    latency: LatencyReport | None = None
    refits: list[Refit] = field(default_factory=list)

    @property
    def flops_reduction(self) -> float:
        """Fraction of MACs removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_reduction(self) -> float:
        """Fraction of parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "model"}
        d["channels"] = {k: list(v) for k, v in self.channels.items()}
        d["latency"] = asdict(self.latency) if self.latency else None
        d["refits"] = [asdict(r) for r in self.refits]
        d["flops_reduction"], d["params_reduction"] = self.flops_reduction, self.params_reduction
        return d


@torch_pruning_compat
def prune(model: nn.Module, example_inputs: Tensor, *, scores: dict[str, Tensor] | None = None,
          criterion: Criterion | str | None = "l1", batches: Batches | None = None,
          flops_reduction: float | None = None, round_to: int = 8,
          min_channels: int | None = None, global_ranking: bool = True,
          ignored_layers: list[nn.Module] | None = None, goal: Goal | None = None,
          schedule: Schedule | None = None,
          reestimate: bool | Reestimate = False,
          residual_stream: str = "prune") -> PruneResult:
    """Prune a copy of `model` until it meets `goal` (default: `flops_reduction`, else 50%
    of the FLOPs): `FlopsReduction`, `ParamsReduction`, `LatencyBudget` or `LayerRatios`.

    Scores come from `scores` or else from `criterion` (with `batches` when it needs data);
    schedules that re-score use `criterion` when no `scores` were given and otherwise carry
    the given scores over to the kept channels. A criterion whose scores depend on the keep
    counts (`fmcluster`) is scored again, in one-shot pruning, for the counts the first pass
    chose, and the goal is searched again with those scores. `schedule` is `OneShot()` (default),
    `Iterative(step=0.05, between=...)` or `LayerByLayer(between=...)`. Channel counts are
    multiples of `round_to` and never below `min_channels` (default `round_to`); ranking is
    global across layers or, with `global_ranking=False`, a uniform ratio per layer. The
    classifier, `ignored_layers` and layers the dependency graph cannot prune exactly are
    protected (`protected_reasons` says why). `residual_stream="prune"` removes channels of
    a residual stream from every layer that writes to it at once (their scores averaged);
    `"keep"` leaves the stream's width alone and prunes only the convs inside the residual
    blocks, the physical counterpart of masking each conv's filters on its own. With
    `reestimate`, layers that lost input channels are refitted by least squares on
    `batches` (see `reestimate.py`). The input model is not modified and no backward pass
    is needed."""
    _check_model(model, example_inputs)
    if residual_stream not in RESIDUAL_STREAM_CHOICES:
        raise EdgepruneError(f"residual_stream {residual_stream!r}: choose prune (the stream's "
                             "channels with the layers that write to it) or keep")
    goal = _resolve_goal(flops_reduction, goal)
    schedule = schedule or OneShot()
    _check_policy(round_to, min_channels)
    data = list(batches) if batches is not None else None
    base = clone(model).eval()
    crit = _criterion(criterion) if scores is None else None
    scores = scores if scores is not None else _score(crit, base, data)
    _check_scores(base, scores)
    floor = math.ceil((min_channels or round_to) / round_to) * round_to
    expected = output_shape(base, example_inputs)
    protected, reasons = _protected(base, expected, example_inputs, scores,
                                    names_within(model, ignored_layers or []),
                                    keep_stream=residual_stream == "keep")
    latency = _latency_model(goal, base, example_inputs)
    start = Candidates(base, example_inputs, scores, Policy(round_to, floor, global_ranking),
                       expected, latency, reasons)
    reference = start.figures(base)
    progress = _run(goal, schedule, start, reference, protected, _rescorer(crit, data, scores))
    named = crit or (_criterion(criterion) if criterion is not None else None)
    again = _for_keep_counts(named, schedule, base, progress, data)
    if again is not None:  # a criterion whose scores depend on the counts just found
        _check_scores(base, again)
        start = Candidates(base, example_inputs, again, start.policy, expected, latency, reasons)
        progress = _run(goal, schedule, start, reference, protected, _rescorer(crit, data, again))
    refits = _reestimate(reestimate, base, progress, data)
    return _result(model, base, progress, start, reference, goal, schedule, refits)


def _resolve_goal(flops_reduction: float | None, goal: Goal | None) -> Goal:
    if goal is not None and flops_reduction is not None:
        raise EdgepruneError("pass either flops_reduction or goal, not both")
    if goal is None:
        return FlopsReduction(0.5 if flops_reduction is None else flops_reduction)
    return goal


def _check_policy(round_to: int, min_channels: int | None) -> None:
    if round_to < 1 or (min_channels is not None and min_channels < 1):
        raise EdgepruneError("round_to and min_channels must be positive")


def _criterion(criterion: Criterion | str | None) -> Criterion:
    if criterion is None:
        raise EdgepruneError("prune needs scores or a criterion")
    return get_criterion(criterion) if isinstance(criterion, str) else criterion


def _score(crit: Criterion, model: nn.Module, data: list | None) -> dict[str, Tensor]:
    if crit.needs_data and data is None:
        raise EdgepruneError(f"criterion {crit.name!r} needs reference batches")
    return crit.score(model, data if crit.needs_data else None)


def _for_keep_counts(crit: Criterion | None, schedule: Schedule, base: nn.Module,
                     progress: Progress, data: list | None) -> dict[str, Tensor] | None:
    """One-shot pruning with a criterion that scores for known keep counts (`fmcluster`
    clusters each layer into as many clusters as it keeps): its scores for the counts the
    first pass chose, else None (also when it needs data and has none)."""
    if crit is None or not isinstance(schedule, OneShot) or (crit.needs_data and data is None):
        return None
    counts = {n: len(progress.kept.get(n, range(m.weight.shape[0])))
              for n, m in prunable_layers(base).items()}
    refined = crit.with_keep_counts(counts)
    return None if refined is None else _score(refined, base, data)


def _check_model(model: nn.Module, example_inputs: Tensor) -> None:
    """EdgepruneError for inputs `prune` cannot work on, before any work."""
    if not isinstance(model, nn.Module):
        raise EdgepruneError(f"prune takes a torch.nn.Module, not a {type(model).__name__}")
    if not isinstance(example_inputs, Tensor):
        raise EdgepruneError(f"example_inputs must be a tensor (one input batch), not a "
                             f"{type(example_inputs).__name__}")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [n for n, p in tensors if p.is_meta]
    if meta:
        raise EdgepruneError(f"the model's {meta[0]} is on the meta device (no values); load "
                             "its weights first, e.g. with load_state_dict(..., assign=True)")
    broken = [n for n, p in tensors if p.is_floating_point() and not bool(p.isfinite().all())]
    if broken:
        raise EdgepruneError(f"the model's {broken[0]} holds NaN or infinite values; the model "
                             "diverged or its weights are damaged: use an earlier checkpoint")


def _check_scores(model: nn.Module, scores: dict[str, Tensor]) -> None:
    if not isinstance(scores, dict):
        raise EdgepruneError(f"scores must be a {{layer name: tensor}} dict, not a "
                             f"{type(scores).__name__}")
    layers = prunable_layers(model)
    for name, values in scores.items():
        if not isinstance(values, Tensor):
            raise EdgepruneError(f"scores for {name!r} must be a tensor of one score per "
                                 f"output channel, not a {type(values).__name__}")
        if name not in layers:
            raise EdgepruneError(f"scores name layer {name!r}, which is not a Conv2d or Linear "
                                 "of the model")
        if values.numel() != layers[name].weight.shape[0]:
            raise EdgepruneError(f"scores for {name!r} have {values.numel()} entries but the "
                                 f"layer has {layers[name].weight.shape[0]} output channels")


def _protected(base: nn.Module, expected: Any, example_inputs: Tensor,
               scores: dict[str, Tensor], ignored: list[str],
               keep_stream: bool = False) -> tuple[list[str], dict]:
    """Classifier, caller-ignored, unresolved (`unresolved_names`), residual-stream (with
    `keep_stream`), untraced and unscored layers, with the reason for each."""
    graph = build_graph(base, example_inputs)
    found = {n: "classifier (its outputs are the model's outputs)"
             for n in classifier_names(base, expected) + terminal_names(base, graph)}
    for n in ignored:
        found.setdefault(n, "in ignored_layers")
    unresolved = unresolved_names(base, graph, list(found))
    for n in unresolved:
        found[n] = ("Torch-Pruning's dependency search does not close around it (e.g. a "
                    "channel slice joined back by torch.cat)")
    if unresolved:
        info(f"prune: {len(unresolved)} layers kept whole (e.g. {unresolved[0]}): Torch-Pruning's "
             "dependency search does not close around them (e.g. a channel slice joined back "
             "by torch.cat)")
    if keep_stream:
        stream = residual_stream_names(base, graph, unresolved)
        if not stream:
            info("prune: the model has no residual stream; residual_stream='keep' changes "
                 "nothing")
        for n in stream:
            found.setdefault(n, "writes to a residual stream (kept whole: "
                                "residual_stream='keep')")
    untraced = [n for n in untraced_names(base, graph) if n not in found]
    for n in untraced:
        found[n] = "not in the traced graph (unused, or called outside forward)"
    if untraced:
        info(f"prune: {', '.join(untraced)} not in the traced forward pass; they stay unpruned")
    for n in prunable_layers(base):
        if n not in scores:
            found.setdefault(n, "no score from the criterion")
    return list(found), found


def _latency_model(goal: Goal, base: nn.Module, x: Tensor) -> LatencyModel | None:
    if not isinstance(goal, LatencyBudget):
        return None
    model = LatencyModel.for_target(goal.target, goal.threads, precision=goal.precision)
    if goal.measured_dense_ms is not None:
        model = model.calibrated(base, x, goal.measured_dense_ms)
    return model


def _rescorer(crit: Criterion | None, data: list | None, scores: dict[str, Tensor]) -> Rescorer:
    """Scores of a pruned model: the criterion again, or the first scores of kept channels."""
    if crit is not None:
        return lambda model, kept: _score(crit, model, data)
    return lambda model, kept: {n: s[kept[n]] if n in kept else s for n, s in scores.items()}


def _run(goal: Goal, schedule: Schedule, start: Candidates, reference: Figures,
         protected: list[str], rescore: Rescorer) -> Progress:
    if isinstance(goal, LayerRatios):
        return _layer_ratios(goal, schedule, start, protected)
    searched: SearchedGoal = goal
    if isinstance(schedule, Iterative):
        return run_iterative(start, searched, reference, protected, schedule, rescore)
    if isinstance(schedule, LayerByLayer):
        return run_layer_by_layer(start, searched, reference, protected, schedule, rescore)
    return run_oneshot(start, searched, reference, protected)


def _layer_ratios(goal: LayerRatios, schedule: Schedule, start: Candidates,
                  protected: list[str]) -> Progress:
    if not isinstance(schedule, OneShot):
        raise EdgepruneError("per-layer ratios are applied in one shot; drop the schedule")
    layers = prunable_layers(start.base)
    for name in goal.ratios:
        if name not in layers:
            raise EdgepruneError(f"layer ratio for {name!r}, which is not a Conv2d or Linear "
                                 "of the model")
        if name in protected:
            raise EdgepruneError(f"layer {name!r} is protected: {start.reasons[name]}")
    local = with_policy(start, global_ranking=False)
    trial, protected = local.checked(partial(local.evaluate, 0.0, layer_ratios=goal.ratios),
                                     protected)
    progress = Progress(start.base, protected)
    progress.advance(trial, protected, {"step": 1, "schedule": "one-shot"})
    return progress


def _reestimate(option: bool | Reestimate, base: nn.Module, progress: Progress,
                data: list | None) -> list[Refit]:
    if not option:
        return []
    if data is None:
        raise EdgepruneError("kernel re-estimation needs batches of sample images")
    options = option if isinstance(option, Reestimate) else Reestimate()
    return reestimate_kernels(base, progress.model, progress.kept, data, options)


def _result(model: nn.Module, base: nn.Module, progress: Progress, start: Candidates,
            reference: Figures, goal: Goal, schedule: Schedule,
            refits: list[Refit]) -> PruneResult:
    pruned = progress.model
    after = start.figures(pruned)
    channels = {n: (m.weight.shape[0], pruned.get_submodule(n).weight.shape[0])
                for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    latency = None
    if isinstance(goal, LatencyBudget) and start.latency is not None:
        lm = start.latency
        latency = LatencyReport(
            lm.profile.name, max(1, min(lm.threads or lm.profile.threads, lm.profile.cores)),
            goal.ms, reference.latency_ms, after.latency_ms, lm.scale, goal.measured_dense_ms)
    names = {OneShot: "one-shot", Iterative: "iterative", LayerByLayer: "layer-by-layer"}
    return PruneResult(
        pruned.train(model.training), reference.macs, after.macs, reference.params,
        after.params, channels, progress.protected, progress.ratio, start.tally["trials"],
        goal.describe(), names[type(schedule)], progress.kept,
        {n: start.reasons.get(n, "") for n in progress.protected}, progress.log, latency,
        refits)
