"""Precisions and what each must pass: the numeric checks applied to every exported file.

fp32 must reproduce PyTorch's logits; reduced precisions are judged by what users see, top-1
accuracy on labelled samples next to PyTorch's, with an agreement floor as the fallback when no
labels were given. Each exporter holds its own copy of these checks (`Exporter.checks`), so a
format can tighten them and tests can adjust one instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeprune.errors import EdgepruneError

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int8-qat")
"""fp32: as trained. fp16: weights stored in half precision. int8: weights and activations
int8, activation ranges calibrated on real samples (static). int8-dynamic: int8 weights,
activations quantized at run time from their observed range (no calibration). int8-qat: a
model already quantized by quantization-aware training (`edgeprune.training.qat`), converted
as it is, int8 inputs and outputs included."""

PREQUANTIZED = frozenset({"int8-qat"})
"""Precisions whose model arrives quantized: converted directly, never derived from fp32."""

CALIBRATED = frozenset({"int8"})
"""Precisions whose export needs calibration samples."""

MIN_CALIBRATION_SAMPLES = 64
"""Fewer samples than this give activation ranges too noisy to trust; refused."""


@dataclass(frozen=True)
class Check:
    """Thresholds for one precision.

    `atol`/`rtol`: every logit within atol + rtol * the largest |logit| PyTorch gives that
    sample (`bound`; None: not checked). The scale is the sample's, not each logit's own:
    float32 rounding in a deep network is relative to the magnitudes it carries, so a logit
    near zero is no more exact than its sample's largest one. `min_agreement`: share of
    samples whose top-1 class equals PyTorch's (for fp32 only samples whose top-2 margin
    exceeds twice the bound count); `max_accuracy_drop`: top-1 accuracy on labelled samples
    may be at most this many percentage points below PyTorch's (None: not checked). With
    labels, the accuracy check replaces the agreement floor for reduced precisions, because a
    few flipped predictions on a small batch say little.
    """

    atol: float | None
    rtol: float
    min_agreement: float
    max_accuracy_drop: float | None

    def bound(self, reference: np.ndarray) -> np.ndarray:
        """Per sample of PyTorch's (N, ...) `reference`, how far each of its logits may be
        off: atol + rtol * max |logit| of that sample, shape (N, 1). Needs `atol`."""
        if self.atol is None:
            raise ValueError("this precision has no logit tolerance (atol is None)")
        ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
        scale = np.abs(ref).max(axis=1, keepdims=True) if ref.size else np.zeros((len(ref), 1))
        return self.atol + self.rtol * scale

    def describe(self) -> str:
        """The logit tolerance in words, as tables and failure messages state it."""
        if self.atol is None:
            return "logits not checked"
        return f"within {self.atol:g} + {self.rtol:g} x the sample's largest abs(logit)"


DEFAULT_CHECKS: dict[str, Check] = {
    # rtol 1e-3 of the sample's scale: PyTorch's own float32 logits of EfficientNet-B5/B7 are
    # up to 8.6e-4 from float64 (docs/EXPORT.md), so a file cannot be asked to match them
    # more closely than about that; an error of 1% of the scale still fails.
    "fp32": Check(atol=1e-4, rtol=1e-3, min_agreement=1.0, max_accuracy_drop=None),
    "fp16": Check(atol=None, rtol=0.0, min_agreement=0.97, max_accuracy_drop=0.5),
    "int8": Check(atol=None, rtol=0.0, min_agreement=0.90, max_accuracy_drop=1.0),
    "int8-dynamic": Check(atol=None, rtol=0.0, min_agreement=0.90, max_accuracy_drop=1.0),
    "int8-qat": Check(atol=None, rtol=0.0, min_agreement=0.90, max_accuracy_drop=1.0),
}


def parse_precisions(precisions: str | Sequence[str]) -> list[str]:
    """Known precision names in order, without repeats; 'a,b' strings are split."""
    names = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if not names:
        raise EdgepruneError(f"no precision given; choose from {', '.join(PRECISIONS)}")
    for name in names:
        if name not in PRECISIONS:
            raise EdgepruneError(f"unknown precision {name!r}; choose from "
                                 f"{', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def file_tag(precision: str) -> str:
    """What a file name carries for `precision`: nothing for fp32 (`model.onnx`), else
    `.int8` etc. (`model.int8.onnx`)."""
    return "" if precision == "fp32" else f".{precision}"
