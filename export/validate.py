"""The one validator for every exporter: run the exported file on real samples and compare its
logits with PyTorch's (optimum-style), reporting max abs/rel difference and top-1 agreement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeprune.export.base import ExportError


@dataclass(frozen=True)
class Metrics:
    """How closely an exported model reproduces PyTorch on `num_samples` inputs.

    `failures` lists the checks that did not pass (empty when all did)."""

    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    num_samples: int
    failures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return not self.failures


def run_each(runner: Callable[[np.ndarray], np.ndarray], samples: np.ndarray) -> np.ndarray:
    """Run `runner` on one sample at a time (exported models have a static batch of 1, the
    batch devices run) and stack the outputs into (N, ...)."""
    return np.concatenate([np.asarray(runner(samples[i : i + 1])) for i in range(len(samples))])


def compare(reference: np.ndarray, outputs: np.ndarray, atol: float, rtol: float) -> Metrics:
    """Compare outputs with reference elementwise: |out - ref| <= atol + rtol * |ref| (numpy's
    allclose) and all outputs finite; shapes must be equal. The relative difference is
    |out - ref| / |ref| over nonzero references, as torch.testing reports it."""
    n = len(reference)
    ref = reference.astype(np.float64)
    diff = np.abs(outputs.astype(np.float64) - ref)
    nonzero = ref != 0
    rel = diff[nonzero] / np.abs(ref[nonzero])
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    top1 = float(np.mean(outputs.reshape(n, -1).argmax(1) == ref.reshape(n, -1).argmax(1)))
    failures = []
    if not np.isfinite(outputs).all():
        failures.append("outputs contain NaN or inf")
    outside = int(np.count_nonzero(~(diff <= atol + rtol * np.abs(ref))))
    if outside:
        failures.append(f"{outside} of {diff.size} logits outside atol={atol:g} rtol={rtol:g}")
    return Metrics(max_abs, max_rel, top1, n, tuple(failures))


def validate_outputs(reference: np.ndarray, runner: Callable[[np.ndarray], np.ndarray],
                     samples: np.ndarray, atol: float, rtol: float, *, label: str = "export",
                     strict: bool = True) -> Metrics:
    """Run `runner` on every sample and compare with `reference` (PyTorch's logits for the same
    samples). With `strict`, a failed check raises ExportError carrying the numbers; otherwise
    the failures are only recorded in the returned Metrics."""
    outputs = run_each(runner, samples)
    if outputs.shape != reference.shape:  # nothing to compare: always an error
        raise ExportError(f"{label} output shape {tuple(outputs.shape)} != PyTorch's "
                          f"{tuple(reference.shape)}")
    metrics = compare(reference, outputs, atol, rtol)
    if strict and not metrics.passed:
        raise ExportError(
            f"{label} does not match PyTorch on {metrics.num_samples} samples: "
            f"{'; '.join(metrics.failures)} (max|diff| {metrics.max_abs_diff:.2e}, "
            f"max rel {metrics.max_rel_diff:.2e}, top-1 agree {metrics.top1_agreement:.0%})"
        )
    return metrics
