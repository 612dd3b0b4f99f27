"""The one validator for every exporter: run the exported file on real samples and compare it
with PyTorch (optimum-style). Parity: max abs/rel logit difference and top-1 agreement on the
verification samples; accuracy: top-1 on labelled samples next to PyTorch's. What must pass is
the precision's `Check`; the numbers are always measured and reported.

Reduced precisions are judged with an interval, not a point figure, so that a few images on a
small set do not decide (one image in 80 is 1.25 points against a 1-point tolerance). The
rule: a file fails when the 95% interval of what it loses excludes the tolerance, i.e. it is
worse than allowed beyond sampling noise. With labels, the loss is the paired top-1 drop
against PyTorch on the same images (Newcombe's interval, `edgeprune.stats.paired_drop`), and the
file fails when the interval's lower end exceeds `max_accuracy_drop`; without labels, it fails
when the Wilson interval's upper end of its top-1 agreement lies below `min_agreement`. fp32
keeps exact parity: a flipped decisive sample there is a conversion fault, not noise.
`resolvable_drop(n, tolerance)` says how large a drop n labelled images can catch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeprune.export.base import ExportError
from edgeprune.export.precision import Check
from edgeprune.stats import paired_drop, wilson_interval

VERIFY_SAMPLES = 32
"""Test images every file's logits are compared with PyTorch's on (parity: logit differences
and top-1 agreement); reduced precisions are judged on the labelled evaluation images when
there are any."""
CONFIDENCE = 0.95
"""Confidence of the intervals the reduced-precision checks use."""


@dataclass(frozen=True)
class EvalSet:
    """Labelled samples (float32 inputs, int labels) and PyTorch's top-1 accuracy on them."""

    x: np.ndarray
    y: np.ndarray
    reference_accuracy: float
    reference_correct: np.ndarray | None = None
    """Per image, whether PyTorch's top-1 is right: pairs the file's answers with PyTorch's.
    Without it the file's accuracy interval is compared with `reference_accuracy` alone."""

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Metrics:
    """How closely an exported model reproduces PyTorch.

    Parity figures are over `num_samples` verification samples; `accuracy` and
    `reference_accuracy` (PyTorch's) over `eval_samples` labelled ones, None without labels.
    `failures` lists the checks that did not pass (empty when all did)."""

    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    num_samples: int
    failures: tuple[str, ...] = field(default_factory=tuple)
    accuracy: float | None = None
    reference_accuracy: float | None = None
    eval_samples: int = 0
    drop_interval: tuple[float, float] | None = None
    """95% interval of the points lost against PyTorch on the labelled samples."""

    @property
    def passed(self) -> bool:
        return not self.failures


def run_each(runner: Callable[[np.ndarray], np.ndarray], samples: np.ndarray) -> np.ndarray:
    """Run `runner` on one sample at a time (exported models have a static batch of 1, the
    batch devices run) and stack the outputs into (N, ...)."""
    return np.concatenate([np.asarray(runner(samples[i : i + 1])) for i in range(len(samples))])


def top1(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(len(logits), -1).argmax(1)


def decisive(reference: np.ndarray, check: Check) -> np.ndarray:
    """Samples whose top-1 logit leads the runner-up by more than twice the check's logit
    tolerance, so that outputs within tolerance cannot change the predicted class."""
    ref = reference.reshape(len(reference), -1)
    if ref.shape[1] < 2:
        return np.ones(len(ref), dtype=bool)
    best_two = np.sort(ref, axis=1)[:, -2:]
    return best_two[:, 1] - best_two[:, 0] > 2 * check.bound(ref)[:, 0]


def parity_failures(reference: np.ndarray, outputs: np.ndarray, check: Check) -> list[str]:
    """The parity checks `outputs` fails: non-finite values, logits outside tolerance and
    top-1 disagreement (on decisive samples when a tolerance is set)."""
    failures = []
    if not np.isfinite(outputs).all():
        failures.append("outputs contain NaN or inf")
    ref = reference.astype(np.float64)
    if check.atol is not None:
        flat = ref.reshape(len(ref), -1)
        diff = np.abs(outputs.astype(np.float64).reshape(flat.shape) - flat)
        outside = int(np.count_nonzero(~(diff <= check.bound(flat))))
        if outside:
            failures.append(f"{outside} of {diff.size} logits not {check.describe()}")
    mask = (decisive(ref, check) if check.atol is not None
            else np.ones(len(ref), dtype=bool))
    if mask.any():
        same = int(np.sum(top1(outputs)[mask] == top1(ref)[mask]))
        n = int(mask.sum())
        exact = check.min_agreement >= 1.0
        high = same / n if exact else wilson_interval(same, n, CONFIDENCE)[1]
        if high < check.min_agreement:
            bound = "" if exact else f" (95% interval up to {high:.1%})"
            failures.append(f"top-1 agrees with PyTorch on {same / n:.1%} of {n} "
                            f"samples{bound}, below {check.min_agreement:.0%}")
    return failures


def drop_interval(candidate_correct: np.ndarray, eval_set: EvalSet) -> tuple[float, float]:
    """95% interval of the top-1 points the file loses against PyTorch: paired when the
    set holds PyTorch's per-image answers, else the file's Wilson interval against PyTorch's
    accuracy taken as exact."""
    if eval_set.reference_correct is not None:
        drop = paired_drop(eval_set.reference_correct, candidate_correct, CONFIDENCE)
        return drop.low, drop.high
    low, high = wilson_interval(int(np.sum(candidate_correct)), len(candidate_correct),
                                CONFIDENCE)
    return ((eval_set.reference_accuracy - high) * 100, (eval_set.reference_accuracy - low) * 100)


def accuracy_failures(accuracy: float, reference: float, samples: int, check: Check,
                      interval: tuple[float, float] | None = None) -> list[str]:
    """The accuracy check: the file fails when it loses more than `max_accuracy_drop` points
    against PyTorch beyond noise, i.e. the lower end of `interval` (the drop's interval, in
    points) exceeds the tolerance; without an interval, when the drop itself does."""
    if check.max_accuracy_drop is None:
        return []
    drop = (reference - accuracy) * 100
    low = drop if interval is None else interval[0]
    if low <= check.max_accuracy_drop:
        return []
    within = "" if interval is None else f" (95% interval {interval[0]:.2f} to {interval[1]:.2f})"
    return [f"top-1 {accuracy:.2%} vs PyTorch's {reference:.2%} on {samples} labelled samples: "
            f"{drop:.2f} points lost{within}, more than {check.max_accuracy_drop:g} allowed"]


def resolvable_drop(samples: int, tolerance: float) -> float:
    """The smallest drop, in points, that fails the accuracy check on `samples` labelled
    images when every discordant image is one the file gets wrong: what that many images can
    catch (e.g. 80 images: 7.5 points for a 1-point tolerance; 500: 2.4; 2000: 1.5)."""
    reference = np.ones(samples, dtype=bool)
    for lost in range(samples + 1):
        candidate = np.arange(samples) >= lost
        if paired_drop(reference, candidate, CONFIDENCE).low > tolerance:
            return lost / samples * 100
    return float("inf")


def compare(reference: np.ndarray, outputs: np.ndarray, check: Check) -> Metrics:
    """Parity figures of `outputs` against PyTorch's `reference` and the checks it fails.
    The relative difference is |out - ref| / |ref| over nonzero references, as
    torch.testing reports it."""
    n = len(reference)
    ref = reference.astype(np.float64)
    diff = np.abs(outputs.astype(np.float64) - ref)
    nonzero = ref != 0
    rel = diff[nonzero] / np.abs(ref[nonzero])
    return Metrics(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        max_rel_diff=float(rel.max()) if rel.size else 0.0,
        top1_agreement=float(np.mean(top1(outputs) == top1(ref))), num_samples=n,
        failures=tuple(parity_failures(reference, outputs, check)))


def validate_outputs(reference: np.ndarray, runner: Callable[[np.ndarray], np.ndarray],
                     samples: np.ndarray, check: Check, *, label: str = "export",
                     strict: bool = True, eval_set: EvalSet | None = None) -> Metrics:
    """Run `runner` on every sample and compare with `reference` (PyTorch's logits for the same
    samples); with `eval_set`, also measure top-1 accuracy on its labelled samples. With
    labels, reduced precisions are judged by accuracy instead of the agreement floor. With
    `strict`, a failed check raises ExportError carrying the numbers; otherwise the failures
    are only recorded in the returned Metrics."""
    outputs = run_each(runner, samples)
    if outputs.shape != reference.shape:  # nothing to compare: always an error
        raise ExportError(f"{label} output shape {tuple(outputs.shape)} != PyTorch's "
                          f"{tuple(reference.shape)}")
    labelled = eval_set is not None and len(eval_set) > 0
    parity_check = check
    if labelled and check.atol is None:
        parity_check = Check(None, check.rtol, 0.0, check.max_accuracy_drop)
    metrics = compare(reference, outputs, parity_check)
    if labelled:
        correct = top1(run_each(runner, eval_set.x)) == eval_set.y
        accuracy = float(np.mean(correct))
        interval = drop_interval(correct, eval_set)
        failures = metrics.failures + tuple(accuracy_failures(
            accuracy, eval_set.reference_accuracy, len(eval_set), check, interval))
        metrics = Metrics(metrics.max_abs_diff, metrics.max_rel_diff, metrics.top1_agreement,
                          metrics.num_samples, failures, accuracy,
                          eval_set.reference_accuracy, len(eval_set), interval)
    if strict and not metrics.passed:
        raise ExportError(f"{label} failed verification: {'; '.join(metrics.failures)} "
                          f"({figures(metrics)})")
    return metrics


def figures(metrics: Metrics) -> str:
    """The parity and accuracy numbers in one short phrase, for messages."""
    text = (f"max|diff| {metrics.max_abs_diff:.2e}, max rel {metrics.max_rel_diff:.2e}, "
            f"top-1 agree {metrics.top1_agreement:.1%} on {metrics.num_samples}")
    if metrics.accuracy is not None:
        text += (f", top-1 {metrics.accuracy:.2%} vs PyTorch {metrics.reference_accuracy:.2%} "
                 f"on {metrics.eval_samples}")
    return text
