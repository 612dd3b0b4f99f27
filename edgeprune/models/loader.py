"""Loading a model by reference: zoo names, `torchvision:NAME`, `timm:NAME`,
`package.module:factory` (each optionally with `?k=v,...` keyword arguments, see
`reference.py`), edgeprune checkpoints and pickled modules all go through `load_model`.

Trust: files are data. A file is read with `torch.load(weights_only=True)` and a checkpoint
may build only architectures edgeprune builds itself (zoo names, `torchvision:NAME`,
`timm:NAME`, then its saved structure). What would run code from a file (unpickling a
pickled module, a checkpoint whose architecture is an import string or another file) needs
`trust_code=True`, the CLI's `--trust-code`. A `package.module:factory` the caller names
itself is the caller's choice, and even then only a model class or a function of that
package is called (`reference.check_factory`).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models import zoo  # noqa: F401  (fills the registry)
from edgeprune.models.checkpoint import (
    ArchRef,
    apply_structure,
    is_checkpoint,
    is_state_dict,
    load_weights_into,
)
from edgeprune.models.reference import (
    call_factory,
    check_factory,
    check_value,
    refuse_downloads,
    split_reference,
)
from edgeprune.models.registry import create_model, list_models
from edgeprune.models.timm_models import PREFIX as TIMM_PREFIX
from edgeprune.models.timm_models import build_timm, timm_spec
from edgeprune.spec import InputSpec

DEMO_CHECKPOINT = "demo_fashion_mnist.pt"
EXPORTED_SUFFIXES = (".onnx", ".ort", ".tflite")
PICKLED = "it holds pickled Python objects"
LIBRARY_PREFIXES = ("torchvision:", TIMM_PREFIX)
MAX_INFLATION = 4
"""A zip weights file may hold at most this many times its own size (plus 1 MiB) once
inflated: torch.save stores tensors uncompressed, so more means a crafted archive."""


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


TRUST_HINT = "pass --trust-code (Python: trust_code=True) only if you trust where it came from"


def is_import_string(ref: str) -> bool:
    """Whether `ref` names Python code to import ('package.module:factory')."""
    return ":" in ref and not ref.startswith(LIBRARY_PREFIXES)


def is_builtin_arch(ref: str) -> bool:
    """Whether edgeprune builds `ref` itself, without importing or unpickling anything the
    reference names: a zoo model, `torchvision:NAME` or `timm:NAME`."""
    return ref.startswith(LIBRARY_PREFIXES) or split_reference(ref)[0] in list_models()


def check_trusted(ref: str, source: str, trust_code: bool) -> None:
    """EdgepruneError unless building architecture `ref` runs no code from outside edgeprune,
    or `trust_code` allows it. `source` says where the reference came from."""
    if trust_code or is_builtin_arch(ref):
        return
    if is_import_string(ref):
        raise EdgepruneError(f"{source} names architecture {ref!r}, which imports and runs "
                             f"code; {TRUST_HINT}")
    if ref.endswith((".pt", ".pth")) or "/" in ref or os.sep in ref:
        raise EdgepruneError(f"{source} names architecture {ref!r}, a file to unpickle, which "
                             f"can run code; {TRUST_HINT}")


def _import_factory(ref: str):
    module_name, _, attr = ref.partition(":")
    try:
        module = _import_here_too(module_name)
    except ImportError as e:
        raise EdgepruneError(f"cannot import {module_name!r} from --model {ref!r} ({e}); check "
                             "the module path and that its package is installed") from None
    fn = getattr(module, attr, None) if attr.isidentifier() else None
    if fn is None or not callable(fn):
        raise EdgepruneError(f"{module_name!r} has no callable {attr!r} (from --model {ref!r})")
    return check_factory(fn, module_name, ref)


def _build_torchvision(name: str, kw: dict[str, Any]) -> nn.Module:
    """torchvision model `name` with random weights; `in_channels` swaps its first conv."""
    from torchvision import models as tvm

    kw = dict(kw)
    in_channels = kw.pop("in_channels", 3)
    kw.setdefault("num_classes", 1000)
    refuse_downloads(kw, f"torchvision:{name}")
    try:
        builder = tvm.get_model_builder(name)
    except ValueError:
        raise EdgepruneError(f"torchvision has no model {name!r}; see "
                             "torchvision.models.list_models()") from None
    model = call_factory(lambda **k: builder(weights=None, **k), kw, f"torchvision:{name}")
    _first_conv_to(model, in_channels)
    return model


def build_arch(arch: ArchRef, trust_code: bool = False, source: str = "the model"
               ) -> nn.Module:
    """Build the unpruned architecture an ArchRef names (random weights). An import string or
    a pickled file runs code, so it needs `trust_code`; `source` names where `arch` came
    from in that error."""
    check_trusted(arch.ref, source, trust_code)
    ref, query = split_reference(arch.ref) if not _is_model_file(arch.ref) else (arch.ref, {})
    kw = {**query, **arch.kwargs}
    if not isinstance(arch.kwargs, dict) or not all(isinstance(k, str) for k in kw):
        raise EdgepruneError(f"{source}: the keyword arguments of {ref!r} are not a mapping "
                             "of names to values")
    for key, value in kw.items():
        check_value(key, value, ref)
    if ref.startswith("torchvision:"):
        return _build_torchvision(ref.split(":", 1)[1], kw)
    if ref.startswith(TIMM_PREFIX):
        return build_timm(ref[len(TIMM_PREFIX):], kw)
    if ":" in ref:
        return call_factory(_import_factory(ref), kw, ref)
    if ref.endswith((".pt", ".pth")):
        return _load_pickled_module(Path(ref))
    unknown = sorted(set(kw) - {"in_channels", "num_classes"})
    if unknown and ref in list_models():
        raise EdgepruneError(f"zoo model {ref!r} has no keyword argument {unknown[0]!r} (it "
                             "takes: in_channels, num_classes)")
    return create_model(ref, **kw)


def _load_pickled_module(path: Path) -> nn.Module:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        raise EdgepruneError(f"cannot read model file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, nn.Module):
        raise EdgepruneError(f"{path} holds a {type(obj).__name__}, not a model; for a "
                             "state_dict pass --model ARCH --weights FILE")
    return obj


def _read_file(path: Path) -> tuple[Any, str | None]:
    """What `path` holds when read as plain data (tensors, dicts, numbers, strings), or
    (None, why) when it is not: a pickled module, another format, a broken file."""
    if not path.is_file():
        raise EdgepruneError(f"model file {path} does not exist")
    _check_inflation(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as e:  # noqa: BLE001 - anything else is not plain data
        return None, _why_not_data(e)


def _check_inflation(path: Path) -> None:
    """EdgepruneError, before anything is inflated, when zip file `path` declares members
    that inflate to far more than the file's size (see MAX_INFLATION)."""
    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise EdgepruneError(f"cannot read {path}: a damaged zip archive ({e})") from None
    if inflated > MAX_INFLATION * size + 2**20:
        raise EdgepruneError(f"{path} inflates from {size:,} to {inflated:,} bytes, far more "
                             "than a torch.save file does; it is not a checkpoint edgeprune "
                             "reads")


def _why_not_data(error: Exception) -> str:
    """A short reason from torch.load(weights_only=True)'s long message."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"{PICKLED} such as {found.group(1)}"
    return "it is empty, damaged or not a torch.save file"


def _arch_of(ckpt: dict, source: str) -> ArchRef:
    try:
        return ArchRef(str(ckpt["arch"]["ref"]), dict(ckpt["arch"].get("kwargs", {})))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EdgepruneError(f"{source} is an edgeprune checkpoint without a usable "
                             "architecture entry; save it again with edgeprune") from None


def _from_checkpoint(ckpt: dict, source: str, trust_code: bool) -> LoadedModel:
    arch = _arch_of(ckpt, source)
    model = build_arch(arch, trust_code, source)
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


def _is_model_file(ref: str) -> bool:
    """Whether --model `ref` is a file: one that exists, or a .pt/.pth name that is not a
    reference with keyword arguments ('timm:x?checkpoint_path=w.pt' is a reference)."""
    return Path(ref).is_file() or (ref.endswith((".pt", ".pth")) and "?" not in ref)


def read_model_file(path: Path, trust_code: bool = False) -> dict | None:
    """The edgeprune checkpoint in model file `path`, checked to build only what `trust_code`
    allows; None for a pickled module, which only `trust_code` lets through. Reads the file as
    plain data and builds nothing, so commands check a --model file before any work."""
    if path.suffix.lower() in EXPORTED_SUFFIXES and path.is_file():
        raise EdgepruneError(f"{path} is an exported {path.suffix[1:]} file; the model given "
                             "here is a PyTorch one (see --help), and 'edgeprune bench' "
                             "measures exported files")
    obj, why = _read_file(path)
    if is_checkpoint(obj):
        check_trusted(_arch_of(obj, str(path)).ref, str(path), trust_code)
        return obj
    if obj is not None:
        what = ("a state_dict but no architecture" if obj and is_state_dict(obj) else
                f"a {type(obj).__name__}, not a checkpoint or state_dict; if it is weights")
        raise EdgepruneError(f"{path} holds {what}: give the architecture as the model (a zoo "
                             "name, torchvision:NAME, timm:NAME or pkg.mod:factory) with "
                             f"--weights {path}")
    if not why.startswith(PICKLED):
        raise EdgepruneError(f"cannot read model file {path}: {why}; give an edgeprune "
                             "checkpoint or a file written by torch.save")
    if not trust_code:
        raise EdgepruneError(f"{path} is not an edgeprune checkpoint or state_dict that loads "
                             f"as plain data ({why}); loading it would unpickle it, which can "
                             f"run code: {TRUST_HINT}")
    return None


def check_model_ref(ref: str | None, trust_code: bool = False) -> None:
    """EdgepruneError now if loading --model `ref` would need `trust_code` (see
    `read_model_file`); references that are not files are the caller's own choice."""
    if ref not in (None, "demo") and _is_model_file(ref):
        read_model_file(Path(ref), trust_code)


def _build_reference(ref: str, in_channels: int, num_classes: int) -> LoadedModel:
    """The model a reference the caller typed names (keyword arguments after '?' override
    the data's `in_channels`/`num_classes`); a timm model comes with its pretrained
    config's input spec (see `timm_spec`)."""
    base, query = split_reference(ref)
    sized = {} if is_import_string(base) else \
        {"in_channels": in_channels, "num_classes": num_classes}
    arch = ArchRef(base, {**sized, **query})
    model = build_arch(arch, trust_code=True)  # the caller's own reference
    if not base.startswith(TIMM_PREFIX):
        return LoadedModel(model, arch, None, {})
    kw = arch.kwargs
    spec = timm_spec(model, kw.get("in_chans", kw.get("in_channels", 3)),
                     getattr(model, "num_classes", num_classes), kw.get("img_size"))
    return LoadedModel(model, arch, spec, {"input_spec_from": "timm pretrained_cfg"}
                       if spec is not None else {})


def load_model(ref: str | None = None, weights: Path | str | None = None,
               in_channels: int = 3, num_classes: int = 10, *, trust_code: bool = False
               ) -> LoadedModel:
    """Load a model from any reference the CLI's --model accepts.

    - None or 'demo': the shipped demo checkpoint (Fashion-MNIST);
    - a zoo name ('resnet20'), 'torchvision:NAME', 'timm:NAME' or 'package.module:factory',
      each optionally followed by '?k=v,...' keyword arguments for its builder, built with
      `in_channels`/`num_classes` (zoo, torchvision, timm) and then `weights` (a state_dict,
      or a checkpoint's structure and state_dict) loaded; a timm model's spec is its
      pretrained config's input size, mean and std;
    - a path to an edgeprune checkpoint or, with `trust_code`, to a pickled nn.Module.

    Without `trust_code`, nothing a file names or holds is imported or unpickled (see the
    module docstring); EdgepruneError says what would have run and names the flag.
    """
    if ref in (None, "demo"):
        ckpt = torch.load(demo_checkpoint_path(), map_location="cpu", weights_only=True)
        return _from_checkpoint(ckpt, "the demo checkpoint", trust_code)
    path = Path(ref)
    if _is_model_file(ref):
        ckpt = read_model_file(path, trust_code)
        if ckpt is not None:
            return _from_checkpoint(ckpt, str(path), trust_code)
        loaded = LoadedModel(_load_pickled_module(path), ArchRef(str(path.resolve())), None, {})
    else:
        loaded = _build_reference(ref, in_channels, num_classes)
    if weights is not None:
        wpath = Path(weights)
        obj, why = _read_file(wpath)
        if obj is None:
            raise EdgepruneError(f"cannot read weights file {wpath} as plain data ({why}); it "
                                 "must be a state_dict saved with torch.save")
        if is_checkpoint(obj):
            apply_structure(loaded.model, obj.get("structure", {}), obj["state_dict"])
        load_weights_into(loaded.model, _state_dict_of(obj, str(wpath)), str(wpath))
    loaded.model.eval()
    return loaded
