"""compress ships the candidate that the printed statistic shows fastest: the speedup over dense
fp32 (median of per-round ratios), not a p50 taken over every run, which load can skew."""

from __future__ import annotations

from edgeprune.jobs.candidates import Candidate, choose, judge


def _candidate(name: str, p50: float, speedup: float, accuracy: float = 0.9) -> Candidate:
    return Candidate(name, "int8", "tflite", f"{name}.tflite", 1000, accuracy,
                     latency_ms={"p50": p50, "p90": p50, "mean": p50},
                     speedup={"value": speedup, "low": speedup, "high": speedup, "rounds": 3})


def test_the_choice_and_its_reason_use_the_same_statistic() -> None:
    dense = _candidate("dense", 1.0, 1.0)
    # under load the pooled p50 says "a" while the interleaved rounds say "b" is faster
    a, b = _candidate("a", 0.20, 4.0), _candidate("b", 0.25, 5.0)
    candidates = [dense, a, b]
    judge(candidates, 0.9, 1.0, None, False)
    choice = choose(candidates, 1.0, None, "estimate")
    assert choice.shipped is b
    assert "5.00x faster" in choice.reason


def test_without_speedups_the_lowest_p50_wins() -> None:
    a, b = _candidate("a", 0.2, 1.0), _candidate("b", 0.3, 1.0)
    a.speedup = b.speedup = None
    judge([a, b], 0.9, 1.0, None, False)
    assert choose([a, b], 1.0, None, "estimate").shipped is a


def test_a_latency_budget_ships_the_fastest_that_meets_it_else_states_the_miss() -> None:
    dense, slow, fast = (_candidate("dense", 1.0, 1.0), _candidate("slow", 0.5, 2.0),
                         _candidate("fast", 0.25, 4.0))
    candidates = [dense, slow, fast]
    judge(candidates, 0.9, 1.0, 0.3, True)  # on the device: p50 is what the budget judges
    choice = choose(candidates, 1.0, 0.3, "measured on the device")
    assert choice.shipped is fast and "meets the 0.3 ms budget" in choice.reason
    judge(candidates, 0.9, 1.0, 0.1, True)
    choice = choose(candidates, 1.0, 0.1, "measured on the device")
    assert choice.shipped is fast and not fast.meets_budget
    assert "misses it by 0.150 ms (0.250 ms)" in choice.reason


def test_without_a_device_the_targets_estimate_decides_not_this_hosts_timings() -> None:
    """On x86, XNNPACK's int8 can run slower than fp32 while the Pi runs it about twice as
    fast: the host's timings are shown but the rpi4 estimate picks the file."""
    dense, int8 = _candidate("dense", 1.0, 1.0), _candidate("int8", 1.7, 0.59)
    for c, estimate in ((dense, 2.0), (int8, 1.0)):
        c.latency_label = "host, 2 threads"
        c.estimate_ms, c.estimate_speedup, c.estimate_label = estimate, 2.0 / estimate, \
            "rpi4 estimate"
    judge([dense, int8], 0.9, 1.0, None, False)
    choice = choose([dense, int8], 1.0, None, "roofline estimate", by_estimate=True)
    assert choice.shipped is int8
    assert "2.00x faster than dense fp32 on the rpi4 estimate, which decided" in choice.reason
    assert "host, 2 threads measured 0.59x" in choice.reason
    # on the device (measured there), the measurement decides
    assert choose([dense, int8], 1.0, None, "measured", by_estimate=False).shipped is dense


def test_the_reason_quotes_the_validation_drop_that_decided_and_the_test_drop_apart() -> None:
    """With a validation split the tolerance judges the validation drop; the reason must not
    put the test drop (reported, never decided on) where the judged one belongs."""
    dense, pruned = _candidate("dense", 1.0, 1.0, 0.94), _candidate("pruned", 0.1, 8.0, 0.925)
    dense.validation_accuracy, pruned.validation_accuracy = 0.934, 0.926
    judge([dense, pruned], 0.94, 1.0, None, False, reference_validation=0.934)
    choice = choose([dense, pruned], 1.0, None, "estimate")
    assert choice.shipped is pruned  # 0.80 on validation, though 1.50 on test
    assert ("within 1 point of dense fp32 on the validation images (top-1 -0.80 points; "
            "-1.50 on the test images") in choice.reason
    pruned.validation_accuracy = 0.91
    judge([pruned], 0.94, 1.0, None, False, reference_validation=0.934)
    nothing = choose([pruned], 1.0, None, "estimate")
    assert nothing.shipped is None
    assert "on the validation images (the closest, pruned int8 tflite, loses 2.40)" in \
        nothing.reason
