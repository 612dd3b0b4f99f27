"""The range of every numeric option, in one table: what each count, ratio, budget and seed
may be, read by the CLI (the range shown in --help and checked while the command line is
parsed) and by `CompressConfig`'s checks (the same ranges for values from a TOML config or the
Python API), so that nothing out of range starts any work.

Every range is closed on both sides by a finite value: counts by what the machine can do
(threads and workers by a multiple of its cores) or by a ceiling far above any sensible use,
so that a mistyped `--bench-runs 99999999999999999999` is refused instead of running until
killed; seeds by what numpy and torch accept; ratios by their open or closed interval. NaN
and infinity are never in range.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from edgeprune.errors import EdgepruneError

CORES = os.cpu_count() or 1
MAX_THREADS = max(8 * CORES, 64)
"""Threads (and decoding processes) one command may ask for: 8 per core of this machine, at
least 64 (a device measured over ssh may have more cores than this machine)."""
MAX_SEED = 2**32 - 1
"""The largest seed numpy's and torch's generators accept."""


@dataclass(frozen=True)
class Bound:
    """The closed or open interval [low, high] one numeric option must lie in."""

    low: float
    high: float
    integer: bool = True
    low_open: bool = False
    high_open: bool = False
    zero: str | None = None
    """What 0 means when 0 is the low end (e.g. "no fine-tuning"), shown in the range."""
    why: str | None = None
    """Why the high end is where it is, when it depends on the machine."""

    def contains(self, value: float) -> bool:
        """Whether `value` is a finite number inside the interval."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = value < self.high if self.high_open else value <= self.high
        return above_low and below_high

    def expected(self) -> str:
        """The interval in words, e.g. 'at least 1 and at most 100000' or 'between 0 and 1'."""
        low, high = _number(self.low), _number(self.high)
        why = f" ({self.why})" if self.why else ""
        if self.low_open and self.high_open:
            return f"between {low} and {high}{why}"
        if self.zero and self.low == 0 and not self.low_open:
            start = f"0 ({self.zero}) or more"
        else:
            start = f"more than {low}" if self.low_open else f"at least {low}"
        end = f"less than {high}" if self.high_open else f"at most {high}"
        return f"{start}, {end}{why}"

    def shown(self) -> str:
        """The interval as --help shows it, e.g. '1<=x<=100000' or '0<x<1'."""
        low_op = "<" if self.low_open else "<="
        high_op = "<" if self.high_open else "<="
        return f"{_number(self.low)}{low_op}x{high_op}{_number(self.high)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def count(low: int, high: int, zero: str | None = None, why: str | None = None) -> Bound:
    """A whole-number range [low, high]."""
    return Bound(low, high, zero=zero, why=why)


def real(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
         zero: str | None = None) -> Bound:
    """A real-number range; `low_open`/`high_open` exclude the ends."""
    return Bound(low, high, integer=False, low_open=low_open, high_open=high_open, zero=zero)


FRACTION = real(0.0, 1.0, low_open=True, high_open=True)
EPOCHS = real(0, 1000, zero="none")
PER_CORE = f"the larger of 64 and 8 per core of this machine's {CORES}"
THREADS = count(1, MAX_THREADS, why=PER_CORE)

BOUNDS: dict[str, Bound] = {
    # data and reproducibility
    "seed": count(0, MAX_SEED),
    "workers": count(0, MAX_THREADS, zero="decode in the main process", why=PER_CORE),
    # scoring
    "score_samples": count(1, 1_000_000),
    "score_batch": count(1, 4096),
    "samples_per_class": count(1, 100_000),
    # pruning goals and schedules
    "flops_reduction": real(0.0, 0.95, low_open=True, high_open=True),
    "params_reduction": FRACTION,
    "keep_ratio": real(0.0, 1.0, low_open=True),
    "latency_ms": real(0.0, 3_600_000.0, low_open=True),
    "search_budget": real(0.0, 1000.0, low_open=True),
    "search_minutes": real(0.0, 10_080.0, low_open=True),
    "step": FRACTION,
    "step_epochs": EPOCHS,
    "round_to": count(1, 1024),
    "min_channels": count(1, 65_536),
    "am_steps": count(1, 100_000),
    # fine-tuning
    "bn_recalibration": count(0, 10_000_000, zero="off"),
    "epochs": real(0, 1000, zero="no fine-tuning"),
    "qat_epochs": real(0, 1000, zero="off"),
    "lr": real(0.0, 100.0, low_open=True),
    "batch_size": count(1, 65_536),
    # export and accuracy
    "calibration_samples": count(1, 1_000_000),
    "eval_samples": count(0, 10_000_000, zero="no accuracy check"),
    "eval_limit": count(1, 10_000_000),
    "opset": count(13, 99),
    "max_drop": real(0, 100),
    # measuring
    "threads": THREADS,
    "runs": count(1, 1_000_000),
    "bench_runs": count(1, 1_000_000),
    "warmup": count(0, 100_000),
    "rounds": count(1, 10_000),
    "bench_rounds": count(1, 10_000),
    "min_seconds": real(0, 3600),
    "bench_seconds": real(0, 3600),
    "timeout": real(1, 86_400),
}
"""Every numeric option by its parameter name (= its CompressConfig field, = its flag with
underscores), unless `COMMAND_BOUNDS` gives one command its own."""

COMMAND_BOUNDS: dict[tuple[str, str], Bound] = {
    ("train", "epochs"): real(0.0, 1000.0, low_open=True),
}
"""Options whose range differs in one command: (command, name) -> range."""


def bound_of(name: str, command: str | None = None) -> Bound:
    """The range of option `name` (as in `--name` with underscores) in `command`."""
    return COMMAND_BOUNDS.get((command or "", name)) or BOUNDS[name]


def flag(name: str) -> str:
    """The command-line flag of parameter `name`: '--bench-runs' for 'bench_runs'."""
    return "--" + name.replace("_", "-")


def check_bound(name: str, value: float | None, command: str | None = None) -> None:
    """EdgepruneError naming the flag when `value` (None: unset) is out of its range."""
    if value is None:
        return
    bound = bound_of(name, command)
    if not bound.contains(value):
        raise EdgepruneError(f"{flag(name)} {value} must be {bound.expected()}")


def check_bounds(values: object, command: str | None = None) -> None:
    """`check_bound` for every attribute of `values` (e.g. a CompressConfig) in the table."""
    for name in BOUNDS:
        if hasattr(values, name):
            check_bound(name, getattr(values, name), command)
