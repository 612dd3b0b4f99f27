"""Registry of built-in architectures (timm-style `register_model` / `create_model`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from edgeprune.errors import EdgepruneError

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory `f(in_channels, num_classes) -> nn.Module` to the zoo."""

    def wrap(fn: ModelFactory) -> ModelFactory:
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the built-in architectures."""
    return sorted(_MODELS)


def create_model(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Build a zoo model by name (random weights)."""
    if name not in _MODELS:
        hint = difflib.get_close_matches(name, _MODELS, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else f"; choose from {list_models()}"
        raise EdgepruneError(f"unknown model {name!r}{extra}")
    return _MODELS[name](in_channels=in_channels, num_classes=num_classes)
