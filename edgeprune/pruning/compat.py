"""Running Torch-Pruning 1.6.1 inside edgeprune: a compatibility shim for current PyTorch, and
its per-graph warnings summarised in one line.

Torch-Pruning reads the input shape of view/reshape and chunk/split nodes from the autograd
node's `_saved_self_sizes`; since PyTorch 2.1 that attribute is called `_saved_self_sym_sizes`.
Without it Torch-Pruning falls back to an older shape inference that divides by zero on
ShuffleNet's channel shuffle and mis-sizes `torch.chunk`. `sizes_as_torch_pruning_expects()`
gives those nodes the old attribute for the duration of a graph build and takes it away after.

`nn.MultiheadAttention` is pruned by edgeprune's `HeadAwareMHAPruner` (whole heads or the same
dimensions of every head, `num_heads`/`head_dim` kept consistent) in place of Torch-Pruning's,
which keeps the head count whatever it cuts: `mha_heads_pruned()` swaps it into Torch-Pruning's
table of pruners for the duration of a call.

Torch-Pruning infers the channels of a concat's inputs by walking the graph back to a layer
that knows its width, and gives up past `constants.MAX_RECURSION_DEPTH` (500) nodes visited in
one walk (a count of visits, not a depth); the concat then sums None and the graph build fails.
torchvision Swin-S (18 blocks before a patch merging) and timm DPN-68 (dual-path concats)
passed it. `sizes_as_torch_pruning_expects()` lifts the bound to `SHAPE_WALK_LIMIT` too.

Torch-Pruning follows a channel slice that is joined back by `torch.cat` (ReXNet's partial
residual, `cat([x[:, :c] + shortcut, x[:, c:]])`) with index mappings that shift on every
visit, so its group search adds dependencies without end. `groups_bounded()` stops a group at
`GROUP_LIMIT` dependencies (the largest groups measured: DenseNet-121 102, DeiT-Tiny 180,
ghostnet_100 151) with `EndlessGroup`, which carries the group so far; `protect.unresolved_names`
keeps those layers whole.

Every graph build also warns, over several lines, about parameters outside conv/linear layers
("Unwrapped parameters detected", e.g. ConvNeXt's `layer_scale`), and one `prune()` builds
dozens of graphs. `unwrapped_parameters_summarised()` catches those warnings where they arise
and prints one line per call instead; other warnings pass through unchanged.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch_pruning import ops
from torch_pruning.dependency import constants, index_mapping, shape_infer
from torch_pruning.dependency import group as tp_group
from torch_pruning.pruner import function

from edgeprune.console import info

_SIZED = (ops.OPTYPE.SPLIT, ops.OPTYPE.RESHAPE)
SHAPE_WALK_LIMIT = 100_000
"""Nodes one channel-inference walk of Torch-Pruning may visit (its own bound is 500; Swin-S
needs more, and a walk visits each node once, so the bound only stops a runaway)."""
GROUP_LIMIT = 5000
"""Dependencies in one pruning group past which Torch-Pruning's group search is not ending."""
_UNWRAPPED = re.compile(r"Unwrapped parameters detected: (\[.*?\])")


class _SizedGradFn:
    """An autograd node seen through the attribute name Torch-Pruning 1.6 reads."""

    def __init__(self, grad_fn: Any) -> None:
        self._grad_fn = grad_fn
        self._saved_self_sizes = tuple(int(d) for d in grad_fn._saved_self_sym_sizes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grad_fn, name)


def _needs_sizes(grad_fn: Any) -> bool:
    return grad_fn is not None and not hasattr(grad_fn, "_saved_self_sizes") and hasattr(
        grad_fn, "_saved_self_sym_sizes")


def _with_sizes(step: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`step(graph)` run while the graph's reshape and split nodes carry `_saved_self_sizes`."""

    def run(graph: Any) -> Any:
        swapped = {node: node.grad_fn for node in graph.module2node.values()
                   if node.type in _SIZED and _needs_sizes(node.grad_fn)}
        for node, grad_fn in swapped.items():
            node.grad_fn = _SizedGradFn(grad_fn)
        try:
            return step(graph)
        finally:
            for node, grad_fn in swapped.items():
                node.grad_fn = grad_fn

    run.__wrapped__ = step  # type: ignore[attr-defined]
    return run


def _inside() -> bool:
    """Whether a `sizes_as_torch_pruning_expects()` block is already active."""
    return hasattr(shape_infer.init_shape_information, "__wrapped__")


@contextmanager
def sizes_as_torch_pruning_expects() -> Iterator[None]:
    """Within the block, Torch-Pruning's graph builds see `_saved_self_sizes` again, and its
    channel inference may walk `SHAPE_WALK_LIMIT` nodes."""
    originals = (shape_infer.init_shape_information, index_mapping.update_index_mapping)
    if _inside():  # nested use
        yield
        return
    walk_limit = constants.MAX_RECURSION_DEPTH
    shape_infer.init_shape_information = _with_sizes(originals[0])
    index_mapping.update_index_mapping = _with_sizes(originals[1])
    constants.MAX_RECURSION_DEPTH = max(walk_limit, SHAPE_WALK_LIMIT)
    try:
        yield
    finally:
        shape_infer.init_shape_information, index_mapping.update_index_mapping = originals
        constants.MAX_RECURSION_DEPTH = walk_limit


class EndlessGroup(Exception):
    """Torch-Pruning's search for one pruning group passed `GROUP_LIMIT` dependencies;
    `group` is the group found so far."""

    def __init__(self, group: Any) -> None:
        super().__init__(f"a pruning group grew past {GROUP_LIMIT} dependencies")
        self.group = group


@contextmanager
def groups_bounded() -> Iterator[None]:
    """Within the block, a pruning group that grows past `GROUP_LIMIT` dependencies raises
    `EndlessGroup` instead of growing forever."""
    original = tp_group.Group.add_dep
    if getattr(original, "bounded", False):  # nested use
        yield
        return

    def add_dep(group: Any, dep: Any, idxs: Any) -> None:
        original(group, dep, idxs)
        if len(group._group) > GROUP_LIMIT:
            raise EndlessGroup(group)

    add_dep.bounded = True  # type: ignore[attr-defined]
    tp_group.Group.add_dep = add_dep
    try:
        yield
    finally:
        tp_group.Group.add_dep = original


@contextmanager
def mha_heads_pruned() -> Iterator[None]:
    """Within the block, dependency graphs built by Torch-Pruning prune `nn.MultiheadAttention`
    with `HeadAwareMHAPruner` (see `attention.py`)."""
    from edgeprune.pruning.attention import HeadAwareMHAPruner

    original = function.PrunerBox[ops.OPTYPE.MHA]
    function.PrunerBox[ops.OPTYPE.MHA] = HeadAwareMHAPruner()
    try:
        yield
    finally:
        function.PrunerBox[ops.OPTYPE.MHA] = original


@contextmanager
def unwrapped_parameters_summarised() -> Iterator[None]:
    """Within the block, Torch-Pruning's "Unwrapped parameters detected" warnings are
    collected; on exit one line names how many parameters they covered (Torch-Pruning prunes
    their last non-singleton dimension with the channels). Other warnings are re-issued."""
    names: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    shown: dict = {}
    for w in caught:
        match = _UNWRAPPED.search(str(w.message))
        if match is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=shown)
            continue
        try:
            names.update(ast.literal_eval(match[1]))
        except (ValueError, SyntaxError):
            names.add(match[1])
    if names:
        first = ", ".join(sorted(names)[:2])
        n = len(names)
        info(f"prune: {n} parameter{'s' if n > 1 else ''} outside conv/linear layers (e.g. "
             f"{first}) cut with the channels along the last non-singleton dimension "
             "(Torch-Pruning)")


def torch_pruning_compat(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run `fn` inside `sizes_as_torch_pruning_expects()` (every group query of
    Torch-Pruning rebuilds its index mappings, so surgery needs the shim as much as tracing),
    `mha_heads_pruned()` and `groups_bounded()`; the outermost call also summarises
    Torch-Pruning's warnings in one line."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if _inside():
            return fn(*args, **kwargs)
        with unwrapped_parameters_summarised(), sizes_as_torch_pruning_expects(), \
                mha_heads_pruned(), groups_bounded():
            return fn(*args, **kwargs)

    return run
