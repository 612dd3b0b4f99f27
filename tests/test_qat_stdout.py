"""Quantization-aware training keeps stdout for results: `edgeprune compress --json` prints its
summary there, and a QAT trial on a residual network must not put library chatter in front of
it (litert-torch's add+relu annotator print()s for a ReLU module used twice)."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.training.qat import prepare, quantizer


class _Block(nn.Module):
    """A torchvision-style residual block: one ReLU module, used after the conv and after the
    add (what makes the annotator print)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(self.conv1(x)))
        b = self.relu(self.bn2(self.conv2(a)) + a)
        return self.head(b.mean((2, 3)))


def test_preparing_a_residual_block_for_qat_prints_nothing_to_stdout(capsys) -> None:
    prepared = prepare(_Block(), torch.randn(1, 1, 8, 8), quantizer())
    assert prepared(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Relu partition has more than one output node" in captured.err  # moved, not lost
