"""Paired comparison of two classifiers scored on the same images: how many accuracy points the
candidate (a pruned or exported model) loses against the reference, with a 95% interval.

The two accuracies come from the same images, so they are correlated, and an interval for
independent samples would be far too wide. The choice: Newcombe's method 10 ("Improved
confidence intervals for the difference between binomial proportions based on paired data",
Statistics in Medicine 17, 1998), which combines the Wilson score interval of each accuracy
with the phi correlation of the paired 2x2 table. Newcombe found it close to nominal coverage,
never outside [-1, 1] and never degenerate (unlike the Wald interval, which collapses to a
point when the models disagree on no image). As in the paper and in the implementations of
Fagerland, Lydersen and Laake (2017), phi is taken with its correction: N/2 is subtracted from
a positive AD - BC, and phi is 0 when that leaves nothing, or when a margin is empty.

numpy and the standard library only: this module sits in the lowest layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

METHOD = "Newcombe (1998) hybrid score interval for paired proportions (method 10)"


@dataclass(frozen=True)
class PairedDrop:
    """The candidate's accuracy drop against the reference on the same `n` images, in points
    (percent of the images); positive when the candidate is worse."""

    points: float
    """(reference accuracy - candidate accuracy) * 100."""
    low: float
    """Lower end of the interval of the drop, in points."""
    high: float
    """Upper end of the interval of the drop, in points."""
    n: int
    """Images both models were scored on."""
    discordant: tuple[int, int]
    """(reference right and candidate wrong, reference wrong and candidate right)."""
    method: str
    """How the interval was computed, with its confidence."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (`discordant` as a list)."""
        return {**asdict(self), "discordant": list(self.discordant)}


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (without continuity correction) of the proportion
    `successes / n`; it stays inside [0, 1] and is never empty, even at 0 or n successes."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = _z(confidence)
    z2 = z * z
    centre = (successes + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(successes * (n - successes) / n + z2 / 4.0)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, no rounding dust
    return low, 1.0 if successes == n else min(1.0, centre + half)


def _binary(values: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans or 0/1 values")
    return a.astype(bool)


def _phi(a: int, b: int, c: int, d: int) -> float:
    """Newcombe's corrected phi of the paired table [[a, b], [c, d]]."""
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return 0.0
    n, cross = a + b + c + d, a * d - b * c
    if cross > n / 2.0:
        return (cross - n / 2.0) / math.sqrt(margins)
    return cross / math.sqrt(margins) if cross < 0 else 0.0


def paired_drop(reference_correct: ArrayLike, candidate_correct: ArrayLike,
                confidence: float = 0.95) -> PairedDrop:
    """How much accuracy the candidate loses against the reference on the same images, with
    Newcombe's paired interval; each input says, per image, whether that model was right.
    ValueError when the inputs differ in length, are empty or are not boolean."""
    ref = _binary(reference_correct, "reference_correct")
    cand = _binary(candidate_correct, "candidate_correct")
    if len(ref) != len(cand):
        raise ValueError(f"the two models were scored on {len(ref)} and {len(cand)} images; "
                         "a paired comparison needs the same images")
    if len(ref) == 0:
        raise ValueError("a paired comparison needs at least one image")
    n = len(ref)
    a, b = int(np.sum(ref & cand)), int(np.sum(ref & ~cand))
    c, d = int(np.sum(~ref & cand)), int(np.sum(~ref & ~cand))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    phi = _phi(a, b, c, d)
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    drop = p1 - p2
    return PairedDrop(points=drop * 100.0, low=max(-1.0, drop - below) * 100.0,
                      high=min(1.0, drop + above) * 100.0, n=n, discordant=(b, c),
                      method=f"{METHOD}, {confidence * 100:g}%")
