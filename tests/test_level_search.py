"""The level-search policy of `edgeprune compress`: which level next, when to stop, which wins.

Every trial here is simulated by an accuracy-drop curve, so the tests run in milliseconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeprune.pruning import level_search
from edgeprune.pruning.level_search import (
    SearchSettings,
    SearchState,
    Trial,
    bracket,
    next_level,
    parent_of,
    run_search,
    stop_reason,
)

TOLERANCE = 1.0
DENSE_MACS = 29_400_000


def make_trial(level: float, parent: int | None, drop: float, *, cost: float = 1.0,
               wall_s: float = 10.0, latency_ms: float | None = None, note: str = "") -> Trial:
    """A trial as a driver would record it, accepted when the drop is within TOLERANCE."""
    return Trial(level=level, achieved=level, macs=round(DENSE_MACS * (1 - level)),
                 drop_points=drop, accepted=drop <= TOLERANCE, cost=cost, wall_s=wall_s,
                 latency_ms=latency_ms, parent=parent, note=note)


def curve(drop: Callable[[float], float], cost: float = 1.0, wall_s: float = 10.0,
          calls: list[tuple[float, int | None]] | None = None,
          fail_after: int | None = None) -> Callable[[float, int | None], Trial]:
    """An evaluate() whose accuracy drop at a level is drop(level); records its calls and, with
    fail_after, raises on the call after that many (a killed run)."""
    seen = calls if calls is not None else []

    def evaluate(level: float, parent: int | None) -> Trial:
        if fail_after is not None and len(seen) >= fail_after:
            raise KeyboardInterrupt("killed")
        seen.append((level, parent))
        return make_trial(level, parent, drop(level), cost=cost, wall_s=wall_s)

    return evaluate


def monotone(level: float) -> float:
    """Drop grows as 3 * level^2: within 1 point up to sqrt(1/3) = 0.57735."""
    return 3.0 * level * level


THRESHOLD = math.sqrt(1.0 / 3.0)


def levels(state: SearchState) -> list[float]:
    return [t.level for t in state.trials]


def test_monotone_curve_finds_the_threshold_in_few_trials() -> None:
    settings = SearchSettings()
    state = run_search(curve(monotone), settings)
    assert levels(state) == [0.5, 0.7, 0.6, 0.55, 0.575, 0.5875]
    assert [t.accepted for t in state.trials] == [True, False, False, True, True, False]
    best = state.best()
    assert best is not None and best.level == 0.575
    assert 0.0 <= THRESHOLD - best.level < settings.min_step
    assert state.stopped == ("converged: 0.575 accepted, 0.5875 rejected "
                             "(bracket 0.0125 narrower than min_step 0.025)")
    assert state.spent() == 6.0
    # each trial is pruned from the deepest accepted model below it
    assert [t.parent for t in state.trials] == [None, 0, 0, 0, 3, 4]


def test_step_halves_on_each_rejection() -> None:
    state = run_search(curve(monotone), SearchSettings())
    lo_hi = [bracket(SearchState(state.trials[:n])) for n in range(1, len(state.trials) + 1)]
    widths = [round(hi - lo, 4) for lo, hi in lo_hi if hi is not None]
    assert widths == [0.2, 0.1, 0.05, 0.025, 0.0125]


def test_non_monotone_curve_ignores_a_rejected_dip_below_lo() -> None:
    def dip(level: float) -> float:  # a bad patch at 0.35-0.45, fine again up to 0.72
        return 2.0 if 0.35 <= level <= 0.45 else (0.5 if level <= 0.72 else 1.5)

    # trials of an earlier coarse run (other settings): 0.4 was rejected below an accepted 0.6
    seeded = SearchState([make_trial(0.2, None, dip(0.2)), make_trial(0.4, 0, dip(0.4)),
                          make_trial(0.6, 0, dip(0.6))])
    assert bracket(seeded) == (0.6, None)
    assert next_level(seeded, SearchSettings()) == 0.8
    calls: list[tuple[float, int | None]] = []
    # the seeded trials' 3 epochs count against the budget too
    state = run_search(curve(dip, calls=calls), SearchSettings(budget=10.0), seeded)
    assert calls == [(0.8, 2), (0.7, 2), (0.75, 4), (0.725, 4), (0.7125, 4)]
    assert state.stopped is not None and state.stopped.startswith("converged: 0.7125 accepted")
    best = state.best()
    assert best is not None and best.level == 0.7125
    assert bracket(state) == (0.7125, 0.725)


def test_rejected_trial_at_the_accepted_level_does_not_close_the_bracket() -> None:
    # int8 PTQ failed at 0.7, int8 QAT of the same pruned model passed: 0.7 counts as accepted
    state = SearchState([make_trial(0.5, None, 0.2), make_trial(0.7, 0, 1.3, note="int8 PTQ"),
                         make_trial(0.7, 0, 0.8, note="int8 QAT")])
    assert bracket(state) == (0.7, None)
    assert next_level(state, SearchSettings()) == 0.9
    assert parent_of(state, 0.9) == 2


def test_budget_running_out_mid_search_stops_with_best_so_far() -> None:
    settings = SearchSettings(budget=8.0)
    state = run_search(curve(monotone, cost=3.0), settings)
    assert levels(state) == [0.5, 0.7, 0.6]
    assert state.spent() == 9.0
    assert state.stopped == "budget of 8 epochs spent (9 used)"
    best = state.best()
    assert best is not None and best.level == 0.5
    # a resumed search with a larger budget goes on from there
    more = run_search(curve(monotone, cost=3.0), SearchSettings(budget=20.0), state)
    assert levels(more)[:4] == [0.5, 0.7, 0.6, 0.55]


def test_wall_time_guard_stops_the_search() -> None:
    state = run_search(curve(monotone, wall_s=40.0), SearchSettings(wall_s=100.0))
    assert levels(state) == [0.5, 0.7, 0.6]
    assert state.stopped == "wall-time guard of 100 s reached (120 s used)"


def test_no_level_within_the_tolerance() -> None:
    state = run_search(curve(lambda level: 2.0), SearchSettings())
    assert levels(state) == [0.5, 0.25, 0.125, 0.0625, 0.0312, 0.0156]
    assert state.best() is None
    assert state.stopped == "no level within the tolerance down to 0.0156"
    assert [t.parent for t in state.trials] == [None] * 6


def test_always_accepted_stops_at_max_level() -> None:
    state = run_search(curve(lambda level: 0.1), SearchSettings())
    assert levels(state) == [0.5, 0.7, 0.9]
    assert state.stopped == "deepest level reached: 0.9 accepted (max_level)"
    best = state.best()
    assert best is not None and best.level == 0.9
    # the step is capped at max_level rather than overshooting it
    capped = run_search(curve(lambda level: 0.1), SearchSettings(start=0.6, step=0.25))
    assert levels(capped) == [0.6, 0.85, 0.9]


def test_proposal_already_tried_stops_instead_of_looping() -> None:
    # a min_step finer than the 4-decimal rounding: the midpoint lands on a tried level
    state = run_search(curve(monotone), SearchSettings(min_step=1e-6, budget=100.0))
    assert state.stopped is not None and "already tried" in state.stopped
    assert state.stopped == "level 0.5774 was already tried; stopping (no loop)"
    assert bracket(state) == (0.5773, 0.5774)  # THRESHOLD = 0.57735 lies inside
    assert len(set(levels(state))) == len(state.trials) == 13


def test_resume_after_a_kill_repeats_no_trial(tmp_path: Path) -> None:
    settings = SearchSettings()
    uninterrupted = run_search(curve(monotone), settings)

    saved = tmp_path / "search.json"

    def save(state: SearchState, trial: Trial) -> None:
        saved.write_text(json.dumps(state.to_dict()))

    with pytest.raises(KeyboardInterrupt):
        run_search(curve(monotone, fail_after=3), settings, on_trial=save)
    resumed_from = SearchState.from_dict(json.loads(saved.read_text()))
    assert levels(resumed_from) == [0.5, 0.7, 0.6]

    calls: list[tuple[float, int | None]] = []
    final = run_search(curve(monotone, calls=calls), settings, resumed_from, on_trial=save)
    assert calls == [(0.55, 0), (0.575, 3), (0.5875, 4)]
    assert final.to_dict() == uninterrupted.to_dict()
    assert SearchState.from_dict(json.loads(saved.read_text())).trials == uninterrupted.trials


def test_state_round_trips_through_json_exactly() -> None:
    state = SearchState([make_trial(0.5, None, 0.31, latency_ms=1.25, note="int8 PTQ"),
                         Trial(level=0.70004, achieved=0.6873, macs=9_200_000.0,
                               drop_points=1.2, accepted=False, cost=2, wall_s=31.5)],
                        stopped="budget of 3 epochs spent (3 used)")
    assert state.trials[1].level == 0.7 and state.trials[1].cost == 2.0
    assert isinstance(state.trials[1].macs, int)
    data = json.loads(json.dumps(state.to_dict()))
    back = SearchState.from_dict(data)
    assert back == state
    assert back.to_dict() == state.to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        Trial.from_dict({**state.trials[0].to_dict(), "levle": 0.3})


def test_parent_of_gives_the_deepest_accepted_below() -> None:
    state = SearchState([make_trial(0.5, None, 0.5), make_trial(0.7, 0, 2.0),
                         make_trial(0.6, 0, 0.9), make_trial(0.65, 2, 1.4)])
    assert parent_of(state, 0.625) == 2
    assert parent_of(state, 0.55) == 0
    assert parent_of(state, 0.9) == 2  # rejected 0.65 and 0.7 are never parents
    assert parent_of(state, 0.5) is None  # strictly below: not itself
    assert parent_of(state, 0.3) is None
    assert parent_of(SearchState(), 0.5) is None


def test_best_prefers_lowest_latency_when_every_accepted_trial_has_one() -> None:
    trials = [make_trial(0.5, None, 0.3, latency_ms=2.0), make_trial(0.55, 0, 0.6, latency_ms=1.5),
              make_trial(0.6, 1, 0.9, latency_ms=1.8), make_trial(0.7, 2, 1.6, latency_ms=0.9)]
    best = SearchState(trials).best()
    assert best is not None and (best.level, best.latency_ms) == (0.55, 1.5)
    # a single accepted trial without a latency: fall back to the deepest reduction
    trials[0].latency_ms = None
    best = SearchState(trials).best()
    assert best is not None and best.level == 0.6


def test_best_between_trials_of_the_same_cut_takes_the_smaller_drop() -> None:
    """The same cut reached twice (a deeper level whose pruning changed nothing, fine-tuned
    again from its parent): equal latency and reduction, so the one that lost less wins."""
    trials = [make_trial(0.5, None, 0.84, latency_ms=0.1), make_trial(0.6, 0, 0.84, cost=0.0,
                                                                     latency_ms=0.1),
              make_trial(0.7, 1, 2.08, latency_ms=0.05), make_trial(0.625, 1, 0.56, latency_ms=0.1)]
    for t in (trials[0], trials[1], trials[3]):  # channel rounding: all cut 62.6%
        t.achieved, t.macs = 0.626, trials[0].macs
    best = SearchState(trials).best()
    assert best is trials[3]


def test_first_level_and_no_reason_while_running() -> None:
    settings = SearchSettings(start=0.4)
    assert next_level(SearchState(), settings) == 0.4
    assert stop_reason(SearchState(), settings) is None
    one = SearchState([make_trial(0.4, None, 0.2)])
    assert next_level(one, settings) == 0.6 and stop_reason(one, settings) is None
    assert one.stopped is None  # next_level and stop_reason set nothing


@pytest.mark.parametrize("bad", [{"start": 0.0}, {"start": 0.95}, {"max_level": 0.99},
                                 {"step": 0.0}, {"min_step": -0.1}, {"budget": 0.0},
                                 {"wall_s": 0.0}])
def test_settings_out_of_range_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="level search settings"):
        SearchSettings(**bad)


def test_evaluate_must_run_the_level_it_was_asked_for() -> None:
    with pytest.raises(ValueError, match="asked for level 0.5 but ran 0.45"):
        run_search(lambda level, parent: make_trial(0.45, parent, 0.1), SearchSettings())


def test_module_imports_only_the_standard_library() -> None:
    path = Path(level_search.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('level_search', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['level_search'] = module\n"
        "spec.loader.exec_module(module)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)"
        " - {'level_search', '__main__'})\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_compress_options_set_the_search_budget_and_its_wall_time_guard() -> None:
    from edgeprune.jobs.config import CompressConfig
    from edgeprune.jobs.policy import search_settings, trial_epochs

    cfg = CompressConfig(search_minutes=2.5)
    settings = search_settings(cfg, 2000)
    assert settings.wall_s == 150.0 and trial_epochs(cfg, 2000, from_dense=True) == 60
    assert settings.budget == 4 * 60  # the embedded subset: every trial at the 60-epoch cap
    assert search_settings(CompressConfig(search_budget=30), 2000).wall_s is None
    assert search_settings(CompressConfig(search_budget=30), 2000).budget == 30


def test_a_trial_cut_from_the_dense_model_fine_tunes_longer_than_one_cut_from_a_trial() -> None:
    """On full Fashion-MNIST a cut from the dense model fine-tunes like a pinned run (6
    epochs), a step from an accepted trial a third of it, and the default budget is two of
    each; --epochs sets every trial's length."""
    from edgeprune.jobs.config import CompressConfig
    from edgeprune.jobs.policy import finetune_epochs, search_settings, trial_epochs

    cfg = CompressConfig()
    assert trial_epochs(cfg, 60_000, from_dense=True) == finetune_epochs(cfg, 60_000) == 6
    assert trial_epochs(cfg, 60_000, from_dense=False) == 2
    assert search_settings(cfg, 60_000).budget == 2 * 6 + 2 * 2
    pinned = CompressConfig(epochs=3)
    assert trial_epochs(pinned, 60_000, True) == trial_epochs(pinned, 60_000, False) == 3
    assert search_settings(pinned, 60_000).budget == 4 * 3
    assert search_settings(CompressConfig(epochs=0), 60_000).budget == float("inf")


def test_the_default_budget_steps_deeper_from_a_fallback_when_the_first_level_fails() -> None:
    """Level 50% outside the tolerance costs a cut from the dense model, and so does the
    shallower 25% tried next; the default budget still lets the search step deeper from 25%
    (as it did when every trial cost the same), instead of ending at the fallback."""
    from edgeprune.jobs.config import CompressConfig
    from edgeprune.jobs.policy import search_settings, trial_epochs

    cfg, calls = CompressConfig(), []

    def evaluate(level: float, parent: int | None) -> Trial:
        calls.append((level, parent))
        return make_trial(level, parent, 0.5 if level < 0.45 else 2.0,
                          cost=trial_epochs(cfg, 60_000, from_dense=parent is None))

    state = run_search(evaluate, search_settings(cfg, 60_000))
    assert calls == [(0.5, None), (0.25, None), (0.375, 1), (0.4375, 2)]
    assert state.best().level == 0.4375 and state.stopped.startswith("budget")

