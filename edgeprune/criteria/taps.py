"""Where a channel's activity is read: each prunable layer's output after the BatchNorm that
normalizes it (the unit's pre-activation) and, when the network applies one to that tensor
alone, the elementwise activation that follows (the unit's activation).

Found on a torch.fx trace: from the layer's node, follow a single-user chain through one
BatchNorm and one activation. A residual sum ends the chain (the sum mixes channels of several
layers), so ResNet's `bn2` output is read before the add. Models fx cannot trace read the
layer's own output with no activation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from edgeprune.criteria.base import prunable_layers

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU)
_FUNCTIONAL = {torch.relu: torch.relu, nn.functional.relu: torch.relu,
               nn.functional.relu6: nn.functional.relu6}


@dataclass(frozen=True)
class Tap:
    """Read layer `layer`'s channels at module `module`'s output, then apply `activation`."""

    layer: str
    module: str
    activation: Callable[[Tensor], Tensor] | None = None

    def activated(self, pre: Tensor) -> Tensor:
        """The unit's activation from the tapped pre-activation."""
        return self.activation(pre) if self.activation is not None else pre


def _sole_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _activation_of(gm: fx.GraphModule, node: fx.Node | None) -> Callable | None:
    if node is None:
        return None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, ACTIVATIONS):
            act = copy.deepcopy(module)
            if hasattr(act, "inplace"):
                act.inplace = False
            return act
    if node.op == "call_function" and node.target in _FUNCTIONAL and len(node.args) == 1:
        return _FUNCTIONAL[node.target]
    return None


def _tap_of(gm: fx.GraphModule, name: str, nodes: list[fx.Node]) -> Tap:
    if len(nodes) != 1:  # called several times (or never): read the layer itself
        return Tap(name, name)
    node, module = nodes[0], name
    user = _sole_user(node)
    if user is not None and user.op == "call_module" and \
            isinstance(gm.get_submodule(user.target), nn.modules.batchnorm._BatchNorm):
        node, module = user, str(user.target)
        user = _sole_user(node)
    return Tap(name, module, _activation_of(gm, user))


def find_taps(model: nn.Module, names: list[str] | None = None) -> dict[str, Tap]:
    """A Tap for every prunable layer of `model` (or the layers `names`)."""
    names = list(prunable_layers(model)) if names is None else names
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any trace failure means: read the layers themselves
        return {n: Tap(n, n) for n in names}
    calls: dict[str, list[fx.Node]] = {n: [] for n in names}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in calls:
            calls[node.target].append(node)
    return {n: _tap_of(gm, n, calls[n]) for n in names}


def working_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with frozen parameters and no in-place activations (a hook's view of
    a BatchNorm output must not be overwritten by the ReLU after it)."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    for m in work.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return work


@contextmanager
def recording(model: nn.Module, modules: dict[str, str], store: dict[str, Tensor],
              live: dict[str, Tensor] | None = None) -> Iterator[None]:
    """While active, every forward pass writes `store[key]` = a detached copy of the output of
    module `modules[key]` (an in-place op later in forward, such as `out += identity`, cannot
    change it) and, when `live` is given, `live[key]` = the output itself, in the autograd
    graph, for gradients. The hooks are removed on exit."""
    handles = []
    by_module: dict[str, list[str]] = {}
    for key, module in modules.items():
        by_module.setdefault(module, []).append(key)

    def hook(keys: list[str], _module: nn.Module, _inputs: object, output: Tensor) -> None:
        value = output.detach().clone()
        for key in keys:
            store[key] = value
            if live is not None:
                live[key] = output

    present = dict(model.named_modules())
    try:
        for module, keys in by_module.items():
            if module in present:
                handles.append(present[module].register_forward_hook(
                    lambda m, i, o, keys=keys: hook(keys, m, i, o)))
        yield
    finally:
        for handle in handles:
            handle.remove()
