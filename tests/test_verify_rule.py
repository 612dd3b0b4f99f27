"""The rule reduced-precision files are verified by: fail only when the 95% interval of what
the file loses excludes the tolerance (export/validate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.export.precision import DEFAULT_CHECKS, Check
from edgeprune.export.validate import (
    EvalSet,
    accuracy_failures,
    drop_interval,
    parity_failures,
    resolvable_drop,
)

INT8 = Check(atol=None, rtol=0.0, min_agreement=0.90, max_accuracy_drop=1.0)


def judged(n: int, lost: int, gained: int = 0, paired: bool = True) -> list[str]:
    """Failures of a file that gets `lost` of PyTorch's right answers wrong and `gained` of
    its wrong ones right, on `n` labelled images where PyTorch is right on all but `gained`."""
    reference = np.ones(n, dtype=bool)
    reference[n - gained:] = False
    candidate = reference.copy()
    candidate[:lost] = False
    candidate[n - gained:] = True
    eval_set = EvalSet(np.zeros((n, 1)), np.zeros(n, dtype=int), float(reference.mean()),
                       reference if paired else None)
    interval = drop_interval(candidate, eval_set)
    return accuracy_failures(float(candidate.mean()), float(reference.mean()), n, INT8,
                             interval)


def test_one_image_in_80_is_noise_not_a_failure() -> None:
    assert judged(80, lost=1) == []  # 1.25 points > 1 allowed, but the interval reaches -3.45


def test_a_real_ten_percent_loss_fails() -> None:
    failures = judged(80, lost=8)
    assert len(failures) == 1 and "10.00 points lost (95% interval 3.33 to" in failures[0]
    assert judged(2000, lost=200) and judged(2000, lost=40)  # 2 points on 2000 images


def test_a_drop_within_tolerance_passes_on_many_images() -> None:
    assert judged(2000, lost=20) == []  # exactly 1 point
    assert judged(2000, lost=25, gained=10) == []  # 0.75 points net


def test_without_pytorchs_answers_the_interval_is_the_files_own() -> None:
    assert judged(80, lost=1, paired=False) == []
    assert judged(80, lost=16, paired=False)  # 20 points: Wilson upper end still 89.5%


def test_resolvable_drop_shrinks_with_more_images() -> None:
    figures = [resolvable_drop(n, 1.0) for n in (80, 500, 2000)]
    assert figures == pytest.approx([7.5, 2.4, 1.5])


def test_agreement_floor_uses_the_wilson_upper_end() -> None:
    reference = np.eye(2)[np.zeros(100, dtype=int)]  # PyTorch says class 0 on 100 samples

    def outputs(flipped: int) -> np.ndarray:
        out = reference.copy()
        out[:flipped] = out[:flipped, ::-1]
        return out

    assert parity_failures(reference, outputs(12), INT8) == []  # 88%, interval up to 93%
    failures = parity_failures(reference, outputs(20), INT8)
    assert failures and "80.0% of 100 samples (95% interval up to 86.7%)" in failures[0]
    exact = Check(atol=None, rtol=0.0, min_agreement=1.0, max_accuracy_drop=None)
    assert parity_failures(reference, outputs(1), exact)  # fp32: one flip is a fault


# ---------------------------------------------------------------- fp32: logits within a bound

FP32 = DEFAULT_CHECKS["fp32"]


def test_fp32_bound_scales_with_the_samples_largest_logit() -> None:
    reference = np.array([[7.57, 0.02, -0.3], [0.04, 0.01, -0.02]])
    bound = FP32.bound(reference)
    assert bound.shape == (2, 1)
    assert bound[:, 0] == pytest.approx([1e-4 + 1e-3 * 7.57, 1e-4 + 1e-3 * 0.04])


def test_fp32_accepts_float32_rounding_of_a_deep_network() -> None:
    # EfficientNet-B5's TFLite file, measured: up to 1.9e-3 off, its largest logit 7.57,
    # where PyTorch's own float32 logits are up to 8.6e-4 from float64. Here that error sits
    # on one sample; it is the sample's, so the small logits of that sample may carry it too.
    reference = np.array([[7.57, 0.02, -0.3], [0.04, 0.01, -0.02]])
    outputs = reference + np.array([[1.9e-3, -1.9e-3, 1.0e-3], [5e-5, -5e-5, 0.0]])
    assert parity_failures(reference, outputs, FP32) == []


def test_fp32_fails_a_conversion_fault_that_keeps_the_class() -> None:
    reference = np.array([[7.57, 0.02, -0.3], [0.04, 0.01, -0.02]])
    shifted = reference.copy()
    shifted[0, 2] += 0.01 * 7.57  # 1% of the scale: a wrong constant, not rounding
    failures = parity_failures(reference, shifted, FP32)
    assert failures == ["1 of 6 logits not within 0.0001 + 0.001 x the sample's largest "
                        "abs(logit)"]
    near_zero = reference.copy()
    near_zero[1, 1] += 3e-4  # sample 1's bound is 1.4e-4: its small scale keeps it tight
    assert parity_failures(reference, near_zero, FP32)


def test_fp32_class_flip_fails_unless_the_margin_is_within_the_bound() -> None:
    reference = np.array([[2.0, 0.0], [1.0, 1.0005], [0.0, 3.0]])  # sample 1: a near-tie
    flipped = reference.copy()
    flipped[1] = [1.0005, 1.0]  # within 1e-4 + 1e-3 x 1.0005 of PyTorch's: rounding
    assert parity_failures(reference, flipped, FP32) == []
    swapped = reference.copy()
    swapped[0] = [0.0, 2.0]
    assert any("top-1 agrees with PyTorch on 50.0% of 2 samples" in f
               for f in parity_failures(reference, swapped, FP32))
