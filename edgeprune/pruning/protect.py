"""Which layers the pruner must leave alone: the classifier (every layer feeding the output
without another conv/linear in between), the caller's choice, layers the dependency graph does
not see, and layers whose removal the graph cannot carry out, either because the pruned model
fails or because it is no longer exact (see `is_exact`)."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning import ops
from torch_pruning.pruner import function

from edgeprune.criteria.base import prunable_layers
from edgeprune.errors import EdgepruneError
from edgeprune.models.copying import clone
from edgeprune.pruning.compat import EndlessGroup, torch_pruning_compat
from edgeprune.pruning.importance import OUT_CHANNEL_FNS
from edgeprune.pruning.surgery import Cut, kept_from_removed, out_width, record_removed

ROOT_TYPES = [nn.Conv2d, nn.Linear]


def output_shape(model: nn.Module, example_inputs: Tensor) -> torch.Size:
    """Shape of the model's output on the example inputs (the model must return a tensor)."""
    with torch.no_grad():
        try:
            out = model(example_inputs)
        except Exception as e:  # noqa: BLE001 - the caller's model failing on their input
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgepruneError(f"the model fails on example_inputs of shape "
                                 f"{tuple(example_inputs.shape)}: {reason}; give one batch of "
                                 "the input the model takes") from None
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


@torch_pruning_compat
def build_graph(model: nn.Module, example_inputs: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model`, traced on `example_inputs`."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as e:  # noqa: BLE001 - tracing failures come in every type
        raise EdgepruneError(f"Torch-Pruning cannot trace the model ({type(e).__name__}: {e}); "
                             "it cannot be pruned structurally") from None


def untraced_names(model: nn.Module, graph: tp.DependencyGraph) -> list[str]:
    """Prunable layers the traced graph does not contain (unused, or called outside forward)."""
    return [n for n, m in prunable_layers(model).items() if m not in graph.module2node]


@torch_pruning_compat
def group_roots(model: nn.Module, graph: tp.DependencyGraph, protected: list[str]) -> list[str]:
    """Names of the root layer of every prunable group (`graph` built on `model`)."""
    names = {m: n for n, m in model.named_modules()}
    ignored = [model.get_submodule(n) for n in protected]
    return [names[g[0].dep.target.module]
            for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES)]


@torch_pruning_compat
def unresolved_names(model: nn.Module, graph: tp.DependencyGraph,
                     protected: list[str]) -> list[str]:
    """Layers whose channel dependencies Torch-Pruning's group search cannot close (a group
    that grows without end, see `compat.EndlessGroup`): every layer of such a group that
    would lose output channels, found group by group until the search over all the others
    ends."""
    names = {m: n for n, m in model.named_modules()}
    layers = prunable_layers(model)
    found: list[str] = []
    while True:
        ignored = [model.get_submodule(n) for n in [*protected, *found]]
        try:
            for _ in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
                pass
            return found
        except EndlessGroup as endless:
            members = [n for n in dict.fromkeys(out_channel_members(endless.group, names))
                       if n in layers and n not in found and n not in protected]
            if not members:
                raise EdgepruneError("Torch-Pruning's channel dependency search does not end "
                                     "on this model; it cannot be pruned structurally") from None
            found += members


def _is_residual_add(node: object) -> bool:
    """A traced add of two graph tensors: where a residual branch joins the stream."""
    return node.type == ops.OPTYPE.ELEMENTWISE and len(node.inputs) >= 2 and \
        type(node.grad_fn).__name__.startswith("AddBackward")


@torch_pruning_compat
def residual_stream_names(model: nn.Module, graph: tp.DependencyGraph,
                          protected: list[str] = ()) -> list[str]:
    """Layers whose output channels are coupled through a residual add: the stem, the last
    conv of every residual block and the projection shortcuts, which share the width of the
    stream they write to. The convs inside the blocks are not among them; groups rooted at
    `protected` layers are not searched."""
    names = {m: n for n, m in model.named_modules()}
    found: list[str] = []
    ignored = [model.get_submodule(n) for n in protected]
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
        if any(_is_residual_add(dep.target) for dep, _ in group):
            found += [n for n in out_channel_members(group, names) if n not in found]
    return found


def out_channel_members(group: tp.Group, names: dict[nn.Module, str]) -> list[str]:
    """Names of the layers of a pruning group that lose output channels."""
    return [names[d.target.module] for d, _ in group
            if d.handler in OUT_CHANNEL_FNS and d.target.module in names]


def terminal_names(model: nn.Module, graph: tp.DependencyGraph) -> list[str]:
    """Prunable layers with no conv or linear layer after them in the traced graph: their
    outputs are the model's outputs (the classifier, or the last conv of an all-conv head like
    SqueezeNet's), so their output channels must stay."""
    prunable = set(prunable_layers(model).values())
    names = {m: n for n, m in model.named_modules()}
    found = []
    for module, node in graph.module2node.items():
        if module not in prunable:
            continue
        seen, stack, feeds_layer = set(), list(node.outputs), False
        while stack and not feeds_layer:
            nxt = stack.pop()
            if nxt not in seen:
                seen.add(nxt)
                feeds_layer = nxt.module in prunable
                stack.extend(nxt.outputs)
        if not feeds_layer:
            found.append(names[module])
    return found


OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               nn.modules.instancenorm._InstanceNorm)
"""Norms that mix channels: a zeroed channel changes the others, so the check replaces them."""


@torch.no_grad()
def _zero_removed(model: nn.Module, kept: dict[str, list[int]]) -> None:
    """Make every removed channel output zero: its weight row, bias and BN mean set to 0; an
    `nn.MultiheadAttention`'s query, key and value rows and output rows; a loose parameter's
    (class token's) entries."""
    modules = dict(model.named_modules())
    for name, keep in kept.items():
        if name not in modules:
            parameter = model.get_parameter(name)
            dims = [d for d, size in enumerate(parameter.shape) if size != 1]
            gone = sorted(set(range(parameter.shape[dims[-1]])) - set(keep))
            parameter.index_fill_(dims[-1], torch.tensor(gone, dtype=torch.long), 0.0)
            continue
        module = modules[name]
        if isinstance(module, nn.MultiheadAttention):
            _zero_mha(module, keep)
            continue
        gone = sorted(set(range(module.weight.shape[0])) - set(keep))
        for attr in ("weight", "bias", "running_mean"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, Tensor):
                tensor[gone] = 0


def _zero_mha(module: nn.MultiheadAttention, keep: list[int]) -> None:
    """Removed embedding channels of `module` silenced: with their query, key and value rows
    zero, a removed head adds nothing (softmax of zeros times zero values)."""
    e = module.embed_dim
    gone = sorted(set(range(e)) - set(keep))
    rows = [i + k * e for k in range(3) for i in gone]
    for tensor in (module.in_proj_weight, module.in_proj_bias):
        if isinstance(tensor, Tensor):
            tensor[rows] = 0
    for tensor in (module.out_proj.weight, module.out_proj.bias):
        if isinstance(tensor, Tensor):
            tensor[gone] = 0


def _without_channel_mixing_norms(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, OTHER_NORMS) and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model


def _with_unit_statistics(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm's running mean 0 and variance 1 (what an untrained
    network holds), in place."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()  # a no-op without running statistics
    return model


def is_exact(base: nn.Module, cut: Cut, example_inputs: Tensor, rtol: float = 1e-3) -> bool:
    """Whether the pruned model computes exactly what `base` computes with the removed
    channels zeroed (norms that mix channels replaced by identities on both sides).

    This holds for any correct structural pruning, whatever the weights, and fails when the
    graph removed mismatched channels on the two sides of a layer (e.g. an index mapping the
    graph does not understand, such as a channel shuffle): such surgery runs and keeps the
    output shape but silently scrambles the model. Both sides compare with BatchNorm's
    running statistics reset to mean 0, variance 1: statistics estimated with the
    channel-mixing norms in place can, once those norms are identities, drive the activations
    to inf and NaN, which no comparison passes (timm MobileViTv2 with statistics from data:
    every layer was judged inexact and nothing could be pruned)."""
    if not cut.kept:
        return True
    reference = clone(base).eval()
    _zero_removed(reference, cut.kept)
    reference = _with_unit_statistics(_without_channel_mixing_norms(reference))
    pruned = _with_unit_statistics(_without_channel_mixing_norms(clone(cut.model).eval()))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *example_inputs.shape[1:], generator=g, dtype=example_inputs.dtype)
    with torch.no_grad():
        try:
            want, got = reference(x), pruned(x)
        except Exception:  # noqa: BLE001 - a model that no longer runs is not exact
            return False
    scale = float(want.abs().max())
    return want.shape == got.shape and bool(
        ((want - got).abs() <= rtol * scale + 1e-6).all())


def forward_order(model: nn.Module, names: list[str], example_inputs: Tensor) -> list[str]:
    """`names` in the order the forward pass first calls them (uncalled ones dropped)."""
    order: list[str] = []

    def note(name: str) -> None:
        if name not in order:
            order.append(name)

    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, _a, n=n: note(n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def _probe_indices(width: int) -> list[int]:
    """A few channels that no channel permutation keeps in place all at once."""
    return sorted({min(1, width - 1), width // 3, width // 2})


FAILS = "the dependency graph cannot prune it (the pruned copy fails)"
INEXACT = ("the dependency graph prunes it inexactly (a channel mapping it does not follow, "
           "e.g. a channel shuffle)")


def _probe_group(model: nn.Module, root: str, example_inputs: Tensor,
                 expected: torch.Size) -> tuple[list[str], str] | None:
    """Remove a few channels of `root`'s group on a copy: (the group's layers, why) when the
    copy fails, changes its output shape or is no longer exact, else None."""
    work = clone(model)
    graph = build_graph(work, example_inputs)
    module = work.get_submodule(root)
    fn = function.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else function.prune_conv_out_channels
    group = graph.get_pruning_group(module, fn, _probe_indices(module.weight.shape[0]))
    names = {m: n for n, m in work.named_modules()}
    members = out_channel_members(group, names)
    widths = {n: w for n, m in work.named_modules() if (w := out_width(m)) is not None}
    removed: dict[str, set[int]] = {}
    record_removed(group, graph, names, widths, removed)
    try:
        group.prune()
    except Exception:  # noqa: BLE001 - the surgery itself failed
        return members, FAILS
    if not forward_ok(work, example_inputs, expected):
        return members, FAILS
    if not is_exact(model, Cut(work, kept_from_removed(removed, widths)), example_inputs):
        return members, INEXACT
    return None


@torch_pruning_compat
def unprunable_names(model: nn.Module, example_inputs: Tensor, expected: torch.Size,
                     protected: list[str]) -> dict[str, str]:
    """Layers whose groups the graph cannot prune (found by pruning each group alone), with
    the reason for each."""
    graph = build_graph(model, example_inputs)
    bad: dict[str, str] = {}
    for root in group_roots(model, graph, protected):
        if root in bad:
            continue
        found = _probe_group(model, root, example_inputs, expected)
        if found is not None:
            for name in found[0]:
                bad.setdefault(name, found[1])
    return bad
