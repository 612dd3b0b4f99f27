"""What a --model reference may say and what it may call.

A reference is `NAME[?k=v,...]`: a zoo name, `torchvision:NAME`, `timm:NAME` or
`package.module:factory`, with keyword arguments for the builder after `?`. Values are
literals only (int, float, bool, None or a string), read with `ast.literal_eval`, never
`eval`; a bare word is a string, anything else (an expression) is refused. Numbers are
bounded before anything is built, so `num_classes=3e9` is refused instead of allocating
gigabytes.

A factory a user names is checked *before* it is called: it must be an `nn.Module` subclass
or a Python function defined in the package the reference names (or in torchvision or timm),
never a builtin, a standard-library function or any other callable (`os:system`,
`builtins:eval`, `subprocess:Popen` and `pdb:set_trace` are refused, not called).
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from edgeprune.errors import EdgepruneError

KwargValue = int | float | bool | str | None
MAX_NUMBER = 1_000_000
"""Largest magnitude a numeric keyword argument may have (class counts, widths, sizes)."""
COUNT_KWARGS = ("num_classes", "in_chans", "in_channels")
"""Keyword arguments that count something and so must be whole and at least 1."""
DOWNLOAD_KWARGS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                   "checkpoint_path", "cache_dir", "progress")
"""Builder arguments that fetch or read weights; edgeprune loads weights only from --weights."""
WORD = re.compile(r"[A-Za-z_][\w.\-]*")
"""A value that is not a Python literal but a bare word is a string (`act_layer=gelu`)."""
LIBRARY_PACKAGES = ("torchvision", "timm")
REFUSED_PACKAGES = frozenset(sys.stdlib_module_names) | {"torch", "builtins"}


def split_reference(ref: str) -> tuple[str, dict[str, KwargValue]]:
    """'mymod:factory?num_classes=10,in_chans=1' -> ('mymod:factory', {'num_classes': 10,
    'in_chans': 1}); a reference without '?' has no keyword arguments."""
    base, sep, query = ref.partition("?")
    if not sep:
        return ref, {}
    if not base:
        raise EdgepruneError(f"--model {ref!r} names no model before '?'")
    kwargs: dict[str, KwargValue] = {}
    for item in query.split(","):
        key, eq, text = (part.strip() for part in item.partition("="))
        if not eq or not key.isidentifier():
            raise EdgepruneError(f"--model {ref!r}: {item.strip()!r} is not key=value; write "
                                 "keyword arguments like NAME?num_classes=10,in_chans=1")
        if key in kwargs:
            raise EdgepruneError(f"--model {ref!r} gives {key} twice")
        kwargs[key] = parse_value(key, text, base)
    return base, kwargs


def parse_value(key: str, text: str, factory: str) -> KwargValue:
    """One keyword argument's value as a literal (see the module doc), range-checked."""
    lowered = text.lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        value = ast.literal_eval(text) if text else ""
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if not WORD.fullmatch(text):
            raise EdgepruneError(f"{factory}: {key}={text} is not a literal; keyword arguments "
                                 "take a number, true/false, none or a word") from None
        value = text  # a bare word: a string
    if not isinstance(value, (int, float, str, type(None))):
        raise EdgepruneError(f"{factory}: {key}={text} is a {type(value).__name__}; keyword "
                             "arguments take a number, true/false, none or a word")
    check_value(key, value, factory)
    return value


def check_value(key: str, value: Any, factory: str) -> None:
    """EdgepruneError when a numeric keyword argument is out of range (see MAX_NUMBER,
    COUNT_KWARGS); a one-line refusal before anything is allocated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value != value or abs(value) > MAX_NUMBER:
        raise EdgepruneError(f"{factory}: {key}={value:g} is out of range (at most "
                             f"{MAX_NUMBER:,} in magnitude)")
    if key in COUNT_KWARGS and (value != int(value) or value < 1):
        raise EdgepruneError(f"{factory}: {key}={value:g} must be a whole number of at least 1")


def refuse_downloads(kwargs: dict[str, Any], factory: str) -> None:
    """EdgepruneError for a builder argument that would fetch or read weights (edgeprune
    never downloads; weights come from a local --weights file)."""
    for key in DOWNLOAD_KWARGS:
        if key in kwargs:
            raise EdgepruneError(f"{factory}: {key}= is not accepted: edgeprune builds models "
                                 "without downloading; load local weights with --weights FILE")


def check_factory(fn: Any, module_name: str, ref: str) -> Callable[..., Any]:
    """`fn` when it may build a model: an nn.Module subclass, or a Python function defined in
    `module_name`'s package, torchvision or timm. Anything else (a builtin, a standard-library
    or torch function, another class or callable object) is refused before it is called."""
    if inspect.isclass(fn):
        if issubclass(fn, nn.Module):
            return fn
        raise EdgepruneError(f"--model {ref!r} names class {fn.__qualname__}, which is not a "
                             "torch.nn.Module; name a factory that returns a model")
    if not inspect.isfunction(fn):
        raise EdgepruneError(f"--model {ref!r} names a {type(fn).__name__}, not a model "
                             "factory; name a Python function or nn.Module class that returns "
                             "a model")
    home = (getattr(fn, "__module__", None) or "").split(".")[0]
    allowed = {module_name.split(".")[0], *LIBRARY_PACKAGES} - REFUSED_PACKAGES
    if home not in allowed:
        raise EdgepruneError(f"--model {ref!r} names {home or 'an unknown module'}'s function "
                             f"{fn.__qualname__}, which is not a model factory of "
                             f"{module_name!r}; name a function defined in your own module")
    return fn


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], factory: str) -> None:
    """EdgepruneError naming the first keyword argument `fn` does not take (when its
    signature says; a factory with **kwargs is checked when called, see `call_factory`)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in takes:
            hint = f" (it takes: {', '.join(takes)})" if takes else " (it takes none)"
            raise EdgepruneError(f"{factory} has no keyword argument {key!r}{hint}")


def call_factory(fn: Callable[..., Any], kwargs: dict[str, Any], factory: str) -> nn.Module:
    """`fn(**kwargs)`, checked: unknown keyword arguments and a result that is not an
    nn.Module are one-line errors naming `factory`."""
    check_kwargs(fn, kwargs, factory)
    try:
        model = fn(**kwargs)
    except TypeError as e:
        text = str(e)
        if "unexpected keyword argument" in text or "got multiple values" in text:
            key = text.split("'")[1] if "'" in text else "?"
            raise EdgepruneError(f"{factory} has no keyword argument {key!r} "
                                 f"({text.splitlines()[0]})") from None
        if "required" in text and "argument" in text:
            raise EdgepruneError(f"{factory} needs arguments: {text.splitlines()[0]}; give "
                                 "them as NAME?key=value,...") from None
        raise
    if not isinstance(model, nn.Module):
        raise EdgepruneError(f"{factory} returned a {type(model).__name__}, not a "
                             "torch.nn.Module; a --model factory must return the model")
    return model
