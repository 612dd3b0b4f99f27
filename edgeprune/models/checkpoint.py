"""edgeprune's own checkpoint format: architecture reference + per-module structure as data +
state_dict + InputSpec. Loads with `torch.load(weights_only=True)`: no pickled modules.

A pruned model is rebuilt by creating the original architecture, resizing each parameter and
buffer to its saved shape, restoring the structural attributes (in/out channels, groups, ...)
and loading the state_dict.
"""

from __future__ import annotations

import io
import json
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
STRUCTURAL_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features",
                    "num_features", "num_groups", "num_channels", "num_parameters")


@dataclass
class ArchRef:
    """How to build the unpruned architecture: a model reference plus its keyword arguments."""

    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def module_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Structural integer attributes of every module, e.g. {'0': {'out_channels': 24, ...}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in STRUCTURAL_ATTRS if isinstance(getattr(m, a, None), int)}
        if attrs:
            out[name] = attrs
    return out


def parameter_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Shape of every parameter and buffer, the human-readable view of an architecture."""
    return {k: list(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]],
                    state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Resize `model`'s parameters/buffers to the shapes in `state_dict` and restore the
    structural attributes, so `load_state_dict` then succeeds on a pruned checkpoint."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, p in list(m.named_parameters(recurse=False)):
            saved = state_dict.get(prefix + pname)
            if saved is not None and saved.shape != p.shape:
                setattr(m, pname, nn.Parameter(torch.empty_like(saved), p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            saved = state_dict.get(prefix + bname)
            if b is not None and saved is not None and saved.shape != b.shape:
                m.register_buffer(bname, torch.empty_like(saved))
        for attr, value in structure.get(name, {}).items():
            setattr(m, attr, value)
    return model


def load_weights_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a one-line error that names what does not match."""
    own = model.state_dict()
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
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise EdgepruneError(f"weights in {source}: {key} holds {bad} NaN or infinite "
                                 f"value{'s' if bad > 1 else ''} of {value.numel()}; the model "
                                 "diverged or the file is damaged: use an earlier checkpoint")
    model.load_state_dict(state_dict)


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
