"""`actmax`: activation-maximization visual similarity (Yao, Cao, Leung, Liang, "Deep neural
network compression through interpretability-based filter pruning", Pattern Recognition 2021).

Paper (abstract): every filter is visualized by activation maximization (AM); redundant filters
are measured by the colour and texture similarity of those visualizations; "repetitive" and
"invalid" filters are removed by an optimization; the network is compressed layer by layer.

Documented reading (docs/CRITERIA.md, `actmax`; the paper's exact formulas are not available):
- AM images from `am_images` (pre-activation objective, TV + L2, jitter, one batch per
  layer, clamped to the reference data's input box when data is given);
- colour similarity = histogram intersection of per-input-channel intensity histograms
  (`bins` bins over the layer's common value range; grayscale inputs make it an intensity
  histogram); texture similarity = cosine of the Gram matrices of 3x3 patches of the
  standardized image with the diagonal (constant variances) dropped, mapped to [0, 1];
  S = w * S_colour + (1 - w) * S_texture with w = `colour_weight`;
- invalid filters: AM cannot excite them (`LayerAM.invalid`: never active, or a gain under
  `gain_tol` of the layer's median gain); they score 0 and go first;
- the paper's optimization is replaced by greedy max-min diversity (start from the most
  excitable filter, keep adding the one least similar to the kept set); the keep order becomes
  rank scores (C - position) / C, normalized per layer, so every keep count keeps the most
  diverse prefix. Each dropped filter's group is the kept filter most similar to it.
- the paper's layer-by-layer schedule (prune layer l, fine-tune, re-run AM for layer l+1) is a
  pruning schedule, not part of the score; this class scores all layers of the given network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edgeprune.criteria.am_images import AMConfig, LayerAM, visualize
from edgeprune.criteria.base import (
    Batches,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.criteria.redundancy import RedundancyCriterion, diverse_order
from edgeprune.errors import EdgepruneError


def colour_similarity(images: Tensor, bins: int = 16) -> Tensor:
    """Histogram intersection of per-channel intensity histograms, averaged over channels:
    (K, K) in [0, 1]. The bins span the value range of all K images together."""
    k, c = images.shape[:2]
    flat = images.reshape(k, c, -1)
    lo, hi = float(flat.min()), float(flat.max())
    idx = ((flat - lo) / max(hi - lo, 1e-12) * bins).long().clamp(0, bins - 1)
    hist = torch.zeros(k, c, bins).scatter_add_(2, idx, torch.ones_like(flat))
    hist = hist / flat.shape[-1]
    return torch.minimum(hist[:, None], hist[None, :]).sum(-1).mean(-1)


def texture_similarity(images: Tensor) -> Tensor:
    """Cosine of the off-diagonal Gram entries of 3x3 patches of each standardized image,
    mapped from [-1, 1] to [0, 1]: (K, K)."""
    k = images.shape[0]
    flat = images.reshape(k, -1)
    std = flat.std(1, keepdim=True).clamp(min=1e-12)
    x = ((flat - flat.mean(1, keepdim=True)) / std).reshape(images.shape)
    if x.shape[-1] < 3 or x.shape[-2] < 3:  # too small for patches: compare the images
        gram = x.reshape(k, -1, 1) * x.reshape(k, 1, -1)
    else:
        patches = F.unfold(x, 3)  # (K, 9c, L)
        gram = patches @ patches.transpose(1, 2) / patches.shape[-1]
    d = gram.shape[-1]
    off = gram.reshape(k, -1)[:, ~torch.eye(d, dtype=torch.bool).flatten()]
    if off.shape[1] == 0:
        return torch.ones(k, k)
    off = F.normalize(off, dim=1)
    return (1 + off @ off.T) / 2


def visual_similarity(images: Tensor, colour_weight: float = 0.5, bins: int = 16) -> Tensor:
    """S = w * colour + (1 - w) * texture similarity of AM images: (K, K) in [0, 1]."""
    return colour_weight * colour_similarity(images, bins) + \
        (1 - colour_weight) * texture_similarity(images)


def data_shape_and_box(criterion_name: str, batches: Batches | None,
                       input_shape: tuple[int, ...] | None
                       ) -> tuple[tuple[int, ...], tuple[Tensor, Tensor] | None]:
    """The input shape (from the batches or the `input_shape` option) and the batches'
    per-channel input box (None without data)."""
    from edgeprune.criteria.lrp import input_box

    data = list(batches) if batches is not None else []
    if data:
        return tuple(data[0][0].shape[1:]), input_box([b[:2] for b in data])
    if input_shape is None:
        raise EdgepruneError(f"criterion {criterion_name!r} needs reference batches or its "
                             "input_shape option (C, H, W)")
    return tuple(input_shape), None


@dataclass
class ActMax(RedundancyCriterion, name="actmax"):
    """Keep the most visually diverse filters; AM-invalid filters first to go (see the module
    docstring). Data only sets the input shape and the AM clamping box; with `input_shape`
    it runs without data."""

    am: AMConfig = field(default_factory=AMConfig)
    colour_weight: float = 0.5
    bins: int = 16
    gain_tol: float = 0.01
    input_shape: tuple[int, int, int] | None = None
    needs_data: ClassVar[bool] = True

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        shape, box = data_shape_and_box(self.name, batches, self.input_shape)
        return self.from_images(model, visualize(model, shape, cfg=self.am, box=box))

    def from_images(self, model: nn.Module, am: dict[str, LayerAM]) -> dict[str, Tensor]:
        """Scores (and `self.redundancy`) from AM results already computed for `model`."""
        self.redundancy = {}
        scores = {}
        for name, layer in prunable_layers(model).items():
            result = am.get(name)
            if result is None or not result.reached:  # unused layer: nothing to tell apart
                scores[name] = normalize_per_layer(torch.ones(layer.weight.shape[0]))
                continue
            similarity = visual_similarity(result.images, self.colour_weight, self.bins)
            self.redundancy[name] = diverse_order(similarity, result.gain,
                                                  result.invalid(self.gain_tol))
            scores[name] = normalize_per_layer(self.redundancy[name].scores())
        return scores
