"""`fmcluster`: filter pruning via feature-map clustering and a redundancy index (Li, He, Zhang,
Tang, "Filter pruning via feature map clustering", Intelligent Data Analysis 2023).

Paper (abstract): feature maps do not track the sparsity of filter weights, so pruning should
follow redundancy, whether a filter's output repeats other filters' outputs, measured by a
"redundancy index" (RI).

Documented reading (docs/CRITERIA.md, `fmcluster`):
- the unit activations (see `feature_maps`) of `samples` reference images, one vector per filter;
- standardized; distance = 1 - |Pearson correlation|, from running sums over the batches (a
  C x C matrix per layer, never the maps themselves); average-linkage agglomerative clustering
  of the layer into k clusters, k = the layer's keep count: the pruner finds the counts with a
  first scoring at k = ceil(`cluster_ratio` * C), then scores again with `keep` set to them
  (`with_keep_counts`);
- in each cluster the member nearest the centre (highest mean |r| to the other members) is
  its representative and is kept; every other member gets RI = (cluster size - 1) x its
  similarity to the centre (mean |r| to the other members) and is pruned highest RI first;
- so that every keep count has an answer, the representatives are ranked by the same
  procedure applied to them again (recursively), ahead of all non-representatives. Scores are
  the ranks (C - position) / C, normalized per layer. Filters whose output never varies
  (zero variance: dead or constant) carry no information: invalid, score 0, first to go.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from edgeprune.criteria.base import (
    Batches,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.criteria.feature_maps import stream_maps, take_samples
from edgeprune.criteria.redundancy import Redundancy, RedundancyCriterion, cluster_labels


class CorrelationSums:
    """Running sums for the |Pearson r| between a layer's units over samples and positions:
    the count, per-unit sums and the (C, C) cross-product matrix, in float64, about a shift
    (the first batch's unit means) that keeps the sums from cancelling. Memory is C x C,
    whatever the number of images; `add` takes one batch of (N, C, ...) activations."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: Tensor | None = None
        self.sums: Tensor | None = None
        self.products: Tensor | None = None

    def add(self, maps: Tensor) -> CorrelationSums:
        """Fold in one batch of activations (N, C, ...)."""
        x = maps.detach().transpose(0, 1).reshape(maps.shape[1], -1).double()
        if self.shift is None:
            self.shift = x.mean(1, keepdim=True)
            self.sums = torch.zeros(len(x), dtype=torch.float64, device=x.device)
            self.products = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)
        x = x - self.shift
        self.count += x.shape[1]
        self.sums += x.sum(1)
        self.products += x @ x.T
        return self

    def abs_correlation(self) -> tuple[Tensor, Tensor]:
        """(|r| between units (C, C), zero-variance mask (C,)) of everything added."""
        mean = self.sums / self.count
        cov = self.products - self.count * torch.outer(mean, mean)
        norm = cov.diagonal().clamp(min=0).sqrt()
        flat = norm <= 1e-12 * max(float(norm.max()), 1e-300)
        scale = norm.clamp(min=1e-300)
        r = (cov / scale[:, None] / scale[None, :]).abs().clamp(max=1.0)
        return r.float().cpu(), flat.cpu()


def abs_correlation(maps: Tensor) -> tuple[Tensor, Tensor]:
    """(|Pearson r| between units (C, C), zero-variance mask (C,)) of (N, C, ...) activations."""
    return CorrelationSums().add(maps).abs_correlation()


def redundancy_index(similarity: Tensor, members: Tensor) -> tuple[int, Tensor]:
    """(representative, RI of every member) of one cluster, `similarity` = |r| of the layer."""
    size = len(members)
    if size == 1:
        return int(members[0]), torch.zeros(1)
    sub = similarity[members][:, members].double()
    to_centre = (sub.sum(1) - sub.diagonal()) / (size - 1)
    rep = int(members[int(torch.argmax(to_centre))])
    return rep, ((size - 1) * to_centre).float()


def ri_order(similarity: Tensor, channels: Tensor, ratio: float,
             parent: Tensor, clusters: int | None = None) -> list[int]:
    """Keep order of `channels`: cluster into `clusters` (default ceil(ratio * n)),
    representatives first (ordered recursively at `ratio`), then the other members by RI
    ascending; fills `parent` (member -> its representative)."""
    n = len(channels)
    if n <= 1:
        return channels.tolist()
    k = min(n - 1, max(1, clusters or math.ceil(ratio * n)))
    labels = cluster_labels(1 - similarity[channels][:, channels], k)
    reps, others = [], []
    for label in range(k):
        members = channels[labels == label]
        rep, ri = redundancy_index(similarity, members)
        reps.append(rep)
        for member, value in zip(members.tolist(), ri.tolist(), strict=True):
            if member != rep:
                parent[member] = rep
                others.append((value, member))
    head = ri_order(similarity, torch.tensor(sorted(reps)), ratio, parent)
    return head + [m for _, m in sorted(others)]


def fm_redundancy(similarity: Tensor, invalid: Tensor, ratio: float, keep: int | None = None
                  ) -> Redundancy:
    """The RI keep order of one layer from its units' |r| (C, C) and zero-variance mask,
    clustered into `keep` clusters (default ceil(ratio * valid channels))."""
    parent = torch.full((len(invalid),), -1, dtype=torch.long)
    valid = torch.nonzero(~invalid).flatten()
    order = ri_order(similarity, valid, ratio, parent, keep) if len(valid) else []
    order += torch.nonzero(invalid).flatten().tolist()
    return Redundancy(torch.tensor(order, dtype=torch.long), parent, invalid)


@dataclass
class FMCluster(RedundancyCriterion, name="fmcluster"):
    """Redundancy index of feature-map clusters (see the module docstring).

    Options: `samples` reference images; `keep`: per-layer keep counts, the number of
    clusters of each layer (the pruner sets them); layers without one use
    k = ceil(`cluster_ratio` * C).
    """

    samples: int = 256
    cluster_ratio: float = 0.5
    keep: dict[str, int] | None = None
    needs_data: ClassVar[bool] = True

    def with_keep_counts(self, counts: dict[str, int]) -> FMCluster:
        return dataclasses.replace(self, keep=dict(counts))

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = take_samples(self.require_batches(batches), self.samples)
        sums: dict[str, CorrelationSums] = {}
        for _, maps in stream_maps(model, data):
            for name, value in maps.items():
                sums.setdefault(name, CorrelationSums()).add(value)
        self.redundancy, scores = {}, {}
        for name, layer in prunable_layers(model).items():
            if name not in sums:
                scores[name] = normalize_per_layer(torch.ones(layer.weight.shape[0]))
                continue
            self.redundancy[name] = fm_redundancy(*sums[name].abs_correlation(),
                                                  self.cluster_ratio, (self.keep or {}).get(name))
            scores[name] = normalize_per_layer(self.redundancy[name].scores())
        return scores
