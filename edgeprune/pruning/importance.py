"""The bridge from a criterion's per-layer scores to Torch-Pruning's group importance."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning._helpers import GroupItem
from torch_pruning.pruner import function

OUT_CHANNEL_FNS = (
    function.prune_conv_out_channels,
    function.prune_depthwise_conv_out_channels,
    function.prune_linear_out_channels,
)


class PrecomputedImportance(tp.importance.Importance):
    """Importance of a dependency group = mean of the precomputed scores of its coupled layers.

    A group couples every layer whose output channels must be removed together (a conv and the
    convs added to it in a residual sum, a depthwise conv and the conv feeding it). Each group
    item carries `idxs` (channels of that layer) and `root_idxs` (the same channels numbered as
    in the group's root layer); like Torch-Pruning's GroupMagnitudeImportance, the scores of each
    item are scattered onto the root's channels and averaged over the items that have scores.
    Items with unmapped channels (`None` in root_idxs) are skipped, as Torch-Pruning does.
    """

    def __init__(self, scores: dict[str, Tensor], names: dict[nn.Module, str]) -> None:
        self.scores = {k: v.detach().double().cpu().flatten() for k, v in scores.items()}
        self.names = names

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> Tensor | None:
        position = {int(r): k for k, r in enumerate(group[0].root_idxs)}
        total = torch.zeros(len(position), dtype=torch.float64)
        count = torch.zeros(len(position), dtype=torch.float64)
        for item in group:
            score = self._item_scores(item)
            if score is None:
                continue
            pos = torch.tensor([position[int(r)] for r in item.root_idxs], dtype=torch.long)
            total.index_add_(0, pos, score)
            count.index_add_(0, pos, torch.ones_like(score))
        if not bool((count > 0).any()):
            return None  # nothing in this group was scored: Torch-Pruning leaves it alone
        return (total / count.clamp(min=1)).float()

    def _item_scores(self, item: GroupItem) -> Tensor | None:
        """Scores of the item's channels when it is a scored layer's output-channel removal."""
        dep, idxs = item.dep, item.idxs
        name = self.names.get(dep.target.module)
        if name not in self.scores or dep.handler not in OUT_CHANNEL_FNS:
            return None
        if any(r is None for r in item.root_idxs) or not idxs:
            return None
        values = self.scores[name]
        if max(idxs) >= len(values):
            return None  # the layer changed since it was scored
        return values[torch.as_tensor(idxs, dtype=torch.long)]
