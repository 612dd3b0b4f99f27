"""Trace the model once with torch.export before any converter runs, so that a model which
cannot be exported fails with the layer at fault named: data-dependent control flow is caught
while tracing (the module running at that moment is the culprit), and an op a converter
rejects is found in the traced graph, which records the module each op came from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from edgeprune.export.base import ExportError, first_line


@contextmanager
def module_stack(model: torch.nn.Module) -> Iterator[list[str]]:
    """Yield a list that holds, while `model` runs, the names of the modules entered and not
    yet left (innermost last); hooks are removed on exit."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module, args):
        stack.append(names.get(module, "?"))

    def leave(module, args, output):
        if stack:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(leave, always_call=True) for m in names]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def describe_layer(model: torch.nn.Module, name: str) -> str:
    """"layer 'features.3' (Block)", or 'the top-level forward' for the model itself."""
    if not name:
        return f"the top-level forward of {type(model).__name__}"
    module = dict(model.named_modules()).get(name)
    kind = f" ({type(module).__name__})" if module is not None else ""
    return f"layer '{name}'{kind}"


def trace(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export the model at `example`; failure is a one-line ExportError naming the
    layer that was running when tracing stopped."""
    with module_stack(model) as stack:
        try:
            return torch.export.export(model, (example,))
        except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
            where = describe_layer(model, stack[-1]) if stack else "the model"
            raise ExportError(f"cannot trace the model for export in {where}: "
                              f"{first_line(exc)}") from exc


def op_names(target: object) -> tuple[str, ...]:
    """The spellings under which converters name an op: 'ns.op.overload', 'ns::op' and the
    repr fragment "op='ns.op'"."""
    full = str(target)
    packet = full.rsplit(".", 1)[0] if full.count(".") >= 2 else full
    return (full, packet.replace(".", "::", 1), f"op='{packet}'")


def locate_op(program: torch.export.ExportedProgram, message: str) -> str | None:
    """The layer whose op `message` (a converter's error) names, e.g. "op t.wiggle.default in
    layer 'odd' (Block)"; None when the message names no op of the traced graph."""
    for node in program.graph.nodes:
        if node.op != "call_function" or not any(n in message for n in op_names(node.target)):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return f"op {node.target}"
        path, kind = list(stack.values())[-1]
        return f"op {node.target} in layer '{path}' ({str(kind).rsplit('.', 1)[-1]})"
    return None
