"""Which layers the pruner must leave alone: the classifier, the caller's choice, layers the
dependency graph does not see, and layers whose removal the graph cannot carry out."""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.pruner import function

from edgeprune.criteria.base import prunable_layers
from edgeprune.errors import EdgepruneError
from edgeprune.pruning.importance import OUT_CHANNEL_FNS

ROOT_TYPES = [nn.Conv2d, nn.Linear]


def output_shape(model: nn.Module, example_inputs: Tensor) -> torch.Size:
    """Shape of the model's output on the example inputs (the model must return a tensor)."""
    with torch.no_grad():
        out = model(example_inputs)
    if not isinstance(out, Tensor):
        raise EdgepruneError(f"the model returns a {type(out).__name__}; edgeprune prunes "
                             "classifiers that return one logits tensor")
    return out.shape


def forward_ok(model: nn.Module, example_inputs: Tensor, expected: torch.Size) -> bool:
    """Whether the model still runs on the example and gives an output of the expected shape."""
    try:
        return output_shape(model, example_inputs) == expected
    except Exception:  # noqa: BLE001 - any failure means the surgery broke the model
        return False


def classifier_names(model: nn.Module, expected: torch.Size) -> list[str]:
    """Linear layers producing the model's output width: the classifier, never pruned."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.out_features == expected[-1]]


def names_within(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    """Qualified names of the prunable layers inside the given modules of `model`."""
    wanted = {id(sub) for m in modules for sub in m.modules()}
    return [n for n, m in prunable_layers(model).items() if id(m) in wanted]


def build_graph(model: nn.Module, example_inputs: Tensor) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as e:  # noqa: BLE001 - tracing failures come in every type
        raise EdgepruneError(f"Torch-Pruning cannot trace the model ({type(e).__name__}: {e}); "
                             "it cannot be pruned structurally") from None


def untraced_names(model: nn.Module, graph: tp.DependencyGraph) -> list[str]:
    """Prunable layers the traced graph does not contain (unused, or called outside forward)."""
    return [n for n, m in prunable_layers(model).items() if m not in graph.module2node]


def group_roots(model: nn.Module, graph: tp.DependencyGraph, protected: list[str]) -> list[str]:
    """Names of the root layer of every prunable group (`graph` built on `model`)."""
    names = {m: n for n, m in model.named_modules()}
    ignored = [model.get_submodule(n) for n in protected]
    return [names[g[0].dep.target.module]
            for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES)]


def _probe_group(model: nn.Module, root: str, example_inputs: Tensor,
                 expected: torch.Size) -> list[str] | None:
    """Remove one channel of `root`'s group on a copy; the group's layers if that breaks."""
    work = copy.deepcopy(model)
    graph = build_graph(work, example_inputs)
    module = work.get_submodule(root)
    fn = function.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else function.prune_conv_out_channels
    group = graph.get_pruning_group(module, fn, [0])
    names = {m: n for n, m in work.named_modules()}
    members = [names[d.target.module] for d, _ in group
               if d.handler in OUT_CHANNEL_FNS and d.target.module in names]
    try:
        group.prune()
    except Exception:  # noqa: BLE001 - the surgery itself failed
        return members
    return None if forward_ok(work, example_inputs, expected) else members


def unprunable_names(model: nn.Module, example_inputs: Tensor, expected: torch.Size,
                     protected: list[str]) -> list[str]:
    """Layers whose groups the graph cannot prune (found by pruning each group alone)."""
    graph = build_graph(model, example_inputs)
    bad: list[str] = []
    for root in group_roots(model, graph, protected):
        members = _probe_group(model, root, example_inputs, expected)
        bad += [n for n in members or [] if n not in bad]
    return bad
