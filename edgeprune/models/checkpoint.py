"""edgeprune's own checkpoint format: architecture reference + per-module structure as data +
state_dict + InputSpec. Loads with `torch.load(weights_only=True)`: no pickled modules.

A pruned model is rebuilt by creating the original architecture, resizing each parameter and
buffer to its saved shape, restoring the structural attributes (every module's own numeric
attributes: in/out channels, groups, LayerNorm's normalized_shape, attention head counts)
and loading the state_dict.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write_bytes
from edgeprune.spec import InputSpec

FORMAT = "edgeprune.checkpoint/1"
READABLE_FORMATS = (FORMAT, "edgeprune.models.checkpoint/1")
"""Tags `is_checkpoint` accepts: the format's tag, and the one builds of 0.1.0 wrote by mistake
for a while (same layout); checkpoints are written with `FORMAT` only."""


@dataclass
class ArchRef:
    """How to build the unpruned architecture: a model reference plus its keyword arguments."""

    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _plain_value(value: Any) -> Any | None:
    """`value` as structure data (an int, a finite float, or a tuple of ints such as
    LayerNorm's `normalized_shape`), else None; bools and everything else are not structure."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, (tuple, list)) and value \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return None


def module_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every module's own public numeric attributes, e.g. {'0': {'out_channels': 24, ...},
    'norm': {'normalized_shape': [72], 'eps': 1e-06}}: whatever pruning may have changed
    (widths, LayerNorm shapes, attention head counts and sizes), as plain data. Read from the
    instance's `__dict__` only, so computed properties (a norm-act wrapper's read-only
    `in_channels`) are neither recorded nor, on load, written."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {a: v for a, raw in vars(m).items()
                 if not a.startswith("_") and a != "training"
                 and (v := _plain_value(raw)) is not None}
        if attrs:
            out[name] = attrs
    return out


def _restore_attrs(module: nn.Module, attrs: Any) -> None:
    """Write saved structure values into `module`'s own attributes: only names the freshly
    built module already holds as plain data of the same kind (a tuple stays a tuple), so a
    file can change sizes but never add attributes, replace properties or set objects."""
    if not isinstance(attrs, dict):
        return
    own = vars(module)
    for attr, value in attrs.items():
        if not isinstance(attr, str) or attr.startswith("_") or attr not in own:
            continue
        current, saved = own[attr], _plain_value(value)
        if _plain_value(current) is None or saved is None:
            continue
        if isinstance(current, (tuple, list)) and isinstance(saved, list):
            own[attr] = type(current)(saved) if type(current) in (tuple, list) else tuple(saved)
        elif type(current) is type(saved):
            own[attr] = saved


def parameter_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shape of every parameter and buffer, the human-readable view of an architecture."""
    return {k: list(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]],
                    state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Resize `model`'s parameters/buffers to the shapes in `state_dict` and restore the
    structural attributes, so `load_state_dict` then succeeds on a pruned checkpoint."""
    if not isinstance(state_dict, dict):
        raise EdgepruneError("the checkpoint's state_dict is not a mapping of names to tensors")
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, p in list(m.named_parameters(recurse=False)):
            saved = state_dict.get(prefix + pname)
            if isinstance(saved, torch.Tensor) and saved.shape != p.shape:
                setattr(m, pname, nn.Parameter(torch.empty(saved.shape, dtype=p.dtype),
                                               p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            saved = state_dict.get(prefix + bname)
            if b is not None and isinstance(saved, torch.Tensor) and saved.shape != b.shape:
                m.register_buffer(bname, torch.empty(saved.shape, dtype=b.dtype))
        _restore_attrs(m, structure.get(name) if isinstance(structure, dict) else None)
    return model


def is_state_dict(obj: Any) -> bool:
    """A mapping of names to tensors, as `module.state_dict()` returns (an empty one too)."""
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""What (Distributed)DataParallel and torch.compile put before every key of a state_dict."""


def unwrapped(state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
    """`state_dict` without the wrapper prefix that every one of its keys has and none of the
    model's (`own`) has: weights saved from a DDP or compiled model load into the bare one."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict) and not any(
                    k.startswith(prefix) for k in own):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def load_weights_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a one-line error that names what does not match: names, shapes,
    a parameter that is not floating point (int64 conv weights), NaN or infinite values."""
    if not is_state_dict(state_dict):
        raise EdgepruneError(f"weights in {source} are not a mapping of names to tensors; "
                             "save them with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    state_dict = unwrapped(state_dict, own)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                more = " ..." if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise EdgepruneError(f"weights in {source} do not match the model ({'; '.join(parts)}); "
                             "pass the architecture they were trained with")
    params = dict(model.named_parameters())
    for key, value in state_dict.items():
        if key in params and not value.is_floating_point():
            raise EdgepruneError(f"weights in {source}: parameter {key} holds {value.dtype} "
                                 "values, not floating point; a model's weights must be "
                                 "float (save them from a float model)")
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise EdgepruneError(f"weights in {source}: {key} holds {bad} NaN or infinite "
                                 f"value{'s' if bad > 1 else ''} of {value.numel()}; the model "
                                 "diverged or the file is damaged: use an earlier checkpoint")
    model.load_state_dict(_with_metadata(state_dict, own))


def _with_metadata(state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """`state_dict` with the per-module versions `load_state_dict` reads (MNASNet refuses a
    state_dict without them): its own when it has them, else those of the model it goes into
    (a checkpoint stores tensors only, and the model is rebuilt by the same code)."""
    if getattr(state_dict, "_metadata", None) is not None:
        return state_dict
    out = OrderedDict(state_dict)
    out._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    return out


def save_checkpoint(path: Path, model: nn.Module, arch: ArchRef, spec: InputSpec,
                    meta: dict[str, Any] | None = None) -> None:
    """Save `model` in edgeprune's checkpoint format (atomically)."""
    payload = {
        "format": FORMAT,
        "arch": {"ref": arch.ref, "kwargs": dict(arch.kwargs)},
        "structure": module_structure(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "input_spec": spec.to_dict(),
        "meta": json.loads(json.dumps(meta or {})),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is an edgeprune checkpoint (any readable tag)."""
    return isinstance(obj, dict) and obj.get("format") in READABLE_FORMATS
