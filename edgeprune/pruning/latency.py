"""Latency of a PyTorch model on a target, predicted from its profile without exporting it.

The cost (MACs of every convolution and linear layer, weight bytes, activation bytes) is counted
with forward hooks and handed to the same roofline `edgeprune.devices.estimate` applies to ONNX
and TFLite files, so a candidate width costs one small forward pass instead of an export.
`scale` calibrates the roofline against a measurement of the dense model (measured / predicted),
so that pruned candidates are predicted on the measured scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgeprune.devices.estimate import Estimate, ModelCost, estimate_latency
from edgeprune.devices.targets import TargetProfile

FOLDED = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Identity)
"""Layers an exporter folds away or drops at inference: no activation is written for them."""


def _conv_macs(m: nn.Conv2d, out: Tensor) -> int:
    return out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]


@torch.no_grad()
def model_cost(model: nn.Module, example_inputs: Tensor, precision: str = "fp32") -> ModelCost:
    """MACs, weight and activation bytes of one inference on `example_inputs[:1]` when the
    model runs at `precision` ('fp32', or 'int8': one byte per value), counted the way
    `estimate.count_onnx` counts an exported file: conv and linear MACs, every parameter read
    once, every non-folded leaf layer's output written once."""
    x = example_inputs[:1]
    macs, activation = [0], [x.numel() * x.element_size()]

    def hook(module: nn.Module, _: tuple, out: object) -> None:
        if not isinstance(out, Tensor):
            return
        if isinstance(module, nn.Conv2d):
            macs[0] += _conv_macs(module, out)
        elif isinstance(module, nn.Linear):
            macs[0] += out[0].numel() * module.in_features
        if not isinstance(module, FOLDED):
            activation[0] += out[0].numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if precision == "int8":  # int8 weights and activations: a quarter of the float32 bytes
        weights, activation[0] = weights // 4, activation[0] // 4
    return ModelCost(macs=macs[0], weight_bytes=weights, activation_bytes=activation[0],
                     precision="int8" if precision == "int8" else "fp32", ops=len(leaves))


@dataclass(frozen=True)
class LatencyModel:
    """A target's roofline for PyTorch models, times `scale` (1 = uncalibrated)."""

    profile: TargetProfile
    threads: int | None = None
    scale: float = 1.0
    precision: str = "fp32"

    @classmethod
    def for_target(cls, target: TargetProfile, threads: int | None = None,
                   scale: float = 1.0, precision: str = "fp32") -> LatencyModel:
        return cls(target, threads, scale, precision)

    def estimate(self, model: nn.Module, example_inputs: Tensor) -> Estimate:
        """The roofline estimate before calibration."""
        return estimate_latency(model_cost(model, example_inputs, self.precision),
                                self.profile, self.threads)

    def predict_ms(self, model: nn.Module, example_inputs: Tensor) -> float:
        """Calibrated latency in milliseconds."""
        return self.estimate(model, example_inputs).latency_ms * self.scale

    def calibrated(self, model: nn.Module, example_inputs: Tensor,
                   measured_ms: float) -> LatencyModel:
        """This model with `scale` set so `model` is predicted at `measured_ms`."""
        raw = self.estimate(model, example_inputs).latency_ms
        return LatencyModel(self.profile, self.threads, measured_ms / raw if raw > 0 else 1.0,
                            self.precision)
