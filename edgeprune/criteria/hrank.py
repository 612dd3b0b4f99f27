"""`hrank`: feature-map rank (Lin et al., "HRank: Filter Pruning using High-Rank Feature Map",
CVPR 2020), a baseline.

Paper: a filter's importance is the average rank of its output feature maps over a batch of
images (the rank is stable across batches); low-rank maps carry less information and go first.
Here the feature map is the unit's activation as `feature_maps` reads it (after BatchNorm and
the ReLU that follows, as HRank's code hooks the ReLU outputs); the rank is
`torch.linalg.matrix_rank` of each (h, w) map, averaged over `samples` reference images and
normalized per layer. Layers with no spatial map (Linear) have rank 0 or 1 per sample: the score
is the share of samples where the unit is non-zero. Residual-stream channels are read at the sum
where an activation follows it (see `feature_maps`); a conv read with no activation at all (a
sum nothing activates, as in MobileNetV2) is read through a ReLU: a raw pre-activation map is
almost always full rank, which would tie every channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from edgeprune import distributed
from edgeprune.criteria.base import (
    Batches,
    Criterion,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.criteria.feature_maps import find_taps, stream_maps, take_samples


def map_ranks(maps: Tensor) -> Tensor:
    """Summed over the batch, the rank of every unit's (h, w) map: (C,) float64."""
    if maps.ndim == 4:
        return torch.linalg.matrix_rank(maps.double()).double().sum(0)
    return (maps != 0).double().reshape(maps.shape[0], maps.shape[1], -1).any(2).double().sum(0)


@dataclass
class HRank(Criterion, name="hrank"):
    """Average feature-map rank per filter (see the module docstring)."""

    samples: int = 256
    needs_data: ClassVar[bool] = True
    reduces_across_processes: ClassVar[bool] = True

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = take_samples(self.require_batches(batches), self.samples)
        layers = prunable_layers(model)
        totals = {n: torch.zeros(m.weight.shape[0], dtype=torch.float64)
                  for n, m in layers.items()}
        bare = {n for n, tap in find_taps(model).items() if tap.activation is None}
        seen, reached = 0, set()
        for batch, maps in stream_maps(model, data):
            seen += len(batch[0])
            reached |= set(maps)
            for name, value in maps.items():
                value = torch.relu(value) if name in bare and value.ndim == 4 else value
                totals[name] += map_ranks(value.cpu())
        for total in totals.values():  # every process's share of the images
            distributed.all_reduce(total)
        seen = int(distributed.all_reduce(torch.tensor(seen, dtype=torch.float64)))
        return {n: normalize_per_layer(v / max(seen, 1)) if n in reached
                else normalize_per_layer(torch.ones(len(v))) for n, v in totals.items()}
