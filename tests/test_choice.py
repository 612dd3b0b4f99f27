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
