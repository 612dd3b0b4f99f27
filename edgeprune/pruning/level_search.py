"""How deep `edgeprune compress` cuts: the policy that picks the next pruning level (a FLOPs
reduction) to try, decides when to stop and which trial wins. A driver elsewhere runs each trial
(prune, fine-tune, export, judge the shipped file on a validation split); this module only sees
the trials' figures, so it imports nothing but the standard library and is cheap to test.

The rule follows NNCF's accuracy-aware training (`AdaptiveCompressionTrainingLoop`, documented in
NNCF's `AdaptiveCompressionLevelTraining.md`): the compression rate steps up by
`initial_compression_rate_step` while the accuracy budget holds, the step is multiplied by
`compression_rate_step_reduction_factor` (0.5) each time the budget is crossed, the loop ends
once the step is below `minimal_compression_rate_step` (0.025) or `maximal_total_epochs` are
spent, and the highest rate within the budget is returned. NNCF moves the rate of one model
that keeps training; edgeprune's trials are separate runs, so the same search is written as a
bisection on a bracket:

- lo = the level of the deepest accepted trial (0.0 when none is accepted); hi = the smallest
  level of a rejected trial above lo (None when there is none).
- No trial yet: try `start`.
- hi is None: try lo + `step`, capped at `max_level`; over when lo already is `max_level`.
- hi is set: try (lo + hi) / 2 (the step halves on each rejection); over when hi - lo is
  narrower than `min_step`.
- Before any of that: over when the trials' costs reach `budget` or their wall times the
  optional `wall_s` guard; after it, over when the proposal was already tried (against loops).

In a search run by `run_search` alone every rejected trial stays above lo; a rejected trial
below lo (a non-monotone accuracy curve seen in trials recorded under other settings, or added
by the driver) is ignored by the bracket, and a rejected trial at lo's own level (int8 PTQ
failed, QAT passed at the same level) does not close it. `SearchState.best` still picks among
all accepted trials. Levels are rounded to 4 decimals so comparisons and JSON are stable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DECIMALS = 4
"""Levels are rounded to this many decimals (a 0.01% FLOPs step is finer than any rounding)."""

_SAME = 1e-6
"""Two levels closer than this are the same level (proposals against tried levels)."""

_EPS = 1e-9
"""Slack on comparisons of levels and widths, so float sums do not flip a decision."""

MAX_LEVEL = 0.95
"""No search may ask for a deeper FLOPs reduction than this."""


def round_level(level: float) -> float:
    """A level as the search stores and compares it: rounded to `DECIMALS` decimals."""
    return round(float(level), DECIMALS)


@dataclass(frozen=True)
class SearchSettings:
    """Where the level search starts, how it steps, when it stops (levels are FLOPs reductions)."""

    start: float = 0.5
    """First level tried."""
    step: float = 0.2
    """How far each accepted level steps up while nothing above it failed."""
    min_step: float = 0.025
    """Stop once the bracket (deepest accepted, shallowest rejected above it) is narrower."""
    max_level: float = 0.9
    """Never propose deeper."""
    budget: float = 8.0
    """Cost units (fine-tuning epochs) the search may spend in all."""
    wall_s: float | None = None
    """Optional wall-time guard: stop once the trials' wall times add up to this."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.max_level <= MAX_LEVEL:
            problems.append(f"max_level {self.max_level:g} is not in (0, {MAX_LEVEL:g}]")
        if not 0.0 < self.start <= self.max_level:
            problems.append(f"start {self.start:g} is not in (0, max_level {self.max_level:g}]")
        if not self.step > 0.0:
            problems.append(f"step {self.step:g} is not positive")
        if not self.min_step > 0.0:
            problems.append(f"min_step {self.min_step:g} is not positive")
        if not self.budget > 0.0:
            problems.append(f"budget {self.budget:g} is not positive")
        if self.wall_s is not None and not self.wall_s > 0.0:
            problems.append(f"wall_s {self.wall_s:g} is not positive")
        if problems:
            raise ValueError("level search settings: " + "; ".join(problems))


@dataclass
class Trial:
    """One pruning level tried by the driver, with the figures the policy judges it by."""

    level: float
    """The FLOPs reduction asked for (rounded to `DECIMALS`)."""
    achieved: float
    """The reduction pruning reached (channel rounding makes it differ from `level`)."""
    macs: int
    drop_points: float
    """Validation accuracy drop of the judged file, in points against the dense reference."""
    accepted: bool
    """Within the tolerance (and whatever else the driver demands)."""
    cost: float
    """Fine-tuning epochs spent on this trial."""
    wall_s: float
    latency_ms: float | None = None
    """The judged file's latency (estimate or device), when known."""
    parent: int | None = None
    """Index of the trial whose model this one was pruned from (None: the dense model)."""
    note: str = ""
    """Free text, e.g. "int8 PTQ", "int8 QAT"."""
    drop_bound: float | None = None
    """The upper confidence bound of that drop when the driver judged by it (None: the
    point estimate was judged)."""

    def __post_init__(self) -> None:
        self.level = round_level(self.level)
        self.achieved = float(self.achieved)
        self.macs = int(self.macs)
        self.drop_points = float(self.drop_points)
        self.accepted = bool(self.accepted)
        self.cost = float(self.cost)
        self.wall_s = float(self.wall_s)
        if self.latency_ms is not None:
            self.latency_ms = float(self.latency_ms)
        if self.drop_bound is not None:
            self.drop_bound = float(self.drop_bound)

    def to_dict(self) -> dict[str, Any]:
        """The trial as JSON-ready data (`from_dict` reads it back to an equal trial)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """A trial from `to_dict`'s data; unknown keys are refused (not a trial record)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"not a level-search trial: unknown keys {unknown}")
        return cls(**data)


@dataclass
class SearchState:
    """The trials so far, in the order they ran, and why the search ended (None while it runs).

    This is what the driver saves after each trial, so that a killed search resumes where it was.
    """

    trials: list[Trial] = field(default_factory=list)
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-ready data (`from_dict` reads it back to an equal state)."""
        return {"trials": [t.to_dict() for t in self.trials], "stopped": self.stopped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchState:
        """A state from `to_dict`'s data."""
        unknown = sorted(set(data) - {"trials", "stopped"})
        if unknown:
            raise ValueError(f"not a level-search state: unknown keys {unknown}")
        trials = [Trial.from_dict(t) for t in data.get("trials", [])]
        return cls(trials=trials, stopped=data.get("stopped"))

    def best(self) -> Trial | None:
        """The winning accepted trial: the lowest `latency_ms` when every accepted trial has one,
        else the largest `achieved` reduction; between trials as fast and as deep (the same
        cut, fine-tuned along another path), the smaller drop; None when nothing was
        accepted."""
        accepted = [t for t in self.trials if t.accepted]
        if not accepted:
            return None
        if all(t.latency_ms is not None for t in accepted):
            return min(accepted, key=lambda t: (t.latency_ms, -t.achieved, t.drop_points))
        return max(accepted, key=lambda t: (t.achieved, -t.drop_points))

    def spent(self) -> float:
        """Cost units (fine-tuning epochs) the trials spent together."""
        return math.fsum(t.cost for t in self.trials)

    def wall(self) -> float:
        """Seconds the trials took together."""
        return math.fsum(t.wall_s for t in self.trials)


@dataclass(frozen=True)
class _Decision:
    level: float | None
    reason: str | None


def bracket(state: SearchState) -> tuple[float, float | None]:
    """(lo, hi): the deepest accepted level (0.0 when none) and the shallowest rejected level
    above it (None when none); rejected levels at or below lo are ignored."""
    accepted = [t.level for t in state.trials if t.accepted]
    lo = max(accepted, default=0.0)
    above = [t.level for t in state.trials if not t.accepted and t.level > lo + _EPS]
    return lo, min(above, default=None)


def _limits(state: SearchState, settings: SearchSettings) -> str | None:
    """Why the search must stop whatever the bracket says (budget, wall time), or None."""
    spent = state.spent()
    if spent >= settings.budget - _EPS:
        return f"budget of {settings.budget:g} epochs spent ({spent:g} used)"
    if settings.wall_s is not None and state.wall() >= settings.wall_s - _EPS:
        return f"wall-time guard of {settings.wall_s:g} s reached ({state.wall():.0f} s used)"
    return None


def _propose(state: SearchState, settings: SearchSettings) -> _Decision:
    """The bracket's proposal, or why the bracket says the search is over."""
    if not state.trials:
        return _Decision(round_level(settings.start), None)
    lo, hi = bracket(state)
    if hi is None:
        if lo >= settings.max_level - _EPS:
            return _Decision(None, f"deepest level reached: {lo:g} accepted (max_level)")
        return _Decision(round_level(min(lo + settings.step, settings.max_level)), None)
    if hi - lo < settings.min_step - _EPS:
        if not any(t.accepted for t in state.trials):
            return _Decision(None, f"no level within the tolerance down to {hi:g}")
        return _Decision(
            None,
            f"converged: {lo:g} accepted, {hi:g} rejected "
            f"(bracket {hi - lo:.4g} narrower than min_step {settings.min_step:g})",
        )
    return _Decision(round_level((lo + hi) / 2), None)


def _decide(state: SearchState, settings: SearchSettings) -> _Decision:
    """The next level and the stop reason, from the trials alone (`state.stopped` is ignored, so
    a search resumed with a larger budget goes on)."""
    limit = _limits(state, settings)
    if limit is not None:
        return _Decision(None, limit)
    decision = _propose(state, settings)
    if decision.level is None:
        return decision
    if any(abs(t.level - decision.level) < _SAME for t in state.trials):
        return _Decision(None, f"level {decision.level:g} was already tried; stopping (no loop)")
    return decision


def next_level(state: SearchState, settings: SearchSettings) -> float | None:
    """Pure: the next level to try, or None when the search is over (and set nothing)."""
    return _decide(state, settings).level


def stop_reason(state: SearchState, settings: SearchSettings) -> str | None:
    """Why the search is over, as a sentence for the user; None while it goes on."""
    return _decide(state, settings).reason


def parent_of(state: SearchState, level: float) -> int | None:
    """Index of the deepest accepted trial below `level` (the model a progressive driver prunes
    further; the earliest such trial on ties), or None to start from the dense model."""
    level = round_level(level)
    below = [
        (t.level, -i, i)
        for i, t in enumerate(state.trials)
        if t.accepted and t.level < level - _EPS
    ]
    return max(below)[2] if below else None


Evaluate = Callable[[float, int | None], Trial]
"""(level, parent index or None) -> the trial the driver ran at that level."""

OnTrial = Callable[[SearchState, Trial], None]
"""Called after each trial is appended (the driver saves the state there)."""


def run_search(
    evaluate: Evaluate,
    settings: SearchSettings,
    state: SearchState | None = None,
    on_trial: OnTrial | None = None,
) -> SearchState:
    """Try levels until `next_level` says stop; set `state.stopped` to the reason and return it.

    Pass the saved state of a killed run to resume: levels already tried are not run again.
    `evaluate` must return a trial at the level it was asked for.
    """
    state = state if state is not None else SearchState()
    state.stopped = None
    while (level := next_level(state, settings)) is not None:
        trial = evaluate(level, parent_of(state, level))
        if abs(trial.level - level) >= _SAME:
            raise ValueError(f"evaluate was asked for level {level:g} but ran {trial.level:g}")
        state.trials.append(trial)
        if on_trial is not None:
            on_trial(state, trial)
    state.stopped = stop_reason(state, settings)
    return state
