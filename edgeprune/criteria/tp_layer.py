"""Torch-Pruning importances applied to one layer at a time.

Torch-Pruning's importances score a dependency *group* (a layer plus everything coupled to it)
and reduce over its items. edgeprune's criteria score each layer alone and leave the coupling
to the pruner (`PrecomputedImportance` averages coupled layers), so here an importance is
called on a one-item group: the layer's own output-channel removal, with every channel. That
is exactly the per-item term Torch-Pruning computes for that layer before its group reduction.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.dependency import Dependency, Group, Node
from torch_pruning.pruner import function

from edgeprune.criteria.base import normalize_per_layer, prunable_layers


def layer_group(module: nn.Module, name: str) -> Group:
    """A group holding only `module`'s output-channel removal, all channels."""
    node = Node(module, None, name)
    fn = function.prune_linear_out_channels if isinstance(module, nn.Linear) \
        else function.prune_conv_out_channels
    group = Group()
    channels = list(range(module.weight.shape[0]))
    group.add_dep(Dependency(fn, fn, source=node, target=node), channels)
    group[0].root_idxs = channels
    return group


def per_layer(importance: tp.importance.Importance, model: nn.Module) -> dict[str, Tensor]:
    """`importance` of every prunable layer of `model` on its own, normalized per layer."""
    return {name: normalize_per_layer(importance(layer_group(m, name)).detach().cpu())
            for name, m in prunable_layers(model).items()}
