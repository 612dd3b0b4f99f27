"""Loading a model by reference: zoo names, `torchvision:NAME`, `package.module:factory`,
edgeprune checkpoints and pickled modules all go through `load_model`."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models import zoo  # noqa: F401  (fills the registry)
from edgeprune.models.checkpoint import (
    ArchRef,
    apply_structure,
    is_checkpoint,
    load_weights_into,
)
from edgeprune.models.registry import create_model
from edgeprune.spec import InputSpec

DEMO_CHECKPOINT = "demo_fashion_mnist.pt"


@dataclass
class LoadedModel:
    """A model ready to use, how to rebuild it, and the input it expects (when known)."""

    model: nn.Module
    arch: ArchRef
    spec: InputSpec | None
    meta: dict


def demo_checkpoint_path() -> Path:
    return Path(str(resources.files("edgeprune") / "assets" / DEMO_CHECKPOINT))


def _first_conv_to(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one taking `in_channels` inputs (torchvision models
    are built for RGB)."""
    for parent in model.modules():
        for cname, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, cname, nn.Conv2d(
                        in_channels, child.out_channels, child.kernel_size, child.stride,
                        child.padding, child.dilation, 1, child.bias is not None))
                return


def _import_here_too(module_name: str):
    """Import `module_name` from the installed packages or, as `python -m` would, from the
    current directory (a console script does not search it by itself)."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(here)


def _import_factory(ref: str):
    module_name, _, attr = ref.partition(":")
    try:
        module = _import_here_too(module_name)
    except ImportError as e:
        raise EdgepruneError(f"cannot import {module_name!r} from --model {ref!r} ({e}); check "
                             "the module path and that its package is installed") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise EdgepruneError(f"{module_name!r} has no callable {attr!r} (from --model {ref!r})")
    return fn


def build_arch(arch: ArchRef) -> nn.Module:
    """Build the unpruned architecture an ArchRef names (random weights)."""
    ref, kw = arch.ref, arch.kwargs
    if ref.startswith("torchvision:"):
        from torchvision import models as tvm

        name = ref.split(":", 1)[1]
        try:
            model = tvm.get_model(name, weights=None, num_classes=kw.get("num_classes", 1000))
        except ValueError:
            raise EdgepruneError(f"torchvision has no model {name!r}; see "
                                 "torchvision.models.list_models()") from None
        _first_conv_to(model, kw.get("in_channels", 3))
        return model
    if ":" in ref:
        model = _import_factory(ref)(**kw)
    elif ref.endswith((".pt", ".pth")):
        model = _load_pickled_module(Path(ref))
    else:
        model = create_model(ref, **kw)
    if not isinstance(model, nn.Module):
        raise EdgepruneError(f"--model {ref!r} did not produce a torch.nn.Module")
    return model


def _load_pickled_module(path: Path) -> nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        raise EdgepruneError(f"cannot read model file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, nn.Module):
        raise EdgepruneError(f"{path} holds a {type(obj).__name__}, not a model; for a "
                             "state_dict pass --model ARCH --weights FILE")
    return obj


def _read_file(path: Path):
    if not path.is_file():
        raise EdgepruneError(f"model file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain tensor file: maybe a pickled module
        return None


def _from_checkpoint(ckpt: dict, source: str) -> LoadedModel:
    arch = ArchRef(ckpt["arch"]["ref"], dict(ckpt["arch"].get("kwargs", {})))
    model = build_arch(arch)
    apply_structure(model, ckpt.get("structure", {}), ckpt["state_dict"])
    load_weights_into(model, ckpt["state_dict"], source)
    spec = InputSpec.from_dict(ckpt["input_spec"]) if ckpt.get("input_spec") else None
    return LoadedModel(model.eval(), arch, spec, dict(ckpt.get("meta", {})))


def _state_dict_of(obj, source: str) -> dict:
    if is_checkpoint(obj):
        return obj["state_dict"]
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise EdgepruneError(f"{source} is not a state_dict; save one with "
                         "torch.save(model.state_dict(), path)")


def load_model(ref: str | None = None, weights: Path | str | None = None,
               in_channels: int = 3, num_classes: int = 10) -> LoadedModel:
    """Load a model from any reference the CLI's --model accepts.

    - None or 'demo': the shipped demo checkpoint (Fashion-MNIST);
    - a zoo name ('resnet20'), 'torchvision:NAME' or 'package.module:factory', built with
      `in_channels`/`num_classes` (zoo, torchvision) and then `weights` (a state_dict) loaded;
    - a path to an edgeprune checkpoint or to a pickled nn.Module.
    """
    if ref in (None, "demo"):
        ckpt = torch.load(demo_checkpoint_path(), map_location="cpu", weights_only=True)
        return _from_checkpoint(ckpt, "the demo checkpoint")
    path = Path(ref)
    if ref.endswith((".pt", ".pth")) or path.is_file():
        obj = _read_file(path)
        if is_checkpoint(obj):
            return _from_checkpoint(obj, str(path))
        if obj is not None:
            raise EdgepruneError(f"{path} holds a state_dict but no architecture; pass "
                                 f"--model ARCH --weights {path}")
        loaded = LoadedModel(_load_pickled_module(path), ArchRef(str(path.resolve())), None, {})
    else:
        kwargs = {} if (":" in ref and not ref.startswith("torchvision:")) else \
            {"in_channels": in_channels, "num_classes": num_classes}
        arch = ArchRef(ref, kwargs)
        loaded = LoadedModel(build_arch(arch), arch, None, {})
    if weights is not None:
        wpath = Path(weights)
        obj = _read_file(wpath)
        if obj is None:
            raise EdgepruneError(f"cannot read weights file {wpath}; it must be a state_dict "
                                 "saved with torch.save")
        if is_checkpoint(obj):
            apply_structure(loaded.model, obj.get("structure", {}), obj["state_dict"])
        load_weights_into(loaded.model, _state_dict_of(obj, str(wpath)), str(wpath))
    loaded.model.eval()
    return loaded
