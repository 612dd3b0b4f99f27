"""`gradient` and `act-taylor`: the two data baselines of the LRP paper (Yeom et al., Pattern
Recognition 2021), which it compares `lrp` with, beside the weight norm (`l1`).

From the paper's code (docs/CRITERIA.md, Baselines): for each filter, with a its output activation
and g the gradient of the loss with respect to that activation,
- `gradient`:   |sum g|      over the reference images and positions;
- `act-taylor`: |sum a * g|  over the reference images and positions (the first-order Taylor
  estimate of the loss change when the activation is removed, Molchanov et al. 2017);
The paper's code L2-normalizes these per layer; here, like every criterion, they are
normalized v / sum v, so the interface holds one convention. The order within a layer is the
same; only a global ranking across layers can differ.

Documented reading: the activation is the layer's own output (the conv before its BatchNorm,
as the paper's hooks on conv modules read it); the loss is the cross-entropy of the true class,
summed over the images. These differ from `taylor` (Molchanov et al. 2019, weights times their
gradients). Gradients are taken on an eval-mode copy with frozen parameters (the caller's model
is never touched); a layer forward never reaches, or with no gradient at all, scores
uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edgeprune import distributed
from edgeprune.criteria.base import (
    Batches,
    Criterion,
    normalize_per_layer,
    prunable_layers,
)
from edgeprune.criteria.feature_maps import Tap, recording, working_copy


def output_sums(model: nn.Module, batches: Batches, weight_by_activation: bool
                ) -> dict[str, Tensor]:
    """Per prunable layer, sum over images and positions of dL/dA (or A * dL/dA) per output
    channel, A the layer's output and L the summed cross-entropy. Layers forward never reaches
    are absent."""
    work = working_copy(model)
    layers = prunable_layers(work)
    device = next(iter(work.parameters()), torch.zeros(0)).device
    values: dict[str, Tensor] = {}
    live: dict[str, Tensor] = {}
    totals: dict[str, Tensor] = {}
    with recording(work, {n: Tap(n, n) for n in layers}, values, live):
        for batch in batches:
            values.clear()
            live.clear()
            x = batch[0].to(device).requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(work(x), batch[1].to(device), reduction="sum")
                names = [n for n in layers if n in live]
                grads = torch.autograd.grad(loss, [live[n] for n in names], allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if grad is None:
                    continue
                term = grad * values[name] if weight_by_activation else grad
                dims = [d for d in range(term.ndim) if d != 1]
                total = term.detach().double().sum(dim=dims).cpu()
                totals[name] = totals.get(name, 0) + total
    for total in totals.values():  # every process's share of the images
        distributed.all_reduce(total)
    return totals


class _OutputGradient(Criterion):
    """|sum g| or |sum a * g| per filter, normalized per layer (see the module docstring)."""

    weight_by_activation: ClassVar[bool]
    needs_data: ClassVar[bool] = True
    reduces_across_processes: ClassVar[bool] = True

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = [b[:2] for b in self.require_batches(batches)]
        sums = output_sums(model, data, self.weight_by_activation)
        scores = {}
        for name, layer in prunable_layers(model).items():
            values = sums[name].abs() if name in sums else torch.zeros(0)
            if not values.any():  # never reached, or no gradient at all: nothing to tell apart
                values = torch.ones(layer.weight.shape[0])
            scores[name] = normalize_per_layer(values)
        return scores


@dataclass
class Gradient(_OutputGradient, name="gradient"):
    """|sum of the loss gradient at the filter's output| (the LRP paper's gradient baseline)."""

    weight_by_activation: ClassVar[bool] = False


@dataclass
class ActivationTaylor(_OutputGradient, name="act-taylor"):
    """|sum of activation x loss gradient| at the filter's output (the LRP paper's Taylor
    baseline, Molchanov et al. 2017)."""

    weight_by_activation: ClassVar[bool] = True
