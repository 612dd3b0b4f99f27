"""`function`: functionality-oriented filter pruning (Qin, Yu, Liu, Chen, "Interpretable
Convolutional Filter Pruning", BMVC 2019).

Paper (abstract): a filter's significance is its functionality, regardless of its magnitude;
networks hold many repetitive filters with similar feature preferences, which L1 fails to
remove; pruning aims at needing no retraining.

Documented reading (docs/CRITERIA.md, `function`):
- each filter's functionality is its AM image (`am_images`, shared with `actmax`);
- images are flattened, mean-centred and L2-normalized (the centring is ours: every image
  starts from the same noise, and the centred cosine is the images' correlation); distance is
  1 - cosine; agglomerative clustering with average linkage per layer;
- one representative per cluster: the filter with the highest mean activation on the
  reference data (AM gain when no data is given). The dendrogram is nested, so its merges give
  a full keep order: keeping the first k channels keeps one representative of each of the k
  clusters, whatever k the pruner picks. Scores are the ranks (C - position) / C, normalized
  per layer; AM-invalid filters (see `actmax`) score 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edgeprune.criteria.actmax import data_shape_and_box
from edgeprune.criteria.am_images import AMConfig, LayerAM, visualize
from edgeprune.criteria.base import (
    Batches,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.criteria.feature_maps import stream_maps, take_samples
from edgeprune.criteria.redundancy import RedundancyCriterion, agglomerative_order


def functional_distance(images: Tensor) -> Tensor:
    """1 - cosine of the mean-centred, L2-normalized flattened AM images: (K, K) in [0, 2]."""
    flat = images.reshape(images.shape[0], -1)
    flat = F.normalize(flat - flat.mean(1, keepdim=True), dim=1)
    return (1 - flat @ flat.T).clamp(min=0)




@dataclass
class Function(RedundancyCriterion, name="function"):
    """One representative per functional cluster of AM images (see the module docstring)."""

    am: AMConfig = field(default_factory=AMConfig)
    samples: int = 256
    gain_tol: float = 0.01
    input_shape: tuple[int, int, int] | None = None
    needs_data: ClassVar[bool] = True

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = list(batches) if batches is not None else []
        shape, box = data_shape_and_box(self.name, data, self.input_shape)
        strength = self.strengths(model, data) if data else None
        return self.from_images(model, visualize(model, shape, cfg=self.am, box=box), strength)

    def strengths(self, model: nn.Module, batches: Batches) -> dict[str, Tensor]:
        """Each unit's mean activation on (the first `samples` of) the reference batches."""
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for _, maps in stream_maps(model, take_samples(list(batches), self.samples)):
            for name, value in maps.items():
                per_unit = value.transpose(0, 1).reshape(value.shape[1], -1).double()
                sums[name] = sums.get(name, 0) + per_unit.sum(1).cpu()
                counts[name] = counts.get(name, 0) + per_unit.shape[1]
        return {n: (v / counts[n]).float() for n, v in sums.items()}

    def from_images(self, model: nn.Module, am: dict[str, LayerAM],
                    strength: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Scores (and `self.redundancy`) from AM results; `strength` picks representatives
        (default: the AM gain)."""
        self.redundancy = {}
        scores = {}
        for name, layer in prunable_layers(model).items():
            result = am.get(name)
            if result is None or not result.reached:
                scores[name] = normalize_per_layer(torch.ones(layer.weight.shape[0]))
                continue
            pick = (strength or {}).get(name, result.gain)
            self.redundancy[name] = agglomerative_order(functional_distance(result.images),
                                                        pick, result.invalid(self.gain_tol))
            scores[name] = normalize_per_layer(self.redundancy[name].scores())
        return scores
