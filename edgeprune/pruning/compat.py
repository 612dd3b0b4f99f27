"""A compatibility shim for Torch-Pruning 1.6.1 on current PyTorch.

Torch-Pruning reads the input shape of view/reshape and chunk/split nodes from the autograd
node's `_saved_self_sizes`; since PyTorch 2.1 that attribute is called `_saved_self_sym_sizes`.
Without it Torch-Pruning falls back to an older shape inference that divides by zero on
ShuffleNet's channel shuffle and mis-sizes `torch.chunk`. `sizes_as_torch_pruning_expects()`
gives those nodes the old attribute for the duration of a graph build and takes it away after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch_pruning import ops
from torch_pruning.dependency import index_mapping, shape_infer

_SIZED = (ops.OPTYPE.SPLIT, ops.OPTYPE.RESHAPE)


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


@contextmanager
def sizes_as_torch_pruning_expects() -> Iterator[None]:
    """Within the block, Torch-Pruning's graph builds see `_saved_self_sizes` again."""
    originals = (shape_infer.init_shape_information, index_mapping.update_index_mapping)
    if hasattr(originals[0], "__wrapped__"):  # already inside (nested use)
        yield
        return
    shape_infer.init_shape_information = _with_sizes(originals[0])
    index_mapping.update_index_mapping = _with_sizes(originals[1])
    try:
        yield
    finally:
        shape_infer.init_shape_information, index_mapping.update_index_mapping = originals


def torch_pruning_compat(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run `fn` inside `sizes_as_torch_pruning_expects()` (every group query of
    Torch-Pruning rebuilds its index mappings, so surgery needs the shim as much as tracing)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with sizes_as_torch_pruning_expects():
            return fn(*args, **kwargs)

    return run
