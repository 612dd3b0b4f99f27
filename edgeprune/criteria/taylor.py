"""`taylor`: first-order Taylor importance (Molchanov et al., "Importance Estimation for Neural
Network Pruning", CVPR 2019), a baseline.

Paper: the loss change from removing a filter, estimated to first order from its weights and
their gradients. This is Torch-Pruning's `GroupTaylorImportance` applied per layer (see
`tp_layer`): sum over the filter's weights of |w * dL/dw|, with the cross-entropy gradient
accumulated over the reference batches on an eval-mode copy (BatchNorm statistics frozen)
before |w * g| is taken, as Torch-Pruning's examples use it (the paper averages per-minibatch
terms instead); normalized per layer. The gradients live on the copy only: the caller need
not run backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn import functional as F

from edgeprune import distributed
from edgeprune.criteria.base import Batches, Criterion
from edgeprune.criteria.tp_layer import per_layer
from edgeprune.models.copying import clone


@dataclass
class Taylor(Criterion, name="taylor"):
    """|w * grad| summed per filter, gradients of the loss on the reference batches."""

    multivariable: bool = False
    needs_data: ClassVar[bool] = True
    reduces_across_processes: ClassVar[bool] = True

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        data = self.require_batches(batches)
        work = clone(model).eval()
        device = next(iter(work.parameters())).device
        for p in work.parameters():
            p.requires_grad_(True)
            p.grad = None
        total = sum(len(batch[1]) for batch in data)
        total = int(distributed.all_reduce(torch.tensor(float(total))))
        for batch in data:  # the mean loss over all samples, whatever the batches
            x, y = batch[0].to(device), batch[1].to(device)
            (F.cross_entropy(work(x), y, reduction="sum") / total).backward()
        for p in work.parameters():  # layers forward never reaches: zero gradient
            if p.grad is None:
                p.grad = p.detach() * 0
            distributed.all_reduce(p.grad)  # every process's share of the images
        importance = tp.importance.GroupTaylorImportance(
            normalizer=None, multivariable=self.multivariable)
        return per_layer(importance, work)
