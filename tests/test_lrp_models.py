"""LRP on the newer families: linear layers applied to channels-last maps (ConvNeXt's and
transformers' MLPs), LayerNorm, GELU; and a named error where a layer cannot be scored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.criteria import get_criterion
from edgeprune.criteria.lrp import RelevanceRecorder
from edgeprune.errors import EdgepruneError

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


class ConvNeXtBlockNet(nn.Module):
    """A ConvNeXt block: depthwise conv, LayerNorm and an MLP of Linear layers on a
    channels-last map (the MLP's outputs have their channels in the last dimension)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 48)
        self.fc2 = nn.Linear(48, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def test_lrp_scores_linear_layers_on_channels_last_maps():
    """Before: 'The size of tensor a (48) must match the size of tensor b (2)' (the
    recorder summed a Linear's relevance as if its channels were dimension 1)."""
    torch.manual_seed(0)
    model = ConvNeXtBlockNet().eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    scores = get_criterion("lrp").score(model, [(x, y)])
    assert scores["fc1"].shape == (48,) and scores["fc2"].shape == (16,)
    assert scores["stem"].shape == scores["dw"].shape == (16,)
    for name, s in scores.items():
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all()), name
    assert float(scores["fc1"].sum()) > 0  # relevance reaches the MLP's hidden channels


def test_relevance_that_does_not_fit_a_layer_names_it_and_a_criterion_that_can():
    conv = nn.Conv2d(3, 8, 1)
    recorder = RelevanceRecorder({"block.conv": conv})
    with pytest.raises(EdgepruneError, match="lrp cannot score layer block.conv.*--criterion l1"):
        recorder._on_relevance("block.conv", torch.ones(2, 5, 4, 4))
