"""Copying a model: the tensors some layers cache during an eval-mode forward pass are
dropped first.

timm's LeViT, EfficientFormer(V2) and EfficientViT (MSRA) keep `attention_bias_cache`, the
attention biases gathered for the last device, filled by an eval-mode forward pass and emptied
only by `train()`. Filled under autograd, the cache holds a non-leaf tensor, which
`copy.deepcopy` refuses ("Only Tensors created explicitly by the user ... support the deepcopy
protocol"); filled before a cut, it holds the uncut biases, which the next eval forward would
use with the cut heads. Every copy and every cut therefore starts from an empty cache."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def forward_caches(module: nn.Module) -> list[str]:
    """Names of `module`'s own attributes that are forward caches: dicts of tensors whose name
    ends in `_cache` (timm's convention), parameters and buffers aside."""
    return [name for name, value in vars(module).items()
            if name.endswith("_cache") and isinstance(value, dict)
            and all(isinstance(v, torch.Tensor) for v in value.values())]


def forget_forward_caches(model: M) -> M:
    """`model`, every layer's forward caches emptied in place (they refill on the next
    eval-mode forward pass)."""
    for module in model.modules():
        for name in forward_caches(module):
            setattr(module, name, {})
    return model


def clone(model: M) -> M:
    """A deep copy of `model`, its forward caches emptied first."""
    return copy.deepcopy(forget_forward_caches(model))
