"""One pruning pass through Torch-Pruning: scores, a ratio (or per-layer ratios) and a policy
in, a pruned copy out, with a record of which original channels every layer kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch_pruning as tp
from torch import Tensor, nn

from edgeprune.models.copying import clone, forget_forward_caches
from edgeprune.pruning.attention import (
    as_whole_heads,
    attention_head_dim,
    head_counts,
    mha_head_dim,
    sync_heads,
    trim_heads,
)
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
    """Output channels of a layer with a per-channel weight (conv, linear, norm), of an
    `nn.MultiheadAttention` (its `embed_dim`), else None."""
    if isinstance(module, nn.MultiheadAttention):
        return int(module.embed_dim)
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.ndim >= 1 else None


def parameter_width(parameter: Tensor) -> int:
    """Channels of a parameter outside conv/linear layers (a class token, a position
    embedding): its last non-singleton dimension, the one Torch-Pruning cuts."""
    sizes = [d for d in parameter.shape if d != 1]
    return int(sizes[-1]) if sizes else 1


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
    `layer_ratios` (layer name -> ratio of its group; other layers untouched).

    Attention loses whole heads at the same ratio (`head_pruning_ratio`; a `qkv` layer named
    in `layer_ratios` sets its own), ranked as the channels are, each attention keeping one
    head at least (see `attention.py`)."""
    work = clone(base)
    names = {m: n for n, m in work.named_modules()}
    widths = {n: w for n, m in work.named_modules() if (w := out_width(m)) is not None}
    owned = {id(p) for m in names for p in m.parameters(recurse=False)
             if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention))}
    loose = {p: n for n, p in work.named_parameters() if id(p) not in owned}
    names.update(loose)  # parameters Torch-Pruning cuts with the channels (class tokens)
    widths.update({n: parameter_width(p) for p, n in loose.items()})
    importance = PrecomputedImportance(scores, names)
    per_layer = {work.get_submodule(n): r for n, r in (layer_ratios or {}).items()}
    heads = head_counts(work)
    fused = {m: n for m, n in heads.items() if not isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.BasePruner(
        work, example_inputs, importance=importance,
        pruning_ratio=0.0 if layer_ratios else ratio, pruning_ratio_dict=per_layer or None,
        global_pruning=policy.global_ranking and not layer_ratios, round_to=policy.round_to,
        ignored_layers=[work.get_submodule(n) for n in protected],
        num_heads=dict(fused), prune_num_heads=bool(fused), prune_head_dims=False,
        head_pruning_ratio=0.0 if layer_ratios else ratio,
        head_pruning_ratio_dict={m: r for m, r in per_layer.items() if m in fused} or None,
        out_channel_groups={m: n for m, n in heads.items() if m not in fused})
    # Torch-Pruning drops a group outright when the ranking takes all its channels; let every
    # group through instead, trim it to the floor, then apply Torch-Pruning's check.
    check = pruner.DG.check_pruning_group
    pruner.DG.check_pruning_group = lambda group: True
    removed: dict[str, set[int]] = {}
    for group in pruner.step(interactive=True):
        head_dim, mha_dim = attention_head_dim(group, fused), mha_head_dim(group)
        if head_dim is not None:
            trimmed = trim_heads(group, pruner.DG, head_dim, importance, policy.floor)
        elif mha_dim is not None:
            trimmed = as_whole_heads(group, pruner.DG, mha_dim, importance, policy.floor)
        else:
            trimmed = _above_floor(pruner, importance, group, policy.floor)
        if trimmed is not None and check(trimmed):
            record_removed(trimmed, pruner.DG, names, widths, removed)
            trimmed.prune()
    sync_heads(work)
    forget_forward_caches(work)  # the trace filled them with the uncut attention biases
    return Cut(work, kept_from_removed(removed, widths))


def prune_at_ratio(base: nn.Module, example_inputs: Tensor, scores: dict[str, Tensor],
                   ratio: float, policy: Policy, protected: list[str]) -> nn.Module:
    """A copy of `base` pruned by Torch-Pruning at channel ratio `ratio` (one step)."""
    return cut(base, example_inputs, scores, policy, protected, ratio).model
