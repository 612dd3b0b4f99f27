"""One pruning pass through Torch-Pruning: scores, a ratio (or per-layer ratios) and a policy
in, a pruned copy out, with a record of which original channels every layer kept."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch_pruning as tp
from torch import Tensor, nn

from edgeprune.pruning.compat import torch_pruning_compat
from edgeprune.pruning.importance import PrecomputedImportance


@dataclass(frozen=True)
class Policy:
    """How channels are chosen: Torch-Pruning's ranking and rounding, plus a floor per layer
    (a multiple of `round_to`) below which no layer is cut."""

    round_to: int
    floor: int
    global_ranking: bool


@dataclass
class Cut:
    """A pruned copy and, for every layer that lost output channels, the indices (in the
    numbering of the model the pass started from) of the channels it kept."""

    model: nn.Module
    kept: dict[str, list[int]] = field(default_factory=dict)


def out_width(module: nn.Module) -> int | None:
    """Output channels of a layer with a per-channel weight (conv, linear, norm), else None."""
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.ndim >= 1 else None


def kept_from_removed(removed: dict[str, set[int]], widths: dict[str, int]) -> dict[str, list[int]]:
    """{layer: removed indices} -> {layer: kept indices}, for the layers that lost channels."""
    return {n: [i for i in range(widths[n]) if i not in gone] for n, gone in removed.items()
            if gone}


def compose(first: dict[str, list[int]], then: dict[str, list[int]]) -> dict[str, list[int]]:
    """Kept indices after two passes: `then` numbers channels as they were after `first`."""
    out = dict(first)
    for name, kept in then.items():
        out[name] = [first[name][i] for i in kept] if name in first else list(kept)
    return out


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


def record_removed(group: tp.dependency.Group, graph: tp.DependencyGraph,
                   names: dict[nn.Module, str], widths: dict[str, int],
                   removed: dict[str, set[int]]) -> None:
    """Note the output channels every layer of `group` loses."""
    for item in group:
        dep = item.dep
        name = names.get(dep.target.module)
        if name in widths and graph.is_out_channel_pruning_fn(dep.handler):
            removed.setdefault(name, set()).update(int(i) for i in item.idxs)


@torch_pruning_compat
def cut(base: nn.Module, example_inputs: Tensor, scores: dict[str, Tensor], policy: Policy,
        protected: list[str], ratio: float = 0.0,
        layer_ratios: dict[str, float] | None = None) -> Cut:
    """A copy of `base` pruned in one Torch-Pruning step at channel ratio `ratio`, or at
    `layer_ratios` (layer name -> ratio of its group; other layers untouched)."""
    work = copy.deepcopy(base)
    names = {m: n for n, m in work.named_modules()}
    widths = {n: w for n, m in work.named_modules() if (w := out_width(m)) is not None}
    importance = PrecomputedImportance(scores, names)
    per_layer = {work.get_submodule(n): r for n, r in (layer_ratios or {}).items()}
    pruner = tp.pruner.BasePruner(
        work, example_inputs, importance=importance,
        pruning_ratio=0.0 if layer_ratios else ratio, pruning_ratio_dict=per_layer or None,
        global_pruning=policy.global_ranking and not layer_ratios, round_to=policy.round_to,
        ignored_layers=[work.get_submodule(n) for n in protected])
    # Torch-Pruning drops a group outright when the ranking takes all its channels; let every
    # group through instead, trim it to the floor, then apply Torch-Pruning's check.
    check = pruner.DG.check_pruning_group
    pruner.DG.check_pruning_group = lambda group: True
    removed: dict[str, set[int]] = {}
    for group in pruner.step(interactive=True):
        trimmed = _above_floor(pruner, importance, group, policy.floor)
        if trimmed is not None and check(trimmed):
            record_removed(trimmed, pruner.DG, names, widths, removed)
            trimmed.prune()
    return Cut(work, kept_from_removed(removed, widths))


def prune_at_ratio(base: nn.Module, example_inputs: Tensor, scores: dict[str, Tensor],
                   ratio: float, policy: Policy, protected: list[str]) -> nn.Module:
    """A copy of `base` pruned by Torch-Pruning at channel ratio `ratio` (one step)."""
    return cut(base, example_inputs, scores, policy, protected, ratio).model
