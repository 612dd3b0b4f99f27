"""`fpgm`: filter pruning via geometric median (He et al., CVPR 2019), a baseline.

Paper: filters near the geometric median of their layer are the most replaceable by the
others; the score of a filter is its summed distance to all other filters of the layer
(higher = farther from the median = keep). This is Torch-Pruning's `FPGMImportance`, applied
per layer (see `tp_layer`); note that Torch-Pruning measures the distances between the
element-wise powers |w|^p of the filters (p = 2) rather than between the raw weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch_pruning as tp
from torch import Tensor, nn

from edgeprune.criteria.base import Batches, Criterion
from edgeprune.criteria.tp_layer import per_layer


@dataclass
class FPGM(Criterion, name="fpgm"):
    """Summed distance of each filter to the layer's other filters, normalized per layer."""

    p: int = 2
    needs_data: ClassVar[bool] = False

    def score(self, model: nn.Module, batches: Batches | None = None) -> dict[str, Tensor]:
        return per_layer(tp.importance.FPGMImportance(p=self.p, normalizer=None), model)
