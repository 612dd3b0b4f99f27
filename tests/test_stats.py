"""Paired accuracy comparison: Newcombe's interval for the drop, checked against known values,
a paired bootstrap, and the properties an interval must have."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprune.stats import PairedDrop, paired_drop, wilson_interval


def table(both: int, ref_only: int, cand_only: int, neither: int) -> tuple[np.ndarray, ...]:
    """Per-image correctness of a reference and a candidate with these paired counts."""
    ref = np.array([1] * both + [1] * ref_only + [0] * cand_only + [0] * neither, dtype=bool)
    cand = np.array([1] * both + [0] * ref_only + [1] * cand_only + [0] * neither, dtype=bool)
    return ref, cand


def test_wilson_interval_matches_the_known_value():
    low, high = wilson_interval(81, 263)  # Newcombe (1998), single proportion example
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)


def test_wilson_interval_stays_inside_zero_and_one():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1


@pytest.mark.parametrize(("successes", "n", "confidence"), [(1, 0, 0.95), (-1, 5, 0.95),
                                                              (6, 5, 0.95), (1, 5, 1.0)])
def test_wilson_interval_rejects_impossible_input(successes, n, confidence):
    with pytest.raises(ValueError):
        wilson_interval(successes, n, confidence)


def test_identical_models_drop_nothing_with_a_narrow_interval():
    correct = np.random.default_rng(0).random(10_000) < 0.9
    drop = paired_drop(correct, correct)
    assert drop.points == 0 and drop.discordant == (0, 0) and drop.n == 10_000
    assert drop.low <= 0 <= drop.high
    assert drop.high - drop.low < 0.2


def test_identical_perfect_models_still_get_an_interval_containing_zero():
    drop = paired_drop(np.ones(50, bool), np.ones(50, bool))
    assert drop.points == 0 and drop.low < 0 < drop.high


def test_counts_and_sign():
    drop = paired_drop(*table(50, 7, 3, 40))
    assert drop.discordant == (7, 3) and drop.n == 100
    assert drop.points == pytest.approx(4.0)
    better = paired_drop(*table(50, 3, 7, 40))
    assert better.points == pytest.approx(-4.0)
    assert better.low == pytest.approx(-drop.high) and better.high == pytest.approx(-drop.low)


def test_pinned_value_of_a_small_table():
    """Altman et al., Statistics with Confidence (2000), Table 6.2: 14 both, 5 one only, 22
    neither. The values are this implementation's, pinned against drift."""
    drop = paired_drop(*table(14, 5, 0, 22))
    assert drop.points == pytest.approx(12.195, abs=1e-3)
    assert drop.low == pytest.approx(1.148, abs=1e-3)
    assert drop.high == pytest.approx(22.649, abs=1e-3)


def test_interval_agrees_with_a_paired_bootstrap():
    """Resampling images with replacement is resampling the four paired cells from a
    multinomial; 20000 resamples give percentile bounds within 0.3 points."""
    counts = (1800, 150, 90, 400)
    drop = paired_drop(*table(*counts))
    n = sum(counts)
    resampled = np.random.default_rng(0).multinomial(n, np.array(counts) / n, size=20_000)
    drops = (resampled[:, 1] - resampled[:, 2]) / n * 100
    low, high = np.percentile(drops, [2.5, 97.5])
    assert drop.low == pytest.approx(low, abs=0.3) and drop.high == pytest.approx(high, abs=0.3)


def test_interval_shrinks_as_images_grow():
    widths = []
    for k in (1, 4, 16):
        drop = paired_drop(*table(80 * k, 8 * k, 4 * k, 8 * k))
        assert drop.points == pytest.approx(4.0)
        widths.append(drop.high - drop.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(widths[0] / 2, rel=0.15)  # about 1/sqrt(n)


def test_higher_confidence_gives_a_wider_interval():
    ref, cand = table(80, 8, 4, 8)
    narrow, wide = paired_drop(ref, cand, 0.90), paired_drop(ref, cand, 0.99)
    assert wide.low < narrow.low and wide.high > narrow.high
    assert narrow.method.endswith("90%") and wide.method.endswith("99%")


def test_a_much_worse_candidate_has_an_interval_excluding_zero():
    drop = paired_drop(*table(600, 250, 10, 140))
    assert drop.points == pytest.approx(24.0)
    assert 0 < drop.low < drop.points < drop.high


def test_accepts_zero_one_integers_like_booleans():
    ref, cand = table(30, 5, 2, 10)
    assert paired_drop(ref.astype(int), cand.astype(np.uint8)) == paired_drop(ref, cand)


@pytest.mark.parametrize(("ref", "cand", "message"), [
    ([1, 0, 1], [1, 0], "same images"),
    ([], [], "at least one image"),
    ([1, 2], [1, 0], "booleans or 0/1"),
    ([[1, 0]], [[1, 0]], "one-dimensional"),
])
def test_rejects_unusable_input(ref, cand, message):
    with pytest.raises(ValueError, match=message):
        paired_drop(ref, cand)


def test_to_dict_is_json_ready():
    drop = paired_drop(*table(50, 7, 3, 40))
    record = json.loads(json.dumps(drop.to_dict()))
    assert record["discordant"] == [7, 3] and record["n"] == 100
    assert set(record) == {"points", "low", "high", "n", "discordant", "method"}
    assert "Newcombe (1998)" in record["method"] and record["method"].endswith("95%")
    assert isinstance(drop, PairedDrop)
