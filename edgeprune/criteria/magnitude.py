"""Data-free baselines: filter weight norms (Li et al. 2017) and random scores.

The norms are computed directly from each layer's weight rather than through Torch-Pruning's
`MagnitudeImportance`: that class scores dependency-graph *groups* (summing coupled layers),
while a criterion here scores each layer on its own; the pruner does the group aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from edgeprune.criteria.base import (
    Batches,
    Criterion,
    normalize_per_layer,
    prunable_layers,
)


class _WeightNorm(Criterion):
    """Per-filter Lp norm of the weight, normalized per layer v / sum(v) as in the LRP paper's
    code for its `weight` baseline, so scores of different layers can be ranked globally."""

    p: ClassVar[int]
    needs_data: ClassVar[bool] = False

    @torch.no_grad()
    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        return {name: normalize_per_layer(m.weight.detach().flatten(1).norm(p=self.p, dim=1))
                for name, m in prunable_layers(model).items()}


@dataclass
class L1Norm(_WeightNorm, name="l1"):
    """L1 norm of each filter (Li et al., ICLR 2017), normalized per layer."""

    p: ClassVar[int] = 1


@dataclass
class L2Norm(_WeightNorm, name="l2"):
    """L2 norm of each filter, normalized per layer."""

    p: ClassVar[int] = 2


@dataclass
class RandomScore(Criterion, name="random"):
    """Uniform random scores from a seeded generator (the lower bound every criterion must beat)."""

    seed: int = 0
    needs_data: ClassVar[bool] = False

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        return {name: normalize_per_layer(torch.rand(m.weight.shape[0], generator=g))
                for name, m in prunable_layers(model).items()}
