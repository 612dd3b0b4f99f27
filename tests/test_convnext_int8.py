"""Static int8 TFLite of a ConvNeXt block whose layer scale was trained (is not one constant).

litert-torch folds the layer scale that follows the block's last Linear into the
FULLY_CONNECTED op and leaves that op's bias shaped (1, 1, 1, C); quantized per channel along
dimension 0, such a file did not load ("num_scales must be 1 ... but got C"), which is what a
fine-tuned, pruned torchvision convnext_tiny gave. A small ConvNeXt-like model reproduces it in
seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d

from edgeprune.export import ExportOptions, export_model
from edgeprune.export.tflite import TFLiteExporter
from edgeprune.export.tflite_quant import fc_biases_to_flatten, flatten_fc_biases
from edgeprune.spec import InputSpec


class TinyConvNeXt(nn.Module):
    """Stem, one ConvNeXt block, a downsampling layer, a second block and the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16))
        self.block1 = CNBlock(16, 1e-6, 0.0)
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, 2))
        self.block2 = CNBlock(24, 1e-6, 0.0)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(24),
                                  nn.Linear(24, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


def trained_like() -> nn.Module:
    """The model with every parameter moved off its initial value, as fine-tuning does (the
    layer scale in particular no longer holds one value for every channel)."""
    torch.manual_seed(0)
    model = TinyConvNeXt().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


SPEC = InputSpec(3, 32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("a", "b", "c"))


def test_fc_bias_is_flattened_before_quantizing() -> None:
    model = trained_like()
    fp32 = TFLiteExporter().convert(model, torch.zeros(1, *SPEC.shape), ExportOptions()).data
    assert len(fc_biases_to_flatten(fp32)) == 2  # one per block: the fault's precondition
    flat = flatten_fc_biases(fp32)
    assert fc_biases_to_flatten(flat) == []


def test_trained_convnext_block_int8_tflite_loads_and_verifies(tmp_path: Path) -> None:
    model = trained_like()
    rng = np.random.default_rng(0)
    samples = torch.from_numpy(rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    result = export_model(model, SPEC, tmp_path, samples[:16], formats=("tflite",),
                          precisions=("int8",), calibration=samples)[0]
    assert result.path.is_file() and result.verified
    assert result.top1_agreement >= 0.9
