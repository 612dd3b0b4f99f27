"""Feature maps for the criteria: where a channel's activity is read, and its collection over
the reference images (`stream_maps`, `collect_maps`, shared by `fmcluster`, `concept`, `hrank`
and `function`).

Where a channel's activity is read: each prunable layer's output after the BatchNorm that
normalizes it (the unit's pre-activation) and, when the network applies one to that tensor
alone, the elementwise activation that follows (the unit's activation).

Found on a torch.fx trace: from the layer's node, follow a single-user chain through one
BatchNorm and one activation. When that chain runs into a residual sum whose only user is an
activation module (ResNet's `relu(bn2(conv2(x)) + shortcut)`), the channel is a channel of the
residual stream: removing it removes it from the sum and from every block that shares the
stream. It is then read where the stream is, at the sum (the input of that activation, which is
the pre-activation) and through the activation. Sums that no activation module follows
(MobileNetV2's) end the chain before the sum. Models fx cannot trace read the layer's own output
with no activation.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from edgeprune.criteria.base import Batches, prunable_layers
from edgeprune.models.copying import clone

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU)
_FUNCTIONAL = {torch.relu: torch.relu, nn.functional.relu: torch.relu,
               nn.functional.relu6: nn.functional.relu6}
_SUMS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class Tap:
    """Read layer `layer`'s channels at module `module`'s output (its input with
    `read_input`) on the module's `call`-th call of a forward pass (0 = first; ResNet blocks
    call one ReLU module twice), then apply `activation`."""

    layer: str
    module: str
    activation: Callable[[Tensor], Tensor] | None = None
    call: int = 0
    read_input: bool = False

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


def _is_sum(node: fx.Node | None) -> bool:
    return node is not None and (
        (node.op == "call_function" and node.target in _SUMS) or
        (node.op == "call_method" and node.target in ("add", "add_")))


def _call_index(gm: fx.GraphModule, node: fx.Node) -> int:
    """How many calls of the same module come before `node` in the forward pass."""
    same = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    return same.index(node)


def _tap_of(gm: fx.GraphModule, name: str, nodes: list[fx.Node]) -> Tap:
    if len(nodes) != 1:  # called several times (or never): read the layer itself
        return Tap(name, name)
    node, module = nodes[0], name
    user = _sole_user(node)
    if user is not None and user.op == "call_module" and \
            isinstance(gm.get_submodule(user.target), nn.modules.batchnorm._BatchNorm):
        node, module = user, str(user.target)
        user = _sole_user(node)
    if _is_sum(user):  # a residual stream channel: read it at the sum, through its activation
        act_node = _sole_user(user)
        activation = _activation_of(gm, act_node)
        if activation is not None and act_node.op == "call_module":
            return Tap(name, str(act_node.target), activation, _call_index(gm, act_node),
                       read_input=True)
        return Tap(name, module)
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
    work = clone(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    for m in work.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return work


def attach(model: nn.Module, taps: dict[str, Tap],
           on_value: Callable[[str, Tensor], None]) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks calling `on_value(key, tensor)` whenever the tapped tensor of `taps[key]` is
    computed (the tapped call of its module, counted from each forward of `model`); the
    caller removes the returned handles."""
    present = dict(model.named_modules())
    calls: dict[str, int] = {}
    by_module: dict[str, list[tuple[str, Tap]]] = {}
    for key, tap in taps.items():
        if tap.module in present:
            by_module.setdefault(tap.module, []).append((key, tap))

    def reset(_module: nn.Module, _inputs: object) -> None:
        calls.clear()

    def seen(name: str, tensors: dict[bool, Tensor]) -> None:
        index = calls.get(name, 0)
        calls[name] = index + 1
        for key, tap in by_module[name]:
            if tap.call == index:
                on_value(key, tensors[tap.read_input])

    handles = [model.register_forward_pre_hook(reset)]
    for name in by_module:
        handles.append(present[name].register_forward_hook(
            lambda _m, inputs, output, name=name: seen(name, {False: output, True: inputs[0]})))
    return handles


@contextmanager
def recording(model: nn.Module, taps: dict[str, Tap], store: dict[str, Tensor],
              live: dict[str, Tensor] | None = None) -> Iterator[None]:
    """While active, every forward pass writes `store[key]` = a detached copy of the tapped
    tensor of `taps[key]` (an in-place op later in forward, such as `out += identity`, cannot
    change it) and, when `live` is given, `live[key]` = the tensor itself, in the autograd
    graph, for gradients. The hooks are removed on exit."""
    def keep(key: str, tensor: Tensor) -> None:
        store[key] = tensor.detach().clone()
        if live is not None:
            live[key] = tensor

    handles = attach(model, taps, keep)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


BATCH_BYTES = 256 * 2**20  # feature maps one batch may hold, scoring or AM alike


def images_per_batch(model: nn.Module, shape: tuple[int, ...], most: int) -> int:
    """As many images as keep one batch's feature maps under BATCH_BYTES, 1 to `most`."""
    return max(1, min(most, BATCH_BYTES // max(feature_map_bytes(model, shape), 1)))


def feature_map_bytes(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Bytes of every leaf module's output for one input of `shape` (C, H, W): what one
    image's forward pass holds, the unit a criterion's memory grows by per image."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel() * output.element_size()

    work = working_copy(model)
    leaves = [m for m in work.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    device = next(iter(work.parameters()), torch.zeros(0)).device
    try:
        with torch.no_grad():
            work(torch.zeros(1, *shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


# ---------------------------------------------------------------- collection over the data

def take_samples(batches: list[tuple[Tensor, ...]], limit: int | None) -> list[tuple[Tensor, ...]]:
    """The first `limit` samples of the batches (all when None), batch structure kept."""
    if limit is None:
        return batches
    out, left = [], limit
    for batch in batches:
        if left <= 0:
            break
        out.append(tuple(t[:left] for t in batch))
        left -= len(batch[0])
    return out


def stream_maps(model: nn.Module, batches: Batches,
                names: list[str] | None = None) -> Iterator[tuple[tuple, dict[str, Tensor]]]:
    """Per batch: (the batch, {layer: unit activations}) of every prunable layer, read on an
    eval-mode working copy; hooks live only while the generator runs."""
    work = working_copy(model)
    names = list(prunable_layers(work)) if names is None else names
    taps = find_taps(work, names)
    device = next(iter(work.parameters()), torch.zeros(0)).device
    store: dict[str, Tensor] = {}
    with recording(work, taps, store):
        for batch in batches:
            store.clear()
            with torch.no_grad():  # not around the yield: the caller's grad mode stays its own
                work(batch[0].to(device))
                maps = {n: taps[n].activated(store[n]) for n in names if n in store}
            yield batch, maps


def collect_maps(model: nn.Module, batches: Batches, names: list[str] | None = None,
                 reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Every layer's unit activations over all batches, concatenated on the sample axis
    (each batch's maps passed through `reduce` first when given). Layers that forward never
    reaches are absent."""
    parts: dict[str, list[Tensor]] = {}
    for _, maps in stream_maps(model, batches, names):
        for name, value in maps.items():
            parts.setdefault(name, []).append(reduce(value) if reduce else value.cpu())
    return {n: torch.cat(v) for n, v in parts.items()}
