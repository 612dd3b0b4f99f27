"""Redundancy groupings shared by `actmax`, `function` and `fmcluster`: a keep order per layer
(which channel to keep first, second, ...) plus, for each channel, the earlier channel it
duplicates; scores follow from the order, the atlas draws the groups."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from edgeprune.criteria.base import Criterion
from edgeprune.errors import EdgepruneError


@dataclass
class Redundancy:
    """One layer's redundancy structure.

    `order` lists the channels from most to least worth keeping; `parent[c]` is the channel
    earlier in `order` that channel `c` duplicates (-1 for the first channel and for invalid
    channels, which duplicate nothing: they do nothing); `invalid` marks channels found to do
    nothing at all. Keeping the first k channels of `order` keeps one channel per group.
    """

    order: Tensor
    parent: Tensor
    invalid: Tensor

    def groups(self, keep: int) -> list[list[int]]:
        """With the first `keep` channels of `order` kept: one group per kept channel, that
        channel first and then the pruned channels it stands for (invalid ones left out)."""
        return self.groups_for(set(self.order[:keep].tolist()))

    def groups_for(self, kept: set[int]) -> list[list[int]]:
        """Like `groups`, for any kept set (the pruner's, which averages scores over coupled
        layers and rounds, need not be a prefix of `order`): each pruned valid channel joins
        the first kept channel up its chain of parents, or, with none, stays out."""
        parent = self.parent.tolist()
        members: dict[int, list[int]] = {k: [k] for k in self.order.tolist() if k in kept}
        invalid = set(self.invalid.nonzero().flatten().tolist())
        for c in self.order.tolist():
            if c in kept or c in invalid:
                continue
            root = parent[c]
            while root >= 0 and root not in kept:
                root = parent[root]
            if root >= 0:
                members[root].append(c)
        return list(members.values())

    def scores(self) -> Tensor:
        """Rank scores: (C - position) / C along `order`, invalid channels 0 (unless every
        channel is invalid, when the ranks stand)."""
        n = len(self.order)
        out = torch.empty(n)
        out[self.order] = (n - torch.arange(n, dtype=torch.float32)) / n
        if not bool(self.invalid.all()):
            out[self.invalid] = 0.0
        return out


def diverse_order(similarity: Tensor, strength: Tensor, invalid: Tensor) -> Redundancy:
    """Greedy max-min diversity: start from the strongest valid channel, then repeatedly keep
    the valid channel least similar to everything kept so far (ties: the stronger); each
    channel's parent is the kept channel most similar to it when it was added. Invalid channels
    come last, strongest first."""
    n = len(strength)
    valid = [int(c) for c in torch.nonzero(~invalid).flatten()]
    order: list[int] = []
    parent = torch.full((n,), -1, dtype=torch.long)
    if valid:
        first = max(valid, key=lambda c: (float(strength[c]), -c))
        order.append(first)
        closest = similarity[:, first].double().clone()
        nearest = torch.full((n,), first, dtype=torch.long)
        remaining = [c for c in valid if c != first]
        while remaining:
            low = min(float(closest[c]) for c in remaining)
            ties = [c for c in remaining if float(closest[c]) <= low + 1e-12]
            pick = max(ties, key=lambda c: (float(strength[c]), -c))
            order.append(pick)
            parent[pick] = nearest[pick]
            remaining.remove(pick)
            column = similarity[:, pick].double()
            better = column > closest
            closest = torch.where(better, column, closest)
            nearest[better] = pick
    rest = [int(c) for c in torch.nonzero(invalid).flatten()]
    order += sorted(rest, key=lambda c: (-float(strength[c]), c))
    return Redundancy(torch.tensor(order, dtype=torch.long), parent, invalid.clone())


def _average_linkage(distance: Tensor) -> Iterator[tuple[int, int]]:
    """Agglomerative clustering with average linkage (Lance-Williams update): yields the
    merges (i, j), cluster j joining cluster i, closest pair first; ties go to the lowest
    indices, so the result is deterministic."""
    n = distance.shape[0]
    d = distance.double().clone()
    d.fill_diagonal_(float("inf"))
    size = torch.ones(n, dtype=torch.float64)
    for _ in range(n - 1):
        flat = int(torch.argmin(d))
        i, j = sorted(divmod(flat, n))
        yield i, j
        merged = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[i], d[:, i] = merged, merged
        d[i, i] = float("inf")
        d[j], d[:, j] = float("inf"), float("inf")
        size[i] += size[j]


def agglomerative_order(distance: Tensor, strength: Tensor, invalid: Tensor) -> Redundancy:
    """The nested order of an average-linkage dendrogram over the valid channels: at every
    merge the stronger of the two clusters' representatives survives and the other becomes
    its child, so keeping the first k channels keeps exactly one representative of each of
    the k clusters. Invalid channels come last."""
    valid = torch.nonzero(~invalid).flatten()
    parent = torch.full((len(strength),), -1, dtype=torch.long)
    rep = valid.clone()
    eliminated: list[int] = []
    if len(valid):
        for i, j in _average_linkage(distance[valid][:, valid]):
            a, b = int(rep[i]), int(rep[j])
            win, lose = (a, b) if (float(strength[a]), -a) >= (float(strength[b]), -b) else (b, a)
            parent[lose] = win
            rep[i] = win
            eliminated.append(lose)
        eliminated.append(int(rep[0]))
    rest = [int(c) for c in torch.nonzero(invalid).flatten()]
    order = eliminated[::-1] + sorted(rest, key=lambda c: (-float(strength[c]), c))
    return Redundancy(torch.tensor(order, dtype=torch.long), parent, invalid.clone())


def cluster_labels(distance: Tensor, k: int) -> Tensor:
    """Labels 0..k-1 of an average-linkage dendrogram cut at `k` clusters."""
    n = distance.shape[0]
    label = torch.arange(n)
    merges = _average_linkage(distance)
    for _ in range(n - max(1, k)):
        i, j = next(merges)
        label[label == j] = i
    return torch.unique(label, return_inverse=True)[1]


class RedundancyCriterion(Criterion):
    """A criterion that also says which channels duplicate which: after `score()`,
    `redundancy[layer]` holds that layer's `Redundancy` (the last call's; a fresh dict each
    call, never attached to the model)."""

    redundancy: dict[str, Redundancy]

    def groups(self, layer: str, keep: int) -> list[list[int]]:
        """The redundancy groups of `layer` from the last `score()`, first `keep` kept."""
        if not getattr(self, "redundancy", None) or layer not in self.redundancy:
            raise EdgepruneError(f"no redundancy recorded for layer {layer!r}; call score() "
                                 "first")
        return self.redundancy[layer].groups(keep)
